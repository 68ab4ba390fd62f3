#pragma once
// Dynamic linear attention on the GPU: the decode step's state pass for one (batch, head) item and one tile
// of columns, shared by dla_decode_v2.cu (its second kernel, after the decisions' kernel) and
// dla_decode_v3.cu (one kernel: each block decides, then runs this for its column tile). The same code in
// both, so the two give the same results bit for bit.
//
// A block of kThreads threads: kLanes lanes of VEC consecutive columns (one 16-byte load each where the
// states allow it, else VEC = 1) times kRows row groups; each thread walks the (entry, row) units
// f = i * Dk + d of its row group, kUnits at a time: first every load of the units (so they are in flight
// together; the output stores could alias the inputs as far as the compiler knows, so it would not hoist
// them itself), then out = a (s0 + s1) + k_d v (the token's entry only) stored, and y += (lam * q_d) out
// accumulated per column. The kRows row groups' partial readouts are summed in a fixed order in shared
// memory. Each column's readout sums the same rows in the same order whatever VEC (chosen from the
// cache's alignment) is, so results depend neither on the launch nor on the cache's alignment.

#include <cstdint>

#include "cuda/dla_common.cuh"

namespace attnkit {
namespace detail {
namespace cuda {
namespace dla {
namespace decode_states {

constexpr int kLanes = 8;                  // column lanes of a state-pass block
constexpr int kRows = kThreads / kLanes;  // row groups of a state-pass block
constexpr int kUnits = 8;                  // (entry, row) units whose loads are issued together

/// VEC consecutive elements of R, loaded and stored as one access (16 bytes for VEC * sizeof(R) = 16).
template <class R, int VEC>
struct alignas(sizeof(R) * VEC) Pack {
  R x[VEC];
};

/// Whether states at `data` with element strides `stride` ([B, H, C, Dk, Dv]) can be read as VEC-element
/// packs at every (b, h, i, d, e) with e a multiple of VEC: 16-byte aligned base, rows contiguous, and
/// every other stride a multiple of VEC.
inline bool packs_fit(const void* data, const int64_t* stride, int vec, std::size_t pack_bytes) {
  if (reinterpret_cast<std::uintptr_t>(data) % pack_bytes != 0 || stride[4] != 1) return false;
  for (int d = 0; d < 4; ++d)
    if (stride[d] % vec != 0) return false;
  return true;
}

/// Whether the state pass can take VEC = 16 / sizeof(R) packs for problem p.
template <class R>
bool packs_ok(const DLAProblem& p) {
  constexpr int kVec = static_cast<int>(16 / sizeof(R));  // 4 floats or 2 doubles
  return p.Dv % kVec == 0 && packs_fit(p.cache_out.states.data, p.cache_out.states.stride, kVec, 16) &&
         (!p.cache_in.present || packs_fit(p.cache_in.states.data, p.cache_in.states.stride, kVec, 16));
}

/// The state pass of item `it` for column tile `tile` (columns tile * kLanes * VEC ...): the output states
/// of the tile's columns and the readout y of those columns. Every thread of the block calls it (it
/// synchronizes). ypart: kRows x (kLanes * VEC) elements of shared memory.
template <class St, int VEC>
__device__ __forceinline__ void item(const DLAProblem& p, int64_t it, const DecodeStep<acc_t<St>>& step, int64_t tile,
                                     acc_t<St> (*ypart)[kLanes * VEC]) {
  using R = acc_t<St>;
  using P = Pack<R, VEC>;
  constexpr int kCols = kLanes * VEC;
  // Fewer units per round for the scalar fallback (general strides: more registers per unit; no spills).
  constexpr int kU = VEC == 1 ? kUnits / 2 : kUnits;
  const int tid = static_cast<int>(threadIdx.x), cl = tid % kLanes, rg = tid / kLanes;
  const int64_t Dk = p.Dk, Dv = p.Dv;
  const int64_t total = p.C * Dk;  // (entry, row) units f = i * Dk + d
  const int64_t e = tile * kCols + static_cast<int64_t>(cl) * VEC;
  // VEC > 1 only when Dv % VEC == 0 (packs_ok), so the VEC columns are all in range or none is.
  const bool ve = e < Dv;
  const DLACacheViews& ci = p.cache_in;
  const DLACacheOut& co = p.cache_out;
  const int64_t is2 = ci.states.stride[2], is3 = ci.states.stride[3], is4 = ci.states.stride[4];
  const int64_t os2 = co.states.stride[2], os3 = co.states.stride[3], os4 = co.states.stride[4];
  const int64_t qs = p.q.stride[3], ks = p.k.stride[3], vs = p.v.stride[3], ls = p.lam.stride[3];

  const int64_t b = it / p.H, h = it % p.H;
  const bool opens = step.opens != 0;
  const R at = static_cast<R>(step.a);
  const void* qd = static_cast<const St*>(p.q.data) + at3(p.q, b, h, 0);
  const void* kd = static_cast<const St*>(p.k.data) + at3(p.k, b, h, 0);
  const void* vd = static_cast<const St*>(p.v.data) + at3(p.v, b, h, 0);
  const void* lamd = static_cast<const St*>(p.lam.data) + at3(p.lam, b, h, 0);
  const R* in = ci.present ? static_cast<const R*>(ci.states.data) + b * ci.states.stride[0] + h * ci.states.stride[1]
                           : nullptr;
  R* outs = static_cast<R*>(co.states.data) + b * co.states.stride[0] + h * co.states.stride[1];
  R v_e[VEC], yp[VEC];
#pragma unroll
  for (int j = 0; j < VEC; ++j) {
    v_e[j] = ve ? ld<St>(vd, (e + j) * vs) : R(0);
    yp[j] = R(0);
  }

  if (ve) {
    // The (entry, row) pair (ni, nd) of the thread's next unit f = ni * Dk + nd, stepped by kRows without
    // a division per unit.
    int64_t ni = rg / Dk, nd = rg - (rg / Dk) * Dk;
    for (int64_t f0 = rg; f0 < total; f0 += static_cast<int64_t>(kRows) * kU) {
      P a0[kU], a1[kU];
      int64_t iu[kU], du[kU];
      // Every load of the kU units first.
#pragma unroll
      for (int u = 0; u < kU; ++u) {
#pragma unroll
        for (int j = 0; j < VEC; ++j) a0[u].x[j] = a1[u].x[j] = R(0);
        const int64_t i = ni, d = nd;
        iu[u] = i;
        du[u] = d;
        nd += kRows;
        while (nd >= Dk) {
          nd -= Dk;
          ++ni;
        }
        if (i >= step.m_out) continue;  // also every unit past the last (f >= total: i >= C >= m_out)
        const DecodeSrc s = decode_src(i, step.m, opens, step.merged);
        if (s.s0 >= 0) a0[u] = *reinterpret_cast<const P*>(in + s.s0 * is2 + d * is3 + e * is4);
        if (s.s1 >= 0) a1[u] = *reinterpret_cast<const P*>(in + s.s1 * is2 + d * is3 + e * is4);
      }
      // Then the output states and the readout.
#pragma unroll
      for (int u = 0; u < kU; ++u) {
        const int64_t i = iu[u], d = du[u];
        if (i >= p.C) continue;  // past the last unit
        P x;
        if (i >= step.m_out) {  // unused entry: zeros
#pragma unroll
          for (int j = 0; j < VEC; ++j) x.x[j] = R(0);
        } else {
          const DecodeSrc s = decode_src(i, step.m, opens, step.merged);
          const R kv = s.tok ? ld<St>(kd, d * ks) : R(0);
          const R wq = ld<St>(lamd, math::dla_lam_index(i, step.m_out) * ls) * ld<St>(qd, d * qs);
#pragma unroll
          for (int j = 0; j < VEC; ++j) {
            R xj = R(0);
            if (s.s0 >= 0) xj = s.s1 >= 0 ? at * (a0[u].x[j] + a1[u].x[j]) : at * a0[u].x[j];
            xj += kv * v_e[j];
            x.x[j] = xj;
            yp[j] += wq * xj;
          }
        }
        *reinterpret_cast<P*>(outs + i * os2 + d * os3 + e * os4) = x;
      }
    }
  }

  // The readout: the kRows row groups' partial sums in a fixed order.
#pragma unroll
  for (int j = 0; j < VEC; ++j) ypart[rg][cl * VEC + j] = yp[j];
  __syncthreads();
  if (tid < kCols) {
    const int64_t ec = tile * kCols + tid;
    if (ec < Dv) {
      R s = R(0);
      for (int r = 0; r < kRows; ++r) s += ypart[r][tid];
      St* y = static_cast<St*>(p.out.data) + at3(p.out, b, h, 0);
      y[ec * p.out.stride[3]] = from_acc<St>(s);
    }
  }
  __syncthreads();  // ypart is written again for the block's next item
}

}  // namespace decode_states
}  // namespace dla
}  // namespace cuda
}  // namespace detail
}  // namespace attnkit
