// Rotary position embedding on the GPU. One thread per (b, h, s, item), item < r/2 + (D - r): items below
// r/2 rotate one pair of dims (math/rope.h rope_pair / rope_rotate), the others copy one pass-through dim
// d = r + (item - r/2). A thread reads and writes only its own elements, so x and out may be the same
// memory (in place). Angles are computed in double as on the CPU: theta = pos * base^(-2i/r), then cos and
// sin rounded once to the compute type. The inverse frequencies come from the host's pow (the CPU's very
// values, so theta is the same bits even at long positions) in the kernel's parameters, for up to
// kHostFreqs pairs; beyond that the device's pow (within 2 ulp) computes them.
#include "attnkit/math/rope.h"
#include "cpp/src/backend.h"
#include "cuda/common.cuh"

namespace attnkit {
namespace detail {
namespace cuda {
namespace {

constexpr int kThreads = 256;
/// 448 doubles keep the parameters under the classic 4 KiB: rotary dims up to 896 get the host's values.
constexpr int kHostFreqs = 448;

struct RopeArgs {
  int64_t B, H, S, D, r, half, items;
  const void* x;
  int64_t xs[4];
  void* out;
  int64_t os[4];
  const void* pos;  ///< null: arange(S)
  DType pos_dtype;
  int64_t ps[2];
  double base;
  bool interleaved;
  bool host_freqs;  ///< inv_freq[] holds the r/2 inverse frequencies
  double inv_freq[kHostFreqs];
};

template <class T>
__global__ void rope_kernel(const RopeArgs a) {
  using A = acc_t<T>;
  const int64_t n = a.B * a.H * a.S * a.items;
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  const T* x = static_cast<const T*>(a.x);
  T* out = static_cast<T*>(a.out);
  for (int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; e < n; e += step) {
    int64_t rest = e;
    const int64_t item = rest % a.items;
    rest /= a.items;
    const int64_t s = rest % a.S;
    rest /= a.S;
    const int64_t h = rest % a.H;
    const int64_t b = rest / a.H;
    const int64_t xo = b * a.xs[0] + h * a.xs[1] + s * a.xs[2];
    const int64_t oo = b * a.os[0] + h * a.os[1] + s * a.os[2];
    if (item >= a.half) {  // pass-through dim
      const int64_t d = a.r + (item - a.half);
      out[oo + d * a.os[3]] = x[xo + d * a.xs[3]];
      continue;
    }
    const int64_t pos = a.pos ? load_int(a.pos, a.pos_dtype, b * a.ps[0] + s * a.ps[1]) : s;
    const double f = a.host_freqs ? a.inv_freq[item] : math::rope_inv_freq(item, a.r, a.base);
    const double theta = static_cast<double>(pos) * f;
    const A c = static_cast<A>(cos(theta)), sn = static_cast<A>(sin(theta));
    int64_t da, db;
    math::rope_pair(item, a.r, a.interleaved, da, db);
    A ya, yb;
    math::rope_rotate(to_acc<A>(x[xo + da * a.xs[3]]), to_acc<A>(x[xo + db * a.xs[3]]), c, sn, ya, yb);
    out[oo + da * a.os[3]] = from_acc<T, A>(ya);
    out[oo + db * a.os[3]] = from_acc<T, A>(yb);
  }
}

}  // namespace

void rope(const RopeProblem& p) {
  require_device(p.device_index);
  if (p.B * p.H * p.S * p.D == 0) return;
  DeviceGuard g(p.device_index);
  static_assert(sizeof(RopeArgs) <= 4096, "kernel parameters over 4 KiB need CUDA 12.1+ drivers");
  RopeArgs a;
  a.B = p.B;
  a.H = p.H;
  a.S = p.S;
  a.D = p.D;
  a.r = p.rotary_dim;
  a.half = p.rotary_dim / 2;
  a.items = a.half + (p.D - p.rotary_dim);
  a.x = p.x.data;
  a.out = p.out;
  for (int i = 0; i < 4; ++i) {
    a.xs[i] = p.x.stride[i];
    a.os[i] = p.out_stride[i];
  }
  a.pos = p.positions.present ? p.positions.data : nullptr;
  a.pos_dtype = p.positions.dtype;
  a.ps[0] = p.positions.stride[0];
  a.ps[1] = p.positions.stride[1];
  a.base = p.base;
  a.interleaved = p.interleaved;
  a.host_freqs = a.half <= kHostFreqs;
  for (int64_t i = 0; i < kHostFreqs; ++i)
    a.inv_freq[i] = a.host_freqs && i < a.half ? math::rope_inv_freq(i, a.r, a.base) : 0.0;
  const int64_t n = p.B * p.H * p.S * a.items;
  const cudaStream_t stream = as_stream(p.stream);
  dispatch_float(p.dtype, [&](auto tag) {
    using T = decltype(tag);
    rope_kernel<T><<<blocks_for(n, kThreads), kThreads, 0, stream>>>(a);
    ATTNKIT_CUDA_CHECK_LAUNCH();
  });
}

}  // namespace cuda
}  // namespace detail
}  // namespace attnkit
