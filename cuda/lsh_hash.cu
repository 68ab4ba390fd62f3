// LSH hashing on the GPU: the rounds' rotations (made on the host, as the CPU makes them) and the bucket
// kernel, shared by lsh_buckets (this file's entry point) and lsh_attention (lsh.cu).
//
// The CPU decides each bucket "as if in float64" (cpu/lsh_kernel.h: a float32 fast path whose winner is
// rechecked in float64 whenever the float32 margin is not rigorous). The GPU has float64 throughput to
// spare for this O(S * D * buckets) step, so it simply computes every projection in float64, summed over
// d in increasing order like the CPU's recheck, and applies the same argmax rule.
#include <cmath>
#include <vector>

#include "attnkit/math/random.h"
#include "cpp/src/backend.h"
#include "cuda/common.cuh"
#include "cuda/lsh.cuh"
#include "cuda/workspace.cuh"

namespace attnkit {
namespace detail {
namespace cuda {
namespace {

void CUDART_CB free_host_rotations(void* p) { delete static_cast<std::vector<double>*>(p); }

struct HashArgs {
  int64_t H, S, D, half, R, nrows;  // nrows = B * H * S
  int64_t sx[4];                    // x strides (elements)
  int64_t os[4];                    // output strides for (b, h, r, s)
};

/// Projections computed per pass over the row: a register tile of kCols accumulators, so x is read
/// half / kCols times instead of half times. Each projection is still one sum over d in order.
constexpr int kCols = 8;
constexpr int kHashThreads = 128;

/// One thread per (row, round), rows fastest: the threads of a warp share the round and read the same
/// rotation entries (broadcast loads); each reads its own row of x (L1-resident after the first pass).
template <class St>
__global__ void __launch_bounds__(kHashThreads) lsh_hash_kernel(const St* __restrict__ x,
                                                                const double* __restrict__ rot,
                                                                int32_t* __restrict__ out, HashArgs a) {
  const int64_t total = a.nrows * a.R;
  for (int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; t < total;
       t += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t row = t % a.nrows, r = t / a.nrows;
    const int64_t s = row % a.S, bh = row / a.S, h = bh % a.H, b = bh / a.H;
    const St* xr = x + b * a.sx[0] + h * a.sx[1] + s * a.sx[2];
    const double* rr = rot + r * a.D * a.half;
    // argmax over [p, -p] (cpu/lsh_kernel.h lsh_argmax): the first maximum of p and the first minimum of
    // p; the negative side wins only when -min(p) > max(p) strictly (it comes later in the order).
    bool has_nan = false;
    double pmax = 0, pmin = 0;
    int64_t imax = 0, imin = 0;
    for (int64_t c0 = 0; c0 < a.half; c0 += kCols) {
      double acc[kCols];
#pragma unroll
      for (int j = 0; j < kCols; ++j) acc[j] = 0.0;
      for (int64_t d = 0; d < a.D; ++d) {
        const double xv = to_acc<double>(xr[d * a.sx[3]]);
        const double* rd = rr + d * a.half + c0;
#pragma unroll
        for (int j = 0; j < kCols; ++j)
          if (c0 + j < a.half) acc[j] += xv * __ldg(rd + j);
      }
#pragma unroll
      for (int j = 0; j < kCols; ++j) {
        const int64_t c = c0 + j;
        if (c >= a.half) break;
        const double v = acc[j];
        if (isnan(v)) has_nan = true;
        if (c == 0) {
          pmax = pmin = v;
        } else {
          if (v > pmax) pmax = v, imax = c;
          if (v < pmin) pmin = v, imin = c;
        }
      }
    }
    int64_t code = imax;
    if (has_nan) code = 0;  // a NaN projection (a NaN in x, or inf - inf) goes to bucket 0
    else if (-pmin > pmax) code = a.half + imin;
    out[b * a.os[0] + h * a.os[1] + r * a.os[2] + s * a.os[3]] = static_cast<int32_t>(code);
  }
}

}  // namespace

void lsh_upload_rotations(double* dev, uint64_t seed, int64_t R, int64_t D, int64_t num_buckets,
                          cudaStream_t stream) {
  const int64_t per_round = D * (num_buckets / 2);
  const int64_t n = R * per_round;
  if (n == 0) return;
  auto* host = new std::vector<double>(static_cast<size_t>(n));
  // normal(seed, stream, i) is element i & 1 of normal_pair(seed, stream, i >> 1): take both at once.
  for (int64_t r = 0; r < R; ++r) {
    double* dst = host->data() + r * per_round;
    const uint64_t st = math::kStreamLsh + static_cast<uint64_t>(r);
    for (int64_t i = 0; i < per_round; i += 2) {
      double z0, z1;
      math::normal_pair(seed, st, static_cast<uint64_t>(i) >> 1, &z0, &z1);
      dst[i] = z0;
      if (i + 1 < per_round) dst[i + 1] = z1;
    }
  }
  const cudaError_t e = cudaMemcpyAsync(dev, host->data(), sizeof(double) * static_cast<size_t>(n),
                                        cudaMemcpyHostToDevice, stream);
  if (e != cudaSuccess) {
    delete host;
    throw_cuda(e, "cudaMemcpyAsync (LSH rotations)", __FILE__, __LINE__);
  }
  const cudaError_t e2 = cudaLaunchHostFunc(stream, free_host_rotations, host);
  if (e2 != cudaSuccess) {
    // The copy may still read the buffer: wait for it before freeing (error path only).
    (void)cudaStreamSynchronize(stream);
    delete host;
    throw_cuda(e2, "cudaLaunchHostFunc (LSH rotations)", __FILE__, __LINE__);
  }
}

void lsh_hash(const ViewN<4>& x, const double* rot, int64_t num_buckets, int64_t R, int32_t* out,
              const int64_t os[4], cudaStream_t stream) {
  HashArgs a;
  a.H = x.shape[1];
  a.S = x.shape[2];
  a.D = x.shape[3];
  a.half = num_buckets / 2;
  a.R = R;
  a.nrows = x.shape[0] * x.shape[1] * x.shape[2];
  for (int i = 0; i < 4; ++i) a.sx[i] = x.stride[i], a.os[i] = os[i];
  if (a.nrows == 0 || R == 0) return;
  dispatch_float(x.dtype, [&](auto tag) {
    using St = decltype(tag);
    lsh_hash_kernel<St><<<blocks_for(a.nrows * R, kHashThreads), kHashThreads, 0, stream>>>(
        static_cast<const St*>(x.data), rot, out, a);
    ATTNKIT_CUDA_CHECK_LAUNCH();
  });
}

void lsh_buckets(const LshBucketsProblem& p) {
  require_device(p.device_index);
  DeviceGuard guard(p.device_index);
  const cudaStream_t stream = as_stream(p.stream);
  if (p.B * p.H * p.S == 0) return;  // nothing to write (R >= 1 and S, B, H cover every output element)
  const int64_t nrot = lsh_rotation_count(p.num_hashes, p.D, p.num_buckets);
  Workspace ws(sizeof(double) * static_cast<size_t>(nrot), stream);
  lsh_upload_rotations(ws.as<double>(), p.seed, p.num_hashes, p.D, p.num_buckets, stream);
  lsh_hash(p.x, ws.as<double>(), p.num_buckets, p.num_hashes, p.out, p.out_stride, stream);
}

}  // namespace cuda
}  // namespace detail
}  // namespace attnkit
