#pragma once
// The CPU kernel of dynamic linear attention (shared/specs/dla.md): each (batch, head) item takes the decode
// path (T = 1; cpu/dla_decode.h) or the chunked form (cpu/dla_prefill.h), over the shared cache and
// scratch of cpu/dla_cache.h. Compiled per instruction set by dla_{generic,avx2,avx512}.cpp. The
// token-by-token (recurrent) form of earlier versions is gone: the chunked form with chunks of one token
// (tuning option dla_chunk = 1) computes the same steps, and the float64 oracle is the reference.

#include "check.h"
#include "cpu/dla_decode.h"
#include "cpu/dla_prefill.h"
#include "cpu/parallel.h"

namespace attnkit {
namespace detail {
namespace cpu {
inline namespace ATTNKIT_ISA_NAMESPACE {

template <class Cfg, class St>
struct DlaKernel {
  using Base = DlaBase<Cfg, St>;
  using Decode = DlaDecode<Cfg, St>;
  using Prefill = DlaPrefill<Cfg, St>;
  using Ctx = typename Base::Ctx;
  using Work = typename Base::Work;
  static constexpr int W = Base::W;

  /// Runs every (batch, head) item on the decode path or the chunked form.
  static void run(const DLAProblem& p) {
    Ctx c;
    c.p = &p;
    c.L = p.chunk_size > 0 ? p.chunk_size : Base::kDefaultChunk;
    if (c.L > p.T) c.L = p.T > 0 ? p.T : 1;
    c.Dk = p.Dk;
    c.DvP = (p.Dv + W - 1) / W * W;
    c.LP = (c.L + W - 1) / W * W;
    c.C = p.C;
    c.SS = c.Dk * c.DvP;
    c.n = static_cast<double>(p.Dk) * static_cast<double>(p.Dv);
    c.decay = p.log_decay.present;
    c.fused = Decode::can_fuse(p);
    const int64_t items = p.B * p.H;
    Work layout;
    const std::size_t bytes = Base::carve(nullptr, c, layout);
    // Every scratch buffer is written before it is read: no zero-fill.
    parallel_with_scratch("DLA", items > 1, bytes, /*zero=*/false, [&](void* mem) {
      Work w{};
      if (mem) Base::carve(static_cast<char*>(mem), c, w);
      team_for(items, mem, [&](int64_t it) {
        const int64_t b = it / p.H, h = it % p.H;
        if (c.fused) {
          Decode::decode(c, w, b, h);
          return;
        }
        Base::load_cache(c, w, b, h);
        Prefill::chunked(c, w, b, h);
      });
    });
  }
};

/// Runs DLA for every storage dtype with the ISA's two configurations.
template <class Cfg32, class Cfg64>
void run_dla(const DLAProblem& p) {
  switch (p.dtype) {
    case DType::Float32: return DlaKernel<Cfg32, float>::run(p);
    case DType::Float64: return DlaKernel<Cfg64, double>::run(p);
    case DType::Float16: return DlaKernel<Cfg32, Half>::run(p);
    case DType::BFloat16: return DlaKernel<Cfg32, BFloat>::run(p);
    default: ATTNKIT_ASSERT(false, "DLA: a non-floating dtype passed validation");
  }
}

}  // namespace ATTNKIT_ISA_NAMESPACE
}  // namespace cpu
}  // namespace detail
}  // namespace attnkit
