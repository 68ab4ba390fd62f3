#pragma once
// LSH (Reformer) pieces shared by lsh_buckets (lsh_hash.cu) and lsh_attention (lsh.cu).

#include <cstdint>

#include "cpp/src/backend.h"
#include "cuda/common.cuh"

namespace attnkit {
namespace detail {
namespace cuda {

/// Doubles of the rounds' rotations, [R][D][num_buckets / 2].
inline int64_t lsh_rotation_count(int64_t R, int64_t D, int64_t num_buckets) { return R * D * (num_buckets / 2); }

/// Writes the rotations R_r[d][c] = math::normal(seed, kStreamLsh + r, d * half + c) to `dev`
/// (lsh_rotation_count doubles of device memory), computed on the host exactly as the CPU backend does
/// (the host's libm, so the values are bit-identical to the CPU's) and copied on `stream`. The host buffer
/// is freed by a host function enqueued after the copy, so it outlives the copy whatever the memory kind.
void lsh_upload_rotations(double* dev, uint64_t seed, int64_t R, int64_t D, int64_t num_buckets,
                          cudaStream_t stream);

/// Buckets of every row of x [B, H, S, D] for every round: code of (b, h, r, s) is written to
/// out[b * os[0] + h * os[1] + r * os[2] + s * os[3]]. `rot` is the device copy of the rotations. The
/// bucket is argmax over [x R_r, -x R_r] in float64, ties to the lowest index, a row with a NaN
/// projection goes to bucket 0 (cpu/lsh_kernel.h, lsh_argmax). No launch when there is nothing to hash.
void lsh_hash(const ViewN<4>& x, const double* rot, int64_t num_buckets, int64_t R, int32_t* out,
              const int64_t os[4], cudaStream_t stream);

}  // namespace cuda
}  // namespace detail
}  // namespace attnkit
