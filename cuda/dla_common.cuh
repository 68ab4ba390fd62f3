#pragma once
// Dynamic linear attention on the GPU (shared/specs/dla.md): what the decode kernels (dla_decode_v2.cu,
// dla_decode_v3.cu) and the chunked prefill kernel (dla_prefill.cu) share. The semantics are the CPU backend's
// (cpu/dla_decode.h, cpu/dla_prefill.h) with the scalar rules of attnkit/math/dla.h; see dla.cu for the
// mapping of work to threads and for where the GPU can decide differently from the CPU.

#include <cstddef>
#include <cstdint>

#include "attnkit/math/dla.h"
#include "cuda/common.cuh"
#include "validate/dla.h"

namespace attnkit {
namespace detail {
namespace cuda {
namespace dla {

/// Threads per block of both kernels. A fixed constant: the block reductions below sum in a fixed tree
/// over exactly these threads, so results never depend on the launch.
constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;

/// The CPU's automatic chunk length (cpu/dla_cache.h kDefaultChunk): the chunk boundaries decide where the
/// open state's squared norm is recomputed from the stored state, so they must be the CPU's.
constexpr int64_t kDefaultChunk = 64;

/// Scratch memory the grid may take at once; the grid shrinks (blocks loop over more items) to stay under it.
constexpr std::size_t kScratchBudget = std::size_t(1) << 30;

/// Whether the CPU takes its decode path (cpu/dla_decode.h can_fuse): the GPU takes its own decode kernel
/// in exactly the same cases, so both use the same formulas for the step.
inline bool takes_decode_path(const DLAProblem& p) {
  return p.T == 1 && p.chunk_size == 0 && (p.Dv == 1 || p.cache_out.states.stride[4] == 1) &&
         (!p.cache_in.present || p.Dv == 1 || p.cache_in.states.stride[4] == 1);
}

/// Blocks of a grid-stride launch over `items` (batch, head) items, each block owning `per_block` bytes of
/// scratch: a few blocks per SM, fewer when the scratch would pass kScratchBudget (at least 1).
unsigned grid_for(int64_t items, std::size_t per_block, int device);

template <class St>
void launch_prefill(const DLAProblem& p, cudaStream_t stream);
/// dla_prefill_v2.cu with dla_prefill_v4.cuh: five kernels (per-chunk score tables, boundaries from the open
/// state, the merge chain on a warp, the states at every chunk start, the readout of every chunk at once);
/// gate "dla_prefill_v4" (dla.cu); false (nothing launched) when its chunk layout does not fit in the device's
/// shared memory or one item's score tables pass the scratch budget, and the caller takes launch_prefill.
template <class St>
bool launch_prefill_v4(const DLAProblem& p, cudaStream_t stream);
/// dla_decode_v2.cu: the decode step as two kernels (decisions per item, then the states over a grid of
/// (column tile, item) blocks with vector loads); gated by "dla_decode_v2" (dla.cu).
template <class St>
void launch_decode_v2(const DLAProblem& p, cudaStream_t stream);
/// dla_decode_v3.cu: the decode step as one kernel (each (column tile, item) block decides for its item,
/// then runs v2's state pass for its tile); gated by "dla_decode_v3" (dla.cu); false (nothing launched) when
/// the capacity passes its shared buffers, and the caller takes launch_decode_v2.
template <class St>
bool launch_decode_v3(const DLAProblem& p, cudaStream_t stream);

// ------------------------------------------------------------------------------------------ device helpers

/// Element idx of a storage-typed array as the accumulator type.
template <class St>
__device__ __forceinline__ acc_t<St> ld(const void* base, int64_t idx) {
  return to_acc<acc_t<St>>(static_cast<const St*>(base)[idx]);
}

/// Offset of element (b, h, t) of a view whose first three dims are [B, H, T] (or [B, H, C]).
template <class View>
__device__ __forceinline__ int64_t at3(const View& x, int64_t b, int64_t h, int64_t t) {
  return b * x.stride[0] + h * x.stride[1] + t * x.stride[2];
}

/// The sum of x over the block's kThreads threads in a fixed tree; every thread gets it. `sh` holds
/// kThreads doubles of shared memory. Every thread of the block must call it (it synchronizes).
__device__ __forceinline__ double block_sum(double x, double* sh) {
  sh[threadIdx.x] = x;
  __syncthreads();
  for (int s = kThreads / 2; s > 0; s >>= 1) {
    if (static_cast<int>(threadIdx.x) < s) sh[threadIdx.x] += sh[threadIdx.x + s];
    __syncthreads();
  }
  const double r = sh[0];
  __syncthreads();
  return r;
}

// ------------------------------------------------------------------------ the decode step (T = 1), shared
// by dla_decode_v2.cu (decisions, then states) and dla_decode_v3.cu (both in one kernel).

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

/// A decode step's decision for one (batch, head) item: the decay a, the score I, whether the token opens
/// a state, the merged pair (-1: none), and the input and output entry counts.
template <class R>
struct DecodeStep {
  double a;
  R I;
  int opens;
  int64_t merged, m, m_out;
};

/// Steps 1-4 of the decode step of item (b, h) on the input open state: A = a^2 ||S_open||^2,
/// p = a k^T S_open v and B = |k|^2 |v|^2 as block sums in double, math/dla.h's score, boundary and merge
/// pair by thread 0, which also writes the token's aux outputs (scores, boundaries, merged). Every thread
/// of the block calls it (it synchronizes) and gets the result (broadcast through *sh). red: kThreads
/// doubles of shared memory; cnt_buf / info_buf: C entries of this block's global (or shared) scratch.
/// kUnroll: the unroll factor of the loop over the open state (1 in the first decode kernel, removed in
/// session 27, which would spill with more; results do not depend on it). kBatch > 0: that loop in two phases, kBatch elements'
/// loads, then their sums (dla_decode_v3.cu; the same sums in the same order). write_aux false: the aux
/// outputs are left to another block deciding the same item (dla_decode_v3.cu: one block per column tile
/// decides).
template <class St, int kUnroll, int kBatch = 0>
__device__ __forceinline__ DecodeStep<acc_t<St>> decode_decide(const DLAProblem& p, int64_t b, int64_t h,
                                                               double* red, DecodeStep<acc_t<St>>* sh,
                                                               int64_t* cnt_buf, acc_t<St>* info_buf,
                                                               bool write_aux = true) {
  using R = acc_t<St>;
  const int tid = static_cast<int>(threadIdx.x);
  const int64_t C = p.C, Dk = p.Dk, Dv = p.Dv;
  const double n = static_cast<double>(Dk) * static_cast<double>(Dv);
  const DLACacheViews& ci = p.cache_in;
  // The input size, bounded to [0, C] (the host has checked it before the launch, validate/dla.cpp: a
  // second guard that no value can take the reads of the cache out of its arrays; no effect on valid sizes).
  int64_t m =
      ci.present ? static_cast<const int64_t*>(ci.size.data)[b * ci.size.stride[0] + h * ci.size.stride[1]] : 0;
  m = m < 0 ? 0 : (m > C ? C : m);
  const double a =
      p.log_decay.present ? exp(load_float<double>(p.log_decay.data, p.log_decay.dtype, at3(p.log_decay, b, h, 0)))
                          : 1.0;
  const int64_t ks = p.k.stride[3], vs = p.v.stride[3];
  const void* kd = static_cast<const St*>(p.k.data) + at3(p.k, b, h, 0);
  const void* vd = static_cast<const St*>(p.v.data) + at3(p.v, b, h, 0);
  // The merge pair's inputs, contiguous copies of the counts and info, made by the whole block in parallel
  // (visible to thread 0 after the block sums' barriers) whenever the cache is full, before it is known
  // whether the token opens a state: one thread copying them would wait a memory round trip per entry.
  if (m == C)
    for (int64_t i = tid; i < m; i += kThreads) {
      cnt_buf[i] = static_cast<const int64_t*>(ci.counts.data)[at3(ci.counts, b, h, i)];
      info_buf[i] = static_cast<const R*>(ci.info.data)[at3(ci.info, b, h, i)];
    }
  // B = |k|^2 |v|^2 as the CPU's product of two dots.
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
    const R* open = static_cast<const R*>(ci.states.data) + b * ci.states.stride[0] + h * ci.states.stride[1] +
                    (m - 1) * ci.states.stride[2];
    const int64_t is3 = ci.states.stride[3], is4 = ci.states.stride[4];
    double sq = 0, pk = 0;
    // Element idx = d * Dv + e, (d, e) stepped by kThreads without a division; unrolled so that several
    // loads are in flight. Each thread's sums keep their order (idx ascending).
    int64_t d = tid / Dv, e = tid - (tid / Dv) * Dv;
    if constexpr (kBatch > 0) {
      // kBatch elements at a time in two phases: every load first (only index steps between them, so they
      // are all in flight before the first use; in the one-phase loop below, the (d, e) stepping's branch
      // between one element's use and the next element's loads keeps the compiler from hoisting them, one
      // memory round trip per element), then the same sums in the same order.
      for (int64_t idx0 = tid; idx0 < Dk * Dv; idx0 += static_cast<int64_t>(kThreads) * kBatch) {
        R sb[kBatch], kb[kBatch], vb[kBatch];
#pragma unroll
        for (int u = 0; u < kBatch; ++u) {
          sb[u] = kb[u] = vb[u] = R(0);
          if (idx0 + static_cast<int64_t>(u) * kThreads < Dk * Dv) {
            sb[u] = open[d * is3 + e * is4];
            kb[u] = ld<St>(kd, d * ks);
            vb[u] = ld<St>(vd, e * vs);
          }
          e += kThreads;
          while (e >= Dv) {
            e -= Dv;
            ++d;
          }
        }
#pragma unroll
        for (int u = 0; u < kBatch; ++u)
          if (idx0 + static_cast<int64_t>(u) * kThreads < Dk * Dv) {
            const double s = static_cast<double>(sb[u]);
            sq += s * s;
            pk += static_cast<double>(kb[u]) * s * static_cast<double>(vb[u]);
          }
      }
    } else {
#pragma unroll kUnroll
      for (int64_t idx = tid; idx < Dk * Dv; idx += kThreads) {
        const double s = static_cast<double>(open[d * is3 + e * is4]);
        sq += s * s;
        pk += static_cast<double>(ld<St>(kd, d * ks)) * s * static_cast<double>(ld<St>(vd, e * vs));
        e += kThreads;
        while (e >= Dv) {
          e -= Dv;
          ++d;
        }
      }
    }
    sq = block_sum(sq, red);
    pk = block_sum(pk, red);
    score = math::dla_info_score(p.state_drift, a * a * sq, kk * vv, a * pk, n);
  }
  if (tid == 0) {
    const R I = static_cast<R>(score);
    const bool opens = math::dla_opens_state(I, p.tau, C, m);
    int64_t merged = -1;
    if (opens && m == C) merged = math::dla_merge_pair(info_buf, cnt_buf, m);
    sh->a = a;
    sh->I = I;
    sh->opens = opens ? 1 : 0;
    sh->merged = merged;
    sh->m = m;
    sh->m_out = opens && merged < 0 ? m + 1 : m;
    if (write_aux) {
      if (p.scores.present) static_cast<R*>(p.scores.data)[at3(p.scores, b, h, 0)] = I;
      if (p.boundaries.present)
        static_cast<uint8_t*>(p.boundaries.data)[at3(p.boundaries, b, h, 0)] = opens ? 1 : 0;
      if (p.merged.present) static_cast<int64_t*>(p.merged.data)[at3(p.merged, b, h, 0)] = merged;
    }
  }
  __syncthreads();
  const DecodeStep<R> r = *sh;
  __syncthreads();  // *sh may be written again for the block's next item
  return r;
}

/// The output entry list of item (b, h) after step s: counts, info, starts (0 for unused entries) and
/// size. Threads of the block stride over the C entries; no synchronization.
template <class R>
__device__ __forceinline__ void decode_write_entries(const DLAProblem& p, int64_t b, int64_t h,
                                                     const DecodeStep<R>& s) {
  const DLACacheViews& ci = p.cache_in;
  const DLACacheOut& co = p.cache_out;
  const bool opens = s.opens != 0;
  for (int64_t i = threadIdx.x; i < p.C; i += blockDim.x) {
    int64_t cnt = 0, st = 0;
    R inf = R(0);
    if (i < s.m_out) {
      const DecodeSrc src = decode_src(i, s.m, opens, s.merged);
      if (src.s0 < 0) {
        cnt = 1;
        inf = s.I;
        st = p.position;
      } else {
        cnt = static_cast<const int64_t*>(ci.counts.data)[at3(ci.counts, b, h, src.s0)];
        inf = static_cast<const R*>(ci.info.data)[at3(ci.info, b, h, src.s0)];
        st = static_cast<const int64_t*>(ci.starts.data)[at3(ci.starts, b, h, src.s0)];
        if (src.s1 >= 0) {
          cnt += static_cast<const int64_t*>(ci.counts.data)[at3(ci.counts, b, h, src.s1)];
          inf += static_cast<const R*>(ci.info.data)[at3(ci.info, b, h, src.s1)];
        }
        if (src.tok) {
          cnt += 1;
          inf += s.I;
        }
      }
    }
    static_cast<int64_t*>(co.counts.data)[at3(co.counts, b, h, i)] = cnt;
    static_cast<R*>(co.info.data)[at3(co.info, b, h, i)] = inf;
    static_cast<int64_t*>(co.starts.data)[at3(co.starts, b, h, i)] = st;
  }
  if (threadIdx.x == 0) static_cast<int64_t*>(co.size.data)[b * co.size.stride[0] + h * co.size.stride[1]] = s.m_out;
}

/// The sum of x over the 32 lanes of a warp in a fixed tree; lane 0 gets it.
__device__ __forceinline__ double warp_sum(double x) {
  for (int s = 16; s > 0; s >>= 1) x += __shfl_down_sync(0xffffffffu, x, s);
  return x;
}

}  // namespace dla
}  // namespace cuda
}  // namespace detail
}  // namespace attnkit
