// Compiles every function of cpp/include/attnkit/math/ for float and double, as device code (the kernel)
// and as host code (the host function), under the backend's -Werror: the shared semantics stay valid
// CUDA, with no private nvcc flag (the build does not pass --expt-relaxed-constexpr). Nothing calls
// these at run time; the GPU tests check the values through the kernels that use them.
#include "attnkit/math/dla.h"
#include "attnkit/math/dtypes.h"
#include "attnkit/math/feature_maps.h"
#include "attnkit/math/masks.h"
#include "attnkit/math/random.h"
#include "attnkit/math/softmax.h"

namespace attnkit {
namespace detail {
namespace cuda {
namespace {

template <class T>
struct ExpOf {
  __host__ __device__ T operator()(T x) const { return exp(x); }
};
template <class T>
struct Exp2Of {
  __host__ __device__ T operator()(T x) const { return exp2(x); }
};

/// Every math function for value type T; returns a sum so nothing is optimised away.
template <class T>
__host__ __device__ T exercise(T x, int64_t i) {
  namespace m = ::attnkit::math;
  T acc = m::neg_inf<T>() < x ? T(0) : T(1);
  // softmax.h
  acc += m::exp_via_exp2<T, T>(x, Exp2Of<T>());
  acc += m::softmax_offset<T, T>(x) + m::softmax_new_max(x, acc) + m::softmax_rescale_arg<T, T>(x, acc);
  acc += m::softmax_lse(x, T(2)) + m::softmax_out_scale(x, T(2));
  T mx = m::neg_inf<T>(), sum = T(0), w_part = T(0);
  acc += m::merge_step(mx, sum, x, &w_part) + w_part + m::merge_scale(mx, sum) + m::merge_lse(mx, sum);
  // masks.h
  const m::KeyRange r = m::key_range(i, 7, 9, true, 2, 1, 8);
  int64_t lo[2] = {r.lo, 0}, hi[2] = {r.hi, 3}, kr[8] = {}, out[8] = {};
  int32_t lo32[1] = {1}, hi32[1] = {4};
  const int n = m::union_of_ranges(lo, hi, 2, kr) + m::union_of_ranges(lo32, hi32, 1, kr + 4);
  const int32_t cols[3] = {0, 1, 3};
  acc += static_cast<T>(n + m::intersect_block_runs(kr, 1, cols, 0, 3, 2, out));
  acc += static_cast<T>(m::clip_ranges(out, 1, 1, 2));
  acc += static_cast<T>(m::alibi_distance<int64_t>(i, 3) + m::alibi_distance<int32_t>(2, 5));
  // dtypes.h
  const float f = static_cast<float>(x);
  acc += static_cast<T>(m::bits_float(m::float_bits(f)) + m::bf16_to_float(m::float_to_bf16(f)) +
                        m::f16_to_float(m::float_to_f16(f)));
  // random.h
  m::Philox4 c = m::philox_block(1, 2, static_cast<uint64_t>(i));
  uint32_t h32 = 0, l32 = 0;
  m::philox_mulhilo(c.v[0], c.v[1], &h32, &l32);
  c = m::philox4x32_10(c, h32, l32);
  double z0 = 0, z1 = 0;
  m::normal_pair(3, 4, 5, &z0, &z1);
  acc += static_cast<T>(c.v[2] % 7 + m::random_u32(1, 2, 3) % 5 + m::uniform01(1, 2, 3) +
                        m::uniform_below(1, 2, 3, 10) + m::normal(1, 2, 3) + z0 + z1);
  // feature_maps.h
  acc += m::phi_elu1(x, ExpOf<T>()) + m::phi_relu(x) + m::performer_relu<T, T>(x);
  acc += m::favor_key_exponent(x, T(0.5)) + m::favor_feature_arg(x, T(1), T(0.25)) + m::favor_running_max(x, acc);
  acc += m::favor_rescale_arg<T, T>(x, acc) + m::linear_output(x, T(2), T(1e-6));
  // dla.h
  const T info[3] = {x, T(1), T(2)};
  const int64_t count[3] = {1, 2, 3};
  acc += m::dla_rms_scale(x * x, T(4)) + m::dla_joined_sq_norm(x, T(1), T(0.5)) +
         m::dla_info_score(true, x * x, T(1), T(0.5), T(4)) + m::dla_info_score(false, x * x, T(1), T(0.5), T(4));
  acc += static_cast<T>(m::dla_opens_state(x, 0.6, 4, 2) + m::dla_merge_pair(info, count, 3) + m::dla_lam_index(1, 3));
  return acc;
}

template <class T>
__global__ void math_check_kernel(T* out) {
  out[threadIdx.x] = exercise(static_cast<T>(threadIdx.x) * T(0.25), static_cast<int64_t>(threadIdx.x));
}

}  // namespace

/// Host instantiations, and the kernels' addresses so the device instantiations are emitted.
double math_check_host() {
  (void)&math_check_kernel<float>;
  (void)&math_check_kernel<double>;
  return static_cast<double>(exercise(0.5f, 1)) + exercise(0.5, 1);
}

}  // namespace cuda
}  // namespace detail
}  // namespace attnkit
