#pragma once
// Linformer's projections on the CPU (compiled per ISA by linear_{generic,avx2,avx512}.cpp):
// K'[b, h] = E_h k[b, h] and V'[b, h] = F_h v[b, h] over the allowed keys, products of the register-blocked
// micro-kernel of cpu/gemm_kernel.h with E broadcast element by element (any strides) and the key / value
// rows read as vectors (in place when they are T-typed and unit-stride). Keys j >= key_lengths[b] are
// zero rows, so the sum simply stops at the last allowed key. The exact-attention kernel then runs on the
// projections (cpu/linformer.cpp).
//
// Work items are (batch, kv head, K or V, block of projected rows), each summed by one thread in a fixed
// order: the result does not depend on the number of threads.

#include <cstring>
#include <type_traits>

#include "check.h"
#include "cpu/gemm_kernel.h"
#include "cpu/parallel.h"
#include "cpu/kernel_common.h"
#include "cpu/simd.h"
#include "validate/linear.h"

namespace attnkit {
namespace detail {
namespace cpu {
inline namespace ATTNKIT_ISA_NAMESPACE {

template <class Cfg, class St>
struct LinformerProjection {
  using T = typename Cfg::T;
  using Gemm = MicroGemm<T, Cfg::W>;
  static constexpr int W = Cfg::W;
  static constexpr bool kSameType = std::is_same<St, T>::value;
  static constexpr DType kTDType = std::is_same<T, double>::value ? DType::Float64 : DType::Float32;
  /// Projected rows per work item and sequence positions per accumulation step: the step's rows of k
  /// (256 x D) stay in L2 while every row block of E streams over them.
  static constexpr int64_t kRows = 64;
  static constexpr int64_t kSeq = 256;

  /// Projects the k (which = 0) or v (which = 1) rows of (b, hkv) onto rows [p0, p0 + pn) into dst.
  static void project(const LinformerProblem& p, T* acc, T* xbuf, T* ebuf, int which, int64_t b, int64_t hkv,
                      int64_t p0, int64_t pn, St* dst) {
    const ViewN<4>& x = which ? p.v : p.k;
    const ViewN<3>& E = which ? p.F : p.E;
    const int64_t N = x.shape[3], NP = (N + W - 1) / W * W;
    int64_t L = p.Sk;
    if (p.key_lengths.present) L = load_int(p.key_lengths.data, p.key_lengths.dtype, b * p.key_lengths.stride[0]);
    const bool x_direct = kSameType && x.stride[3] == 1 && N % W == 0;
    const bool e_direct = E.dtype == kTDType;
    std::memset(acc, 0, sizeof(T) * pn * NP);
    const St* xbase = static_cast<const St*>(x.data) + b * x.stride[0] + hkv * x.stride[1];
    for (int64_t s0 = 0; s0 < L; s0 += kSeq) {
      const int64_t sn = imin(kSeq, L - s0);
      const T* xr = xbuf;
      int64_t ldx = NP;
      if (x_direct) {
        xr = reinterpret_cast<const T*>(xbase + s0 * x.stride[2]);
        ldx = x.stride[2];
      } else {
        for (int64_t s = 0; s < sn; ++s) {
          const St* src = xbase + (s0 + s) * x.stride[2];
          for (int64_t d = 0; d < N; ++d) xbuf[s * NP + d] = static_cast<T>(to_acc(src[d * x.stride[3]]));
          for (int64_t d = N; d < NP; ++d) xbuf[s * NP + d] = T(0);
        }
      }
      const int64_t eoff = hkv * E.stride[0] + p0 * E.stride[1] + s0 * E.stride[2];
      const T* a = ebuf;
      int64_t am = kSeq, ak = 1;
      if (e_direct) {
        a = static_cast<const T*>(E.data) + eoff;
        am = E.stride[1];
        ak = E.stride[2];
      } else {
        for (int64_t r = 0; r < pn; ++r)
          for (int64_t s = 0; s < sn; ++s)
            ebuf[r * kSeq + s] = load_float<T>(E.data, E.dtype, eoff + r * E.stride[1] + s * E.stride[2]);
      }
      Gemm::template gemm<Cfg::RL, Cfg::NV, Store::Accumulate>(pn, NP, sn, a, am, ak, xr, ldx, acc, NP);
    }
    for (int64_t r = 0; r < pn; ++r)
      for (int64_t d = 0; d < N; ++d) dst[r * N + d] = from_acc<St>(acc[r * NP + d]);
  }

  /// Writes K' [B, Hkv, P, D] and V' [B, Hkv, P, Dv] (C-contiguous, q's dtype).
  static void run(const LinformerProblem& p, void* kproj, void* vproj) {
    const int64_t B = p.attn.B, Hkv = p.attn.Hkv, P = p.P, D = p.attn.D, Dv = p.attn.Dv;
    const int64_t blocks = (P + kRows - 1) / kRows;
    const int64_t items = B * Hkv * 2 * blocks;
    const int64_t NP = ((D > Dv ? D : Dv) + W - 1) / W * W;
    const std::size_t bytes = sizeof(T) * static_cast<std::size_t>(kRows * NP + kSeq * NP + kRows * kSeq + 64);
    parallel_with_scratch("Linformer projection", items > 1, bytes, /*zero=*/true, [&](void* mem) {
      T* acc = static_cast<T*>(mem);
      T* xbuf = acc + (kRows * NP + 15) / 16 * 16;
      T* ebuf = xbuf + (kSeq * NP + 15) / 16 * 16;
      team_for(items, mem, [&](int64_t it) {
        const int64_t blk = it % blocks, rest = it / blocks;
        const int which = static_cast<int>(rest % 2);
        const int64_t bh = rest / 2, b = bh / Hkv, hkv = bh % Hkv;
        const int64_t p0 = blk * kRows, pn = imin(kRows, P - p0);
        const int64_t N = which ? Dv : D;
        St* dst = static_cast<St*>(which ? vproj : kproj) + (bh * P + p0) * N;
        project(p, acc, xbuf, ebuf, which, b, hkv, p0, pn, dst);
      });
    });
  }
};

/// Runs the Linformer projections for every storage dtype with the ISA's two configurations.
template <class Cfg32, class Cfg64>
void run_linformer_projection(const LinformerProblem& p, void* kproj, void* vproj) {
  switch (p.attn.dtype) {
    case DType::Float32: return LinformerProjection<Cfg32, float>::run(p, kproj, vproj);
    case DType::Float64: return LinformerProjection<Cfg64, double>::run(p, kproj, vproj);
    case DType::Float16: return LinformerProjection<Cfg32, Half>::run(p, kproj, vproj);
    case DType::BFloat16: return LinformerProjection<Cfg32, BFloat>::run(p, kproj, vproj);
    default: ATTNKIT_ASSERT(false, "Linformer: a non-floating dtype passed validation");
  }
}

}  // namespace ATTNKIT_ISA_NAMESPACE
}  // namespace cpu
}  // namespace detail
}  // namespace attnkit
