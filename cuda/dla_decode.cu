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

/// Where output entry i of a decode step comes from: input entries s0 (and s1, merged into it; -1: none)
/// and whether it receives the token (the newest entry always does, joined or opened).
struct DecodeSrc {
  int64_t s0, s1;
  bool tok;
};

/// The CPU's step 4 on the entry list (cpu/dla_cache.h merge_entries / append_entry), in closed form: m
/// input entries; `merged` >= 0 only when the token opens a state into a full cache.
__device__ __forceinline__ DecodeSrc decode_src(int64_t i, int64_t m, bool opens, int64_t merged) {
  DecodeSrc r{-1, -1, false};
  if (!opens) {
    r.s0 = i;
    r.tok = i == m - 1;
  } else if (merged < 0) {
    if (i < m)
      r.s0 = i;
    else
      r.tok = true;  // i == m: the appended entry
  } else if (i < merged) {
    r.s0 = i;
  } else if (i == merged) {
    r.s0 = i;
    r.s1 = i + 1;
  } else if (i < m - 1) {
    r.s0 = i + 1;  // the entries after the merged pair move down by one
  } else {
    r.tok = true;  // i == m - 1 == C - 1: the appended entry
  }
  return r;
}

template <class St>
__global__ void __launch_bounds__(kThreads) dla_decode_kernel(const DLAProblem p, char* scratch) {
  using R = acc_t<St>;
  __shared__ double red[kThreads];
  __shared__ R ypart[kWarps][32];
  __shared__ R sh_I;
  __shared__ int sh_opens;
  __shared__ int64_t sh_merged;
  const int tid = static_cast<int>(threadIdx.x), lane = tid & 31, warp = tid >> 5;
  const int64_t C = p.C, Dk = p.Dk, Dv = p.Dv, items = p.B * p.H;
  const double n = static_cast<double>(Dk) * static_cast<double>(Dv);
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
    const int64_t m =
        ci.present ? static_cast<const int64_t*>(ci.size.data)[b * ci.size.stride[0] + h * ci.size.stride[1]] : 0;
    const double a =
        p.log_decay.present ? exp(load_float<double>(p.log_decay.data, p.log_decay.dtype, at3(p.log_decay, b, h, 0)))
                            : 1.0;
    const void* qd = static_cast<const St*>(p.q.data) + at3(p.q, b, h, 0);
    const void* kd = static_cast<const St*>(p.k.data) + at3(p.k, b, h, 0);
    const void* vd = static_cast<const St*>(p.v.data) + at3(p.v, b, h, 0);
    const void* lamd = static_cast<const St*>(p.lam.data) + at3(p.lam, b, h, 0);
    const R* in = ci.present ? static_cast<const R*>(ci.states.data) + b * ci.states.stride[0] + h * ci.states.stride[1]
                             : nullptr;

    // Steps 1-3 on the input open state (B = |k|^2 |v|^2 as the CPU's product of two dots).
    double kk = 0, vv = 0;
    for (int64_t d = tid; d < Dk; d += kThreads) {
      const double x = static_cast<double>(ld<St>(kd, d * ks));
      kk += x * x;
    }
    for (int64_t e = tid; e < Dv; e += kThreads) {
      const double x = static_cast<double>(ld<St>(vd, e * vs));
      vv += x * x;
    }
    kk = block_sum(kk, red);
    vv = block_sum(vv, red);
    double score = 0.0;
    if (m > 0) {  // uniform over the block
      const R* open = in + (m - 1) * is2;
      double sq = 0, pk = 0;
      for (int64_t idx = tid; idx < Dk * Dv; idx += kThreads) {
        const int64_t d = idx / Dv, e = idx % Dv;
        const double s = static_cast<double>(open[d * is3 + e * is4]);
        sq += s * s;
        pk += static_cast<double>(ld<St>(kd, d * ks)) * s * static_cast<double>(ld<St>(vd, e * vs));
      }
      sq = block_sum(sq, red);
      pk = block_sum(pk, red);
      score = math::dla_info_score(p.state_drift, a * a * sq, kk * vv, a * pk, n);
    }

    // Step 4 on the entry list (thread 0), and the per-token outputs.
    if (tid == 0) {
      const R I = static_cast<R>(score);
      const bool opens = math::dla_opens_state(I, p.tau, C, m);
      int64_t merged = -1;
      if (opens && m == C) {
        for (int64_t i = 0; i < m; ++i) {
          cnt_buf[i] = static_cast<const int64_t*>(ci.counts.data)[at3(ci.counts, b, h, i)];
          info_buf[i] = static_cast<const R*>(ci.info.data)[at3(ci.info, b, h, i)];
        }
        merged = math::dla_merge_pair(info_buf, cnt_buf, m);
      }
      sh_I = I;
      sh_opens = opens ? 1 : 0;
      sh_merged = merged;
      if (p.scores.present) static_cast<R*>(p.scores.data)[at3(p.scores, b, h, 0)] = I;
      if (p.boundaries.present) static_cast<uint8_t*>(p.boundaries.data)[at3(p.boundaries, b, h, 0)] = opens ? 1 : 0;
      if (p.merged.present) static_cast<int64_t*>(p.merged.data)[at3(p.merged, b, h, 0)] = merged;
    }
    __syncthreads();
    const R I = sh_I;
    const bool opens = sh_opens != 0;
    const int64_t merged = sh_merged;
    const int64_t m_out = opens && merged < 0 ? m + 1 : m;

    // The output entry list: counts, info, starts (0 for unused entries) and size.
    for (int64_t i = tid; i < C; i += kThreads) {
      int64_t cnt = 0, st = 0;
      R inf = R(0);
      if (i < m_out) {
        const DecodeSrc s = decode_src(i, m, opens, merged);
        if (s.s0 < 0) {
          cnt = 1;
          inf = I;
          st = p.position;
        } else {
          cnt = static_cast<const int64_t*>(ci.counts.data)[at3(ci.counts, b, h, s.s0)];
          inf = static_cast<const R*>(ci.info.data)[at3(ci.info, b, h, s.s0)];
          st = static_cast<const int64_t*>(ci.starts.data)[at3(ci.starts, b, h, s.s0)];
          if (s.s1 >= 0) {
            cnt += static_cast<const int64_t*>(ci.counts.data)[at3(ci.counts, b, h, s.s1)];
            inf += static_cast<const R*>(ci.info.data)[at3(ci.info, b, h, s.s1)];
          }
          if (s.tok) {
            cnt += 1;
            inf += I;
          }
        }
      }
      static_cast<int64_t*>(co.counts.data)[at3(co.counts, b, h, i)] = cnt;
      static_cast<R*>(co.info.data)[at3(co.info, b, h, i)] = inf;
      static_cast<int64_t*>(co.starts.data)[at3(co.starts, b, h, i)] = st;
    }
    if (tid == 0) static_cast<int64_t*>(co.size.data)[b * co.size.stride[0] + h * co.size.stride[1]] = m_out;

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
