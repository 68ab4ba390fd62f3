// Dynamic linear attention on the GPU, the decode step (T = 1; taken exactly where the CPU takes
// cpu/dla_decode.h). One block per (batch, head) item (grid-stride over the items). The step is decided from
// the input open state alone: A = a^2 ||S_open||^2, p = a k^T S_open v and B = |k|^2 |v|^2 are block sums in
// double, thread 0 applies math/dla.h (score, boundary, merge pair) and every thread then derives the
// output entry list from (opens, merged) in closed form (decode_src). One pass over the output states
// reads each input state once, writes the output cache in its final chronological order and accumulates
// the readout: lanes along Dv, the 8 warps along Dk, the warps' partial readouts summed in a fixed order.

#include "cuda/dla_common.cuh"
#include "cuda/workspace.cuh"

namespace attnkit {
namespace detail {
namespace cuda {
namespace dla {
namespace {

template <class St>
__global__ void __launch_bounds__(kThreads) dla_decode_kernel(const DLAProblem p, char* scratch) {
  using R = acc_t<St>;
  __shared__ double red[kThreads];
  __shared__ R ypart[kWarps][32];
  __shared__ DecodeStep<R> sh_step;
  const int lane = static_cast<int>(threadIdx.x) & 31, warp = static_cast<int>(threadIdx.x) >> 5;
  const int64_t C = p.C, Dk = p.Dk, Dv = p.Dv, items = p.B * p.H;
  // This block's copy of the input counts and info (the merge pair's contiguous arrays).
  int64_t* cnt_buf = reinterpret_cast<int64_t*>(scratch) + static_cast<int64_t>(blockIdx.x) * C;
  R* info_buf = reinterpret_cast<R*>(scratch + static_cast<std::size_t>(gridDim.x) * C * sizeof(int64_t)) +
                static_cast<int64_t>(blockIdx.x) * C;
  const DLACacheViews& ci = p.cache_in;
  const DLACacheOut& co = p.cache_out;
  const int64_t is2 = ci.states.stride[2], is3 = ci.states.stride[3], is4 = ci.states.stride[4];
  const int64_t os2 = co.states.stride[2], os3 = co.states.stride[3], os4 = co.states.stride[4];
  const int64_t qs = p.q.stride[3], ks = p.k.stride[3], vs = p.v.stride[3], ls = p.lam.stride[3];

  for (int64_t it = blockIdx.x; it < items; it += gridDim.x) {
    const int64_t b = it / p.H, h = it % p.H;
    const void* qd = static_cast<const St*>(p.q.data) + at3(p.q, b, h, 0);
    const void* kd = static_cast<const St*>(p.k.data) + at3(p.k, b, h, 0);
    const void* vd = static_cast<const St*>(p.v.data) + at3(p.v, b, h, 0);
    const void* lamd = static_cast<const St*>(p.lam.data) + at3(p.lam, b, h, 0);
    const R* in = ci.present ? static_cast<const R*>(ci.states.data) + b * ci.states.stride[0] + h * ci.states.stride[1]
                             : nullptr;

    // Steps 1-4 (decisions and aux outputs), then the output entry list.
    const DecodeStep<R> step = decode_decide<St, 1>(p, b, h, red, &sh_step, cnt_buf, info_buf);
    const double a = step.a;
    const bool opens = step.opens != 0;
    const int64_t m = step.m, merged = step.merged, m_out = step.m_out;
    decode_write_entries(p, b, h, step);

    // Steps 1, 4 and 5 on the states, fused as on the CPU: out = a (s0 + s1) + k_d v (the token's entry
    // only), y += (lam * q_d) out. Unused entries are zeroed.
    const R at = static_cast<R>(a);
    R* outs = static_cast<R*>(co.states.data) + b * co.states.stride[0] + h * co.states.stride[1];
    St* y = static_cast<St*>(p.out.data) + at3(p.out, b, h, 0);
    for (int64_t e0 = 0; e0 < Dv; e0 += 32) {
      const int64_t e = e0 + lane;
      const bool ve = e < Dv;
      const R v_e = ve ? ld<St>(vd, e * vs) : R(0);
      R yp = R(0);
      for (int64_t i = 0; i < C; ++i) {
        R* oi = outs + i * os2;
        if (i >= m_out) {
          if (ve)
            for (int64_t d = warp; d < Dk; d += kWarps) oi[d * os3 + e * os4] = R(0);
          continue;
        }
        const DecodeSrc s = decode_src(i, m, opens, merged);
        const R* s0 = s.s0 >= 0 ? in + s.s0 * is2 : nullptr;
        const R* s1 = s.s1 >= 0 ? in + s.s1 * is2 : nullptr;
        const R wq = ld<St>(lamd, math::dla_lam_index(i, m_out) * ls);
        if (!ve) continue;
        for (int64_t d = warp; d < Dk; d += kWarps) {
          R x = R(0);
          if (s0) x = s1 ? at * (s0[d * is3 + e * is4] + s1[d * is3 + e * is4]) : at * s0[d * is3 + e * is4];
          const R kv = s.tok ? ld<St>(kd, d * ks) : R(0);
          x += kv * v_e;
          oi[d * os3 + e * os4] = x;
          yp += (wq * ld<St>(qd, d * qs)) * x;
        }
      }
      ypart[warp][lane] = yp;
      __syncthreads();
      if (warp == 0 && ve) {
        R s = R(0);
        for (int w = 0; w < kWarps; ++w) s += ypart[w][lane];
        y[e * p.out.stride[3]] = from_acc<St>(s);
      }
      __syncthreads();
    }
  }
}

}  // namespace

template <class St>
void launch_decode(const DLAProblem& p, cudaStream_t stream) {
  using R = acc_t<St>;
  const int64_t items = p.B * p.H;
  if (items == 0) return;
  const std::size_t per_block = static_cast<std::size_t>(p.C) * (sizeof(int64_t) + sizeof(R));
  const unsigned grid = grid_for(items, per_block, p.device_index);
  Workspace ws(grid * per_block, stream);
  dla_decode_kernel<St><<<grid, kThreads, 0, stream>>>(p, ws.as<char>());
  ATTNKIT_CUDA_CHECK_LAUNCH();
}

template void launch_decode<float>(const DLAProblem&, cudaStream_t);
template void launch_decode<double>(const DLAProblem&, cudaStream_t);
template void launch_decode<half_t>(const DLAProblem&, cudaStream_t);
template void launch_decode<bf16_t>(const DLAProblem&, cudaStream_t);

}  // namespace dla
}  // namespace cuda
}  // namespace detail
}  // namespace attnkit
