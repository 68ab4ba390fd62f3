// Linformer on the GPU: projection of K and V along the sequence, then the exact kernel (as
// cpu/linformer.cpp): K'[b, h] = E_h k[b, h] and V'[b, h] = F_h v[b, h] over the allowed keys (keys
// j >= key_lengths[b] are zero rows, so each sum stops at the last allowed key), accumulated in acc_t and
// rounded once to the problem dtype into C-contiguous [B, Hkv, P, D] / [B, Hkv, P, Dv] workspace buffers,
// which become the k and v of the exact-attention problem.
//
// Projection: one thread per projected element (b, h, which, p, d), d fastest (coalesced reads of the key
// / value rows, E's entry broadcast across the warp); each thread sums over the sequence in order, alone.
#include "cpp/src/backend.h"
#include "cuda/common.cuh"
#include "cuda/workspace.cuh"

namespace attnkit {
namespace detail {
namespace cuda {
namespace {

constexpr int kThreads = 256;

struct ProjArgs {
  int64_t B, Hkv, P, Sk, D, Dv;
  const void* k;
  int64_t ks[4];
  const void* v;
  int64_t vs[4];
  const void* E;
  DType E_dtype;
  int64_t Es[3];
  const void* F;
  DType F_dtype;
  int64_t Fs[3];
  const void* len;  ///< key_lengths or null
  DType len_dtype;
  int64_t len_stride;
  void* kproj;
  void* vproj;
};

template <class T>
__global__ void linformer_project_kernel(const ProjArgs a) {
  using A = acc_t<T>;
  const int64_t nk = a.B * a.Hkv * a.P * a.D, nv = a.B * a.Hkv * a.P * a.Dv;
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; e < nk + nv; e += step) {
    const bool is_v = e >= nk;
    const int64_t i = is_v ? e - nk : e;
    const int64_t N = is_v ? a.Dv : a.D;
    const int64_t d = i % N, row = i / N;  // row = (b * Hkv + h) * P + p
    const int64_t p = row % a.P, bh = row / a.P, h = bh % a.Hkv, b = bh / a.Hkv;
    const T* x = static_cast<const T*>(is_v ? a.v : a.k);
    const int64_t* xs = is_v ? a.vs : a.ks;
    const void* E = is_v ? a.F : a.E;
    const DType edt = is_v ? a.F_dtype : a.E_dtype;
    const int64_t* es = is_v ? a.Fs : a.Es;
    const int64_t L = a.len ? load_int(a.len, a.len_dtype, b * a.len_stride) : a.Sk;
    const int64_t xo = b * xs[0] + h * xs[1] + d * xs[3];
    const int64_t eo = h * es[0] + p * es[1];
    A acc = A(0);
    for (int64_t s = 0; s < L; ++s) acc += load_float<A>(E, edt, eo + s * es[2]) * to_acc<A>(x[xo + s * xs[2]]);
    static_cast<T*>(is_v ? a.vproj : a.kproj)[i] = from_acc<T, A>(acc);
  }
}


}  // namespace

void linformer_attention(const LinformerProblem& p) {
  require_device(p.attn.device_index);
  AttnProblem a = p.attn;
  if (a.empty_output()) return;
  DeviceGuard g(a.device_index);
  const cudaStream_t stream = as_stream(a.stream);
  const std::size_t es = dtype_size(a.dtype);
  const int64_t kn = a.B * a.Hkv * p.P * a.D, vn = a.B * a.Hkv * p.P * a.Dv;
  // k' first, then v' at a 256-byte aligned offset.
  const std::size_t kbytes = (static_cast<std::size_t>(kn) * es + 255) / 256 * 256;
  Workspace ws(kbytes + static_cast<std::size_t>(vn) * es, stream);
  void* kproj = ws.as<char>();
  void* vproj = ws.as<char>() + kbytes;

  ProjArgs pa;
  pa.B = a.B;
  pa.Hkv = a.Hkv;
  pa.P = p.P;
  pa.Sk = p.Sk;
  pa.D = a.D;
  pa.Dv = a.Dv;
  pa.k = p.k.data;
  pa.v = p.v.data;
  for (int i = 0; i < 4; ++i) {
    pa.ks[i] = p.k.stride[i];
    pa.vs[i] = p.v.stride[i];
  }
  pa.E = p.E.data;
  pa.E_dtype = p.E.dtype;
  pa.F = p.F.data;
  pa.F_dtype = p.F.dtype;
  for (int i = 0; i < 3; ++i) {
    pa.Es[i] = p.E.stride[i];
    pa.Fs[i] = p.F.stride[i];
  }
  pa.len = p.key_lengths.present ? p.key_lengths.data : nullptr;
  pa.len_dtype = p.key_lengths.dtype;
  pa.len_stride = p.key_lengths.stride[0];
  pa.kproj = kproj;
  pa.vproj = vproj;
  if (kn + vn > 0) {
    dispatch_float(a.dtype, [&](auto tag) {
      using T = decltype(tag);
      linformer_project_kernel<T><<<blocks_for(kn + vn, kThreads), kThreads, 0, stream>>>(pa);
      ATTNKIT_CUDA_CHECK_LAUNCH();
    });
  }
  a.k = contiguous_view(kproj, a.dtype, a.B, a.Hkv, p.P, a.D);
  a.v = contiguous_view(vproj, a.dtype, a.B, a.Hkv, p.P, a.Dv);
  // Same stream: the exact kernel runs after the projection; the workspace is freed (stream-ordered) after
  // the attention kernel was enqueued, so it outlives both.
  attention(a);
}

}  // namespace cuda
}  // namespace detail
}  // namespace attnkit
