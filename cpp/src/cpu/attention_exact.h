#pragma once
// Exact attention's work distribution and per-ISA dispatch: the tiles of ExactKernel (attention_kernel.h)
// spread over the threads, split decoding with its merge, and the choice of tile width and configuration
// per storage dtype. The per-tile computation (lanes, key ranges, scores, online softmax, PV) stays in
// attention_kernel.h.

#include <cstring>

#include "cpu/attention_kernel.h"
#include "cpu/parallel.h"
#include "cpu/split_merge.h"
#include "workspace.h"

namespace attnkit {
namespace detail {
namespace cpu {
inline namespace ATTNKIT_ISA_NAMESPACE {

/// Cfg::NQV_COPIED (optional, 0 when absent): the tile width, in lane vectors, for float16 / bfloat16 calls
/// whose K and V are all read converted once (the per-call or per-thread float32 copies, or K packed and
/// V copied) rather than converted chunk by chunk per tile. Cfg's wider tile only spreads that per-tile
/// conversion over more lanes; without it the float32 tile is the better one (narrower tiles waste less
/// on the causal diagonal and balance better over the threads).
template <class Cfg, class = void>
struct CopiedWidth {
  static constexpr int value = 0;
};
template <class Cfg>
struct CopiedWidth<Cfg, std::void_t<decltype(Cfg::NQV_COPIED)>> {
  static constexpr int value = Cfg::NQV_COPIED < Cfg::NQV ? Cfg::NQV_COPIED : 0;
};
/// Cfg at its NQV_COPIED width.
template <class Cfg>
struct CopiedCfg : Cfg {
  static constexpr int NQV = Cfg::NQV_COPIED;
};

/// Runs ExactKernel<Cfg, St> over a whole problem.
template <class Cfg, class St>
struct ExactRun : ExactKernel<Cfg, St> {
  using K = ExactKernel<Cfg, St>;
  using typename K::Ctx;
  using typename K::T;
  using typename K::Tile;
  using typename K::Work;
  using K::BK;
  using K::BQ;
  using K::W;
  using K::kDotLanes;
  using K::kPairDot;
  using K::attend_tile;
  using K::carve;
  using K::lane_row_head;
  using K::tile_lanes;
  using K::weights_tile;
  using K::work_bytes;

  /// Split decoding, for few tiles (few query rows per kv head) and long keys: splits of at least
  /// kSplitMinKeys keys, so that tiles x splits reaches about kSplitItems work items, their partial results
  /// merged with math::merge_step in split order. The split points come from the problem size only, never
  /// the number of threads. Returns the number of splits (1: none) and, in *len, their length.
  static constexpr int64_t kSplitItems = 64;
  static constexpr int64_t kSplitMinKeys = 2048;
  static int64_t key_splits(const AttnProblem& p, int64_t tiles, bool weights, int64_t* len) {
    *len = p.Sk;
    if (weights || tiles <= 0 || tiles >= kSplitItems) return 1;
    const int64_t n = imin(p.Sk / kSplitMinKeys, (kSplitItems + tiles - 1) / tiles);
    if (n <= 1) return 1;
    *len = (p.Sk + n - 1) / n;
    *len = (*len + BK - 1) / BK * BK;
    return (p.Sk + *len - 1) / *len;
  }

  /// Merges the nsplit partial results of tile t's lanes (merge_splits: double, split order) into out and
  /// lse. acc: Dv doubles of scratch.
  static void merge_tile(const Ctx& c, const Tile& t, double* acc) {
    const AttnProblem& p = *c.p;
    const int nl = tile_lanes(c, t);
    for (int l = 0; l < nl; ++l) {
      const int64_t r = t.index * c.nsplit * BQ + l;
      double lse;
      const double sc = merge_splits(c.part_o + r * p.Dv, BQ * p.Dv, c.part_lse + r, BQ, c.nsplit, p.Dv, acc, &lse);
      int64_t i, h;
      lane_row_head(c, t, l, i, h);
      St* dst = static_cast<St*>(p.out) + t.b * p.out_stride[0] + h * p.out_stride[1] + i * p.out_stride[2];
      for (int64_t d = 0; d < p.Dv; ++d) dst[d * p.out_stride[3]] = from_acc<St>(static_cast<T>(acc[d] * sc));
      if (p.lse)
        static_cast<T*>(p.lse)[t.b * p.lse_stride[0] + h * p.lse_stride[1] + i * p.lse_stride[2]] = static_cast<T>(lse);
    }
  }

  /// float16 / bfloat16 K and V are converted to T once per call when every chunk would otherwise be
  /// converted by several query tiles (the per-tile conversion held ~8% of a non-causal float16 call's
  /// samples at D = 64, S = 1024 on Zen 3) and one kv head's copy takes at most kConvHeadBytes (the whole
  /// copy at most kConvMaxBytes). Longer heads convert per tile as they are packed: there the tiles stream
  /// K and V from L3 each, and reading the 16-bit inputs (half the bytes) into an L1-resident packed
  /// chunk beat reading a float32 copy (Zen 3, D = 128, S = 4096: 1.14-1.16x; D = 64, S <= 2048 and
  /// D = 128, S = 1024 gained or held with the copy).
  static constexpr std::size_t kConvHeadBytes = std::size_t(1) << 20;
  static constexpr std::size_t kConvMaxBytes = std::size_t(64) << 20;
  static std::size_t convert_elems(const Ctx& c, bool weights, bool k_packed, std::size_t* kn) {
    const AttnProblem& p = *c.p;
    *kn = 0;
    if constexpr (K::kSameType) return 0;
    if (c.dot || chunk_readers(c) < 2 || p.Sk * (p.D + p.Dv) * sizeof(T) > kConvHeadBytes) return 0;
    return copy_elems(c, weights, k_packed, static_cast<std::size_t>(p.B * p.Hkv * p.Sk), kConvMaxBytes, kn);
  }
  /// Query tiles that read each K/V chunk.
  static int64_t chunk_readers(const Ctx& c) { return c.nqblocks * c.tiles * (c.G / c.Gp); }
  /// Elements of a float32 copy of `rows` K and V rows (no keys where PairDot reads the stored bfloat16
  /// keys, no values for attention_weights), in *kn those of the keys; 0 (and *kn = 0) when none are
  /// copied or the copy would take more than `limit` bytes.
  static std::size_t copy_elems(const Ctx& c, bool weights, bool k_packed, std::size_t rows, std::size_t limit,
                                std::size_t* kn) {
    *kn = c.pair_qk || k_packed ? 0 : rows * c.p->D;
    const std::size_t n = *kn + (weights ? 0 : rows * c.p->Dv);
    if (n > 0 && n * sizeof(T) <= limit) return n;
    *kn = 0;
    return 0;
  }
  /// Heads too long for the per-call copy are converted once per thread instead: each thread keeps a
  /// float32 copy of the kv head its last tile read ([Sk][D] keys, [Sk][Dv] values, in its scratch) and
  /// converts again only when a tile of another head comes (tiles run head by head, so each thread
  /// converts each head about once, where per-tile conversion converted it once per query tile: 1365
  /// times per head at S = 4096 with 48-lane tiles). Up to kThreadConvBytes per thread (a bend of the
  /// O(threads * tile) scratch rule, like the per-call copy): the tiles then stream that copy from L2/L3.
  /// Only where a chunk's float32 K and V rows (BK * (D + Dv)) fit in kThreadConvChunkBytes (an L1):
  /// on Zen 3 (AVX2, 1 thread, bench/results/history/lowp_avx2_s24.json) the copy gained at D = 64, S = 4096
  /// (1.04-1.1x, non-causal and causal) but lost at D = 128, S = 2048 and 4096 (0.90-0.95x) to the
  /// per-tile conversion into L1-resident packed chunks.
  /// Returns the elements of one head's copy (0: convert per tile), in *kn those of its keys. Exact
  /// conversion: results are the same whichever way and whichever thread converts.
  static constexpr std::size_t kThreadConvBytes = std::size_t(4) << 20;
  static constexpr std::size_t kThreadConvChunkBytes = std::size_t(32) << 10;
  static std::size_t thread_convert_elems(const Ctx& c, bool weights, bool k_packed, std::size_t* kn) {
    const AttnProblem& p = *c.p;
    *kn = 0;
    if constexpr (K::kSameType) return 0;
    if (c.dot || chunk_readers(c) < 2 || BK * (p.D + p.Dv) * sizeof(T) > kThreadConvChunkBytes) return 0;
    return copy_elems(c, weights, k_packed, static_cast<std::size_t>(p.Sk), kThreadConvBytes, kn);
  }
  /// Converts the rows of kv head (b, h) of x ([B][Hkv][Sk][N] view) into dst [Sk][N] (one thread).
  static void convert_head(const AttnProblem& p, const ViewN<4>& x, int64_t N, int64_t b, int64_t h, T* dst) {
    const St* base = static_cast<const St*>(x.data) + b * x.stride[0] + h * x.stride[1];
    for (int64_t j = 0; j < p.Sk; ++j) convert_row(base + j * x.stride[2], x.stride[3], N, dst + j * N);
  }

  /// Converts rows of x ([B][Hkv][Sk][N] view) into dst [B][Hkv][Sk][N] (team_for: call in the team).
  static void convert_kv(const AttnProblem& p, const ViewN<4>& x, int64_t N, T* dst, const void* mem) {
    constexpr int64_t kRows = 256;
    const int64_t per_head = (p.Sk + kRows - 1) / kRows;
    team_for(p.B * p.Hkv * per_head, mem, [&](int64_t it) {
      const int64_t bh = it / per_head, b = bh / p.Hkv, h = bh % p.Hkv, j0 = it % per_head * kRows;
      const St* base = static_cast<const St*>(x.data) + b * x.stride[0] + h * x.stride[1];
      for (int64_t j = j0; j < imin(p.Sk, j0 + kRows); ++j)
        convert_row(base + j * x.stride[2], x.stride[3], N, dst + (bh * p.Sk + j) * N);
    });
  }

  /// float32 / float64 K is packed once per call (Ctx::kpack, layout there) for D >= kPackMinD when at least
  /// kPackReaders query tiles read each K chunk. On Zen 3 (AVX2, 1 thread, 24-lane tiles) QK^T from the
  /// packed keys ran D = 128 non-causal 1.05x (S = 2048) and 1.06-1.08x (S = 4096, where K streams from L3
  /// once per tile), causal S = 2048 1.04-1.06x (two runs); at D = 64 it gained nothing and the copy cost 1-7%
  /// at S <= 1024 (bench/results/history/exact_avx2_s24_1thread*.json). Packing V as well ([Dv / RL][Sk][RL] panels for
  /// PV) gained nothing on top and was dropped. Not for the dot-product path (decoding), split decoding or
  /// attention_weights; only where a chunk starts on a key block (BK % R == 0, else every chunk but one in R
  /// would read in place anyway).
  /// DESIGN.md's memory rule ("extra memory O(threads * tile)") is bent here as it is for the float16 copy
  /// (convert_elems): the copy is O(B * Hkv * Sk * D) (never O(S^2)), at most kConvMaxBytes (64 MiB);
  /// larger problems read K in place as before.
  static constexpr int64_t kPackReaders = 32;
  static constexpr int64_t kPackMinD = 96;
  /// float16 / bfloat16 K (AVX2 only, where it was measured) is converted into the same packed layout (K
  /// then needs no float32 copy and no per-tile conversion; V keeps its own). The per-thread copy of K and V
  /// lost at D = 128 (0.90-0.95x, session 24) largely for want of this packing, which the float32 path has
  /// there: with the keys packed and the values converted per tile, D = 128 ran 1.00-1.12x the unpacked
  /// 16-bit build non-causal (S = 2048, 4096) and ~1.0x causal; a per-thread float32 copy of V beside the
  /// packed keys ran 0.94-0.97x at S = 4096 and was dropped (Zen 3, 1 thread,
  /// bench/results/history/lowp_avx2_s25_variants.json). The threshold is in query rows per key chunk, as
  /// for float32 (kPackReaders tiles of 3 vectors): half the readers for their 48-lane tiles, the same for
  /// the 24-lane ones (CopiedCfg), so that the wide and the narrow run take the same decision.
#if defined(__AVX2__) && !defined(__AVX512F__)
  static constexpr bool kPackLowp = true;
#else
  static constexpr bool kPackLowp = false;
#endif
  static std::size_t pack_elems(const Ctx& c, bool weights) {
    const AttnProblem& p = *c.p;
    if constexpr (BK % K::R != 0 || (!K::kSameType && !kPackLowp)) return 0;
    const int64_t readers = K::kSameType ? kPackReaders : kPackReaders * 3 / (BQ / W);
    if (weights || c.dot || c.pair_qk || c.nsplit > 1 || !c.k_direct || p.D < kPackMinD || chunk_readers(c) < readers)
      return 0;
    const std::size_t n = static_cast<std::size_t>(p.B * p.Hkv * ((p.Sk + K::R - 1) / K::R * K::R) * p.D);
    return n * sizeof(T) <= kConvMaxBytes ? n : 0;
  }
  /// Ctx::kpack from K (team_for: call in the team).
  static void pack_k(const AttnProblem& p, T* dst, const void* mem) {
    constexpr int R = K::R;
    constexpr int64_t kBlocks = 64;  // key blocks per work item
    const int64_t nb = (p.Sk + R - 1) / R, per_head = (nb + kBlocks - 1) / kBlocks;
    const ViewN<4>& x = p.k;
    team_for(p.B * p.Hkv * per_head, mem, [&](int64_t it) {
      const int64_t bh = it / per_head, b = bh / p.Hkv, h = bh % p.Hkv;
      const St* base = static_cast<const St*>(x.data) + b * x.stride[0] + h * x.stride[1];
      for (int64_t kb = it % per_head * kBlocks; kb < imin(nb, (it % per_head + 1) * kBlocks); ++kb) {
        T* out = dst + (bh * nb + kb) * p.D * R;
        for (int r = 0; r < R; ++r) {
          const int64_t j = kb * R + r;
          if (j < p.Sk) {
            const St* src = base + j * x.stride[2];
            for (int64_t d = 0; d < p.D; ++d) out[d * R + r] = static_cast<T>(to_acc(src[d]));
          } else {
            for (int64_t d = 0; d < p.D; ++d) out[d * R + r] = T(0);
          }
        }
      }
    });
  }

  /// Runs every tile; throws Error (after the parallel region) when memory cannot be had.
  static void run(const AttnProblem& p, bool weights) {
    Ctx c;
    c.p = &p;
    c.G = p.Hkv ? p.Hq / p.Hkv : 1;
    c.Gp = packed_heads(p);
    c.groups = p.Hq / c.Gp;
    c.qblock = block_rows(p);
    c.nqblocks = (p.Sq + c.qblock - 1) / c.qblock;
    c.tiles = (lanes_per_block(p) + BQ - 1) / BQ;
    c.DvP = (p.Dv + W - 1) / W * W;
    c.softcap = p.softcap > 0;
    c.qscale = static_cast<T>(p.scale);
    c.cap_in = c.softcap ? static_cast<T>(1.0 / p.softcap) : T(0);
    c.cap_out = static_cast<T>(p.softcap);
    c.bias_tile = p.mask.present || p.bias.present;
    c.alibi = p.alibi.present;
    c.k_direct = p.k.stride[3] == 1;
    c.dot = lanes_per_block(p) <= kDotLanes;
    c.pair_qk = kPairDot && !c.dot && c.k_direct;
    c.v_direct = !weights && p.v.stride[3] == 1;
    c.weights = weights;
    c.prefetch = c.tiles == 1;
    const int64_t per_bg = c.nqblocks * c.tiles;
    const int64_t tiles = p.B * c.groups * per_bg;
    c.nsplit = key_splits(p, tiles, weights, &c.split_len);
    const int64_t items = tiles * c.nsplit;
    // Per (batch, kv head): whether its values are all finite, -1 = not known yet; split partials.
    const std::size_t nflags = static_cast<std::size_t>(p.B * p.Hkv) + 1;
    const std::size_t nparts = c.nsplit > 1 ? static_cast<std::size_t>(items * BQ) : 0;
    std::size_t nconv_k, tconv_k = 0;
    const std::size_t npack = pack_elems(c, weights);
    const std::size_t nconv = convert_elems(c, weights, npack > 0, &nconv_k);
    const std::size_t tconv = nconv ? 0 : thread_convert_elems(c, weights, npack > 0, &tconv_k);
    if constexpr (CopiedWidth<Cfg>::value > 0) {
      // No chunk converted per tile (K copied, packed or read by PairDot; V copied or not read): the
      // narrower tile. It has more readers per chunk, so the copies and the packing apply there too.
      const bool k_once = nconv_k || tconv_k || npack || c.pair_qk;
      const bool v_once = weights || nconv > nconv_k || tconv > tconv_k;
      if (k_once && v_once) return ExactRun<CopiedCfg<Cfg>, St>::run(p, weights);
    }
    Workspace ws(Workspace::need<int8_t>(nflags) + Workspace::need<T>(nparts * p.Dv) + Workspace::need<T>(nparts) +
                     Workspace::need<T>(nconv_k) + Workspace::need<T>(nconv - nconv_k) + Workspace::need<T>(npack),
                 "attention (value flags, split partials, converted K/V, packed K)");
    c.v_finite = ws.take<int8_t>(nflags);
    std::memset(c.v_finite, -1, nflags);
    c.part_o = ws.take<T>(nparts * p.Dv);
    c.part_lse = ws.take<T>(nparts);
    T* kconv = nconv_k ? ws.take<T>(nconv_k) : nullptr;
    T* vconv = nconv > nconv_k ? ws.take<T>(nconv - nconv_k) : nullptr;
    c.kconv = kconv;
    c.vconv = vconv;
    c.conv_one_head = false;
    if (vconv || tconv > tconv_k) c.prefetch = false;  // tiles read the converted values
    T* kpack = npack ? ws.take<T>(npack) : nullptr;
    c.kpack = kpack;
    const std::size_t wbytes = (work_bytes(c) + 63) / 64 * 64;
    const std::size_t tbytes = (sizeof(T) * tconv + 63) / 64 * 64;  // the thread's copy of one kv head
    const std::size_t bytes = wbytes + tbytes + (c.nsplit > 1 ? sizeof(double) * p.Dv : 0);
    auto tile_of = [&](int64_t it) {  // tile number it, last query blocks first (causal: the most keys)
      const int64_t k = per_bg - 1 - it % per_bg;
      const int64_t bg = it / per_bg;
      Tile t;
      t.b = bg / c.groups;
      t.group = bg % c.groups;
      t.hkv = t.group * c.Gp / c.G;
      t.qb = k / c.tiles;
      t.f0 = (k % c.tiles) * BQ;
      t.index = it;
      t.split = 0;
      return t;
    };
    auto short_block = [&](const Tile& t) { return t.f0 >= imin(c.qblock, p.Sq - t.qb * c.qblock) * c.Gp; };
    parallel_with_scratch("attention", items > 1, bytes, /*zero=*/true, [&](void* mem) {
      const Work w = carve(mem, c);
      if (kconv) convert_kv(p, p.k, p.D, kconv, mem);  // each ends in team_for's barrier
      if (vconv) convert_kv(p, p.v, p.Dv, vconv, mem);
      if (kpack) pack_k(p, kpack, mem);
      Ctx tc = c;  // this thread's view: its own copy of one kv head when tconv
      int64_t conv_bh = -1;  // the (b, kv head) in that copy
      T* const tk = tconv && tconv_k && mem ? reinterpret_cast<T*>(static_cast<char*>(mem) + wbytes) : nullptr;
      T* const tv = tconv > tconv_k && mem ? reinterpret_cast<T*>(static_cast<char*>(mem) + wbytes) + tconv_k : nullptr;
      if (tconv) {
        tc.kconv = tk;
        tc.vconv = tv;
        tc.conv_one_head = true;
      }
      team_for(items, mem, [&](int64_t it) {
        Tile t = tile_of(it / c.nsplit);
        t.split = it % c.nsplit;
        if (short_block(t)) return;
        if (tconv && t.b * p.Hkv + t.hkv != conv_bh) {
          conv_bh = t.b * p.Hkv + t.hkv;
          if (tk) convert_head(p, p.k, p.D, t.b, t.hkv, tk);
          if (tv) convert_head(p, p.v, p.Dv, t.b, t.hkv, tv);
        }
        if (weights)
          weights_tile(tc, w, t);
        else
          attend_tile(tc, w, t);
      });
      if (c.nsplit > 1)  // after team_for's barrier: every partial is written
        team_for(tiles, mem, [&](int64_t it) {
          const Tile t = tile_of(it);
          if (!short_block(t))
            merge_tile(c, t, reinterpret_cast<double*>(static_cast<char*>(mem) + wbytes + tbytes));
        });
    });
  }
};

/// Cfg with NQV lowered to N: fewer lanes per tile for problems with few query rows per kv head
/// (decoding), where a full-width tile would mostly compute padding. Chunks of 32 keys: the PV product
/// walks a chunk of V by columns, and 64 rows at a power-of-two row stride compete for a few L1 sets
/// (a reasoned choice, not A/B-timed alone on the shared machine).
template <class Cfg, int N>
struct NarrowCfg : Cfg {
  static constexpr int NQV = N < Cfg::NQV ? N : Cfg::NQV;
  static constexpr int BK = Cfg::BK < 32 ? Cfg::BK : 32;
};

template <class Cfg, class St>
void run_width(const AttnProblem& p, bool weights) {
  const int64_t lanes = lanes_per_block(p);
  if (lanes <= Cfg::W) return ExactRun<NarrowCfg<Cfg, 1>, St>::run(p, weights);
  if (lanes <= 2 * Cfg::W) return ExactRun<NarrowCfg<Cfg, 2>, St>::run(p, weights);
  if (lanes <= 3 * Cfg::W) return ExactRun<NarrowCfg<Cfg, 3>, St>::run(p, weights);
  return ExactRun<Cfg, St>::run(p, weights);
}

/// Runs exact attention (or its weights) for every storage dtype with the ISA's tile configurations:
/// Cfg16 for float16 / bfloat16 inputs, whose K / V chunks are converted as they are packed (a wider
/// tile spreads that conversion over more query lanes); CfgBf16 (default Cfg16) for bfloat16 alone, which
/// may bring a PairDot (see PairDotOf).
template <class Cfg32, class Cfg64, class Cfg16 = Cfg32, class CfgBf16 = Cfg16>
void exact_for_isa(const AttnProblem& p, bool weights) {
  switch (p.dtype) {
    case DType::Float32: return run_width<Cfg32, float>(p, weights);
    case DType::Float64: return run_width<Cfg64, double>(p, weights);
    case DType::Float16: return run_width<Cfg16, Half>(p, weights);
    case DType::BFloat16: return run_width<CfgBf16, BFloat>(p, weights);
    default: ATTNKIT_ASSERT(false, "exact attention: a non-floating dtype passed validation");
  }
}

}  // namespace ATTNKIT_ISA_NAMESPACE
}  // namespace cpu
}  // namespace detail
}  // namespace attnkit
