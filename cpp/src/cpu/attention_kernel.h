#pragma once
// The CPU exact-attention kernel (flash-style tiling with online softmax), written once over SIMD width
// and compiled per instruction set by attention_{generic,avx2,avx512}.cpp.
//
// Layout. A work item is one (batch, kv head, tile of BQ "lanes"), a lane being one (query row, query
// head of the kv head's group): lane f of kv head g-group maps to row f / G, head hkv * G + f % G, so GQA
// query heads share every K/V load and a decode step of G heads fills G lanes. Queries sit along the SIMD
// lanes: the score tile is kept transposed, sT[key][lane], which makes
//   - QK^T a register-blocked outer product: broadcast k[j][d] (read straight from the caller's K rows,
//     no packing for float32/float64 row-contiguous inputs) times a vector of q^T[d][lanes];
//   - the online-softmax max/sum vertical vector operations (no horizontal reductions);
//   - PV another outer product, into the output kept transposed too, o^T[d][lanes]: broadcast v[j][d]
//     (V read in place too) times a vector of p[j][lanes]; the online-softmax rescale of o^T by the
//     lanes' alpha vector rides on the product's stores (Store::AccumulateScaled), no pass of its own.
// Extra memory is O(threads * (BQ * (D + Dv) + BK * (BQ + D + Dv))), never O(Sq * Sk), plus for float16 /
// bfloat16 inputs a float32 copy of K and V of at most 64 MiB (ExactRun::convert_elems) or, for longer
// heads with BK * (D + Dv) float32 values within 32 KiB, a float32 copy of one kv head per thread of at
// most 4 MiB (ExactRun::thread_convert_elems).
//
// Masks. causal / window / key_lengths give each row a key range [lo, hi) (math/masks.h), or the problem
// gives explicit per-row ranges (LSH over bucket-sorted rows). A tile visits a sorted list of key ranges:
// the union of its rows' ranges, or for block-sparse attention the runs of allowed key blocks of its
// query block (tiles never straddle a query block) clipped to that union; so the cost follows the
// allowed blocks. The range test runs only on chunks that cut through a row's range; mask / bias / ALiBi /
// softcap apply elementwise. The online softmax follows math/softmax.h.
//
// Decoding (few tiles, long keys): the keys are also split (ExactRun::key_splits, attention_exact.h, which
// also spreads the tiles over the threads), each split's partial result merged with the merge rule in split
// order; the split points depend on the problem size only.
//
// Determinism: every output element is produced by one thread in a fixed order, whatever the number of
// threads.

#include <cstdlib>
#include <cstring>
#include <type_traits>

#include "attnkit/math/masks.h"
#include "attnkit/math/softmax.h"
#include "cpu/gemm_kernel.h"
#include "check.h"
#include "cpu/kernel_common.h"
#include "cpu/simd.h"
#include "validate/attention.h"

namespace attnkit {
namespace detail {
namespace cpu {
inline namespace ATTNKIT_ISA_NAMESPACE {

/// Query heads packed into the lanes of one tile: the whole GQA group, unless a per-head block layout
/// gives the group's heads different key sets.
inline int64_t packed_heads(const AttnProblem& p) {
  const int64_t G = p.Hkv ? p.Hq / p.Hkv : 1;
  return (p.sparse && p.layout.heads > 1) ? 1 : G;
}
/// Query rows per block; tiles never straddle blocks (block-sparse: the layout's query blocks).
inline int64_t block_rows(const AttnProblem& p) { return p.sparse ? p.layout.bq : (p.Sq > 0 ? p.Sq : 1); }
/// Lanes one query block needs.
inline int64_t lanes_per_block(const AttnProblem& p) { return imin(block_rows(p), p.Sq) * packed_heads(p); }

/// Lane vectors per QK register block: Cfg::QV where a configuration's tile is wider than one register
/// block (QV divides NQV), else the whole tile (NQV).
template <class Cfg, class = void>
struct QkVectors {
  static constexpr int value = Cfg::NQV;
};
template <class Cfg>
struct QkVectors<Cfg, std::void_t<decltype(Cfg::QV)>> {
  static constexpr int value = Cfg::QV < Cfg::NQV ? Cfg::QV : Cfg::NQV;
};

/// Cfg::PairDot, when a configuration has one: QK^T for bfloat16 inputs straight from the stored pairs of
/// bfloat16 (AVX512-BF16 vdpbf16ps, attention_avx512bf16.cpp), else void. Its interface:
///   pack_q<NQV>(qT, D, qp)          queries qT [D][BQ] (float, exactly bfloat16 values) -> qp [(D+1)/2][BQ]
///                                   pairs (dims 2i, 2i+1 in the low, high half; odd D: high half 0);
///   qk<NQV>(qp, k, ldk, D, scale, jn, sT)   sT[j][lanes] = scale * sum_d k[j][d] q[d][lanes] for the jn
///                                   bfloat16 key rows k (bits, row stride ldk elements, unit element stride).
template <class Cfg, class = void>
struct PairDotOf {
  using type = void;
};
template <class Cfg>
struct PairDotOf<Cfg, std::void_t<typename Cfg::PairDot>> {
  using type = typename Cfg::PairDot;
};

/// Tile configuration: Cfg provides T (accumulator type), W (SIMD lanes), NQV (lane vectors per tile, so
/// BQ = W * NQV lanes), BK (keys per chunk), R (keys per QK register block), RL (value columns per PV
/// register block), NV (lane vectors per PV register block) and optionally QV (lane vectors per QK
/// register block, when the tile spans several).
template <class Cfg, class St>
struct ExactKernel {
  using T = typename Cfg::T;
  using S = Simd<T, Cfg::W>;
  using V = typename S::V;
  using VI = typename S::VI;
  using I = typename S::I;
  static constexpr int W = Cfg::W;
  static constexpr int NQV = Cfg::NQV;
  static constexpr int BQ = W * NQV;
  static constexpr int BK = Cfg::BK;
  static constexpr int R = Cfg::R;
  static constexpr int RL = Cfg::RL;
  static constexpr int NV = Cfg::NV;
  static constexpr int QV = QkVectors<Cfg>::value;
  static constexpr bool kSameType = std::is_same<St, T>::value;
  using PairDot = typename PairDotOf<Cfg>::type;
  /// bfloat16 QK^T by the configuration's PairDot (K read in place, never converted).
  static constexpr bool kPairDot = !std::is_void<PairDot>::value && std::is_same<St, BFloat>::value;
  /// Up to this many lanes per tile (decoding: one query row per head), QK^T is computed as dot products
  /// along D instead of outer products over the lanes, which would mostly multiply padding.
  static constexpr int kDotLanes = 4;
  /// Long rows: every kSegmentChunks chunks the running sums (o, l) move into (o2, l2) and restart from 0,
  /// so a float32 sum never adds a chunk to a total more than 512 chunks' worth larger (one running sum
  /// stalls near 2^30 keys of equal weight; here a row loses at most ~512 * 2^-24 = 3e-5 of its sums to
  /// rounding). Costs one add per accumulator every 512 chunks; nothing for shorter rows.
  static constexpr int64_t kSegmentChunks = 512;

  struct Ctx {
    const AttnProblem* p;
    int64_t G;            // query heads per kv head
    int64_t Gp;           // query heads packed into one tile's lanes (G, or 1 for per-head layouts)
    int64_t groups;       // head groups = Hq / Gp
    int64_t qblock;       // query rows per block (tiles stay inside one): Sq, or the layout's bq
    int64_t nqblocks;     // ceil(Sq / qblock)
    int64_t tiles;        // tiles per query block
    int64_t DvP;          // Dv padded to whole vectors (row stride of packed values)
    T qscale;          // applied to q.k
    T cap_in, cap_out; // softcap: s -> cap_out * tanh(s * cap_in)
    bool softcap, bias_tile, alibi;
    bool dot;          // QK^T by dot products (few lanes)
    bool k_direct, v_direct;
    bool pair_qk;      // QK^T by PairDot (kPairDot, unit-stride keys, not the dot path)
    bool prefetch;     // K/V stream through once (one tile per query block): prefetch V (prefetch_rows)
    bool weights;      // attention_weights instead of attention
    /// Per (b, kv head): whether its values are all finite, found on first need (-1: not yet, 0: no,
    /// 1: yes), so chunks with masked keys check their value rows only when a non-finite value exists.
    int8_t* v_finite;
    /// Split decoding (see ExactRun::key_splits): nsplit key ranges of split_len keys; each (tile, split) leaves
    /// its lanes' normalised partial outputs in part_o [tile][split][BQ][Dv] and their log-sum-exps in
    /// part_lse [tile][split][BQ], merged afterwards in split order.
    int64_t nsplit, split_len;
    T* part_o;
    T* part_lse;
    /// float16 / bfloat16 K and V converted to T once per call (ExactRun::convert_kv), [B][Hkv][Sk][D]
    /// and [B][Hkv][Sk][Dv], read in place by every query tile; null: each tile converts its chunks.
    const T* kconv;
    const T* vconv;
    /// kconv / vconv hold one kv head only, [Sk][D] and [Sk][Dv]: a thread's copy of the head its tiles
    /// read (ExactRun::run, heads too long for the per-call copy).
    bool conv_one_head;
    /// K copied once per call into the QK micro-kernel's A-operand order (ExactRun::pack_k; float16 / bfloat16
    /// converted to float32 on AVX2),
    /// read by every query tile; null: the tiles read K in place. kpack [B][Hkv][ceil(Sk / R)][D][R]: each
    /// block of R keys with its R rows interleaved (key rows beyond Sk 0), so a QK register block broadcasts
    /// from one sequential stream instead of R rows.
    const T* kpack;
  };

  struct Work {
    T* qT;      // [D][BQ]  queries, transposed
    T* qr;      // [kDotLanes][D] queries, row-major (dot-product path)
    uint32_t* qp;  // [(D+1)/2][BQ] query pairs (PairDot path)
    T* sT;      // [BK][BQ] scores, then probabilities
    T* bT;      // [BK][BQ] additive bias/mask tile, when needed
    T* kbuf;    // [BK][D]  packed keys (when not read in place)
    T* vbuf;    // [BK][DvP] packed values
    T* o;       // [Dv][BQ] output accumulator, transposed
    T* o2;      // [Dv][BQ] long rows: o of the finished segments (see kSegmentChunks)
    T* l2;      // [BQ]      long rows: l of the finished segments
    T* m;       // [BQ] running max
    T* l;       // [BQ] running sum
    T* alpha;   // [BQ] last rescale factor
    T* cmax;    // [BQ] chunk max per lane, from the QK product's stores (compute_chunk_scores)
    T* slope;   // [BQ] ALiBi slope
    I* lo;      // [BQ] allowed key range
    I* hi;      // [BQ]
    I* pos;     // [BQ] key position of the query (i + Sk - Sq)
    int64_t* row;   // [BQ] query row
    int64_t* head;  // [BQ] query head
    int64_t* kr;    // [2 * kMaxRanges] key ranges [start, end) the tile visits
  };

  /// One work item: lanes [f0, f0 + nl) of query block qb of head group `group` in batch b.
  struct Tile {
    int64_t b, group, hkv, qb, f0;
    int64_t index;  // tile number (split decoding: where its partial results go)
    int64_t split;  // split decoding: the tile's key split, else 0
  };

  /// Capacity of w.kr: the lanes' union (<= BQ ranges) followed by its intersection with the block
  /// runs (<= BQ + nkb ranges).
  static int64_t max_ranges(const AttnProblem& p) {
    return 2 * BQ + 2 + (p.sparse ? p.layout.nkb : 0);
  }

  static std::size_t work_bytes(const Ctx& c) {
    const AttnProblem& p = *c.p;
    std::size_t n = 0;
    n += sizeof(T) * (p.D * BQ + kDotLanes * p.D + BK * BQ * 2 + BK * p.D + BK * c.DvP + 2 * BQ * p.Dv + 8 * BQ);
    n += sizeof(I) * 3 * BQ + sizeof(int64_t) * (2 * BQ + 2 * max_ranges(p)) + 21 * 64;
    if (kPairDot) n += sizeof(uint32_t) * (p.D + 1) / 2 * BQ;
    return n;
  }

  static Work carve(void* base, const Ctx& c) {
    const AttnProblem& p = *c.p;
    char* ptr = static_cast<char*>(base);
    auto take = [&ptr](std::size_t bytes) {
      char* r = ptr;
      ptr += (bytes + 63) / 64 * 64;
      return r;
    };
    Work w;
    w.qT = reinterpret_cast<T*>(take(sizeof(T) * p.D * BQ));
    w.qr = reinterpret_cast<T*>(take(sizeof(T) * kDotLanes * p.D));
    w.qp = reinterpret_cast<uint32_t*>(take(kPairDot ? sizeof(uint32_t) * (p.D + 1) / 2 * BQ : 0));
    w.sT = reinterpret_cast<T*>(take(sizeof(T) * BK * BQ));
    w.bT = reinterpret_cast<T*>(take(sizeof(T) * BK * BQ));
    w.kbuf = reinterpret_cast<T*>(take(sizeof(T) * BK * p.D));
    w.vbuf = reinterpret_cast<T*>(take(sizeof(T) * BK * c.DvP));
    w.o = reinterpret_cast<T*>(take(sizeof(T) * BQ * p.Dv));
    w.o2 = reinterpret_cast<T*>(take(sizeof(T) * BQ * p.Dv));
    w.l2 = reinterpret_cast<T*>(take(sizeof(T) * BQ));
    w.m = reinterpret_cast<T*>(take(sizeof(T) * BQ));
    w.l = reinterpret_cast<T*>(take(sizeof(T) * BQ));
    w.alpha = reinterpret_cast<T*>(take(sizeof(T) * BQ));
    w.cmax = reinterpret_cast<T*>(take(sizeof(T) * BQ));
    w.slope = reinterpret_cast<T*>(take(sizeof(T) * BQ));
    w.lo = reinterpret_cast<I*>(take(sizeof(I) * BQ));
    w.hi = reinterpret_cast<I*>(take(sizeof(I) * BQ));
    w.pos = reinterpret_cast<I*>(take(sizeof(I) * BQ));
    w.row = reinterpret_cast<int64_t*>(take(sizeof(int64_t) * BQ));
    w.head = reinterpret_cast<int64_t*>(take(sizeof(int64_t) * BQ));
    w.kr = reinterpret_cast<int64_t*>(take(sizeof(int64_t) * 2 * max_ranges(p)));
    return w;
  }

  // ------------------------------------------------------------------------------------ micro-kernels
  using Gemm = MicroGemm<T, W>;

  /// sT[j][lanes] = scale * sum_d k[j][d] * qT[d][lanes]: keys broadcast over the query lanes. The
  /// scale multiplies the finished dot products (scaling q instead would add a rounding per q element,
  /// which doubles the score error at large logits). Store::OverwriteMax also leaves the lanes' maxima
  /// over the chunk in w.cmax (from -inf), as transform would find them, without another pass over sT.
  template <Store kStore = Store::Overwrite>
  static void qk(const Work& w, const T* kp, int64_t ldk, int64_t D, T scale, int jn) {
    Gemm::template gemm<R, QV, kStore>(jn, BQ, D, kp, ldk, 1, w.qT, BQ, w.sT, BQ, scale, w.cmax);
  }

  /// Sum of the lanes of v as a tree (depth log2 W instead of a chain of W dependent adds).
  static T tree_sum(V v) {
    T t[W];
    for (int i = 0; i < W; ++i) t[i] = v[i];
    for (int h = W / 2; h >= 1; h /= 2)
      for (int i = 0; i < h; ++i) t[i] += t[i + h];
    return t[0];
  }

  /// sT[j][l] = scale * q_l . k_j for nl <= kDotLanes lanes: vectorised along D with four independent
  /// accumulators (the FMA latency of one chain would bound it), one tree sum per score.
  static void qk_dot(const Work& w, const T* kp, int64_t ldk, int64_t D, T scale, int jn, int nl) {
    const int64_t D4 = D / (4 * W) * (4 * W), D1 = D / W * W;
    for (int j = 0; j < jn; ++j) {
      const T* kr = kp + j * ldk;
      for (int l = 0; l < nl; ++l) {
        const T* qr = w.qr + l * D;
        V a0 = V{}, a1 = V{}, a2 = V{}, a3 = V{};
        int64_t d = 0;
        for (; d < D4; d += 4 * W) {
          a0 += S::load(qr + d) * S::load(kr + d);
          a1 += S::load(qr + d + W) * S::load(kr + d + W);
          a2 += S::load(qr + d + 2 * W) * S::load(kr + d + 2 * W);
          a3 += S::load(qr + d + 3 * W) * S::load(kr + d + 3 * W);
        }
        for (; d < D1; d += W) a0 += S::load(qr + d) * S::load(kr + d);
        T acc = tree_sum((a0 + a1) + (a2 + a3));
        for (; d < D; ++d) acc += qr[d] * kr[d];
        w.sT[j * BQ + l] = acc * scale;
      }
    }
  }

  /// o^T[d][lanes] = alpha[lanes] * o^T[d][lanes] + sum_j v[j][d] * p[j][lanes]: value elements broadcast
  /// over the query lanes, the rescale folded into the stores.
  static void pv(const Work& w, const T* vp, int64_t ldv, int jn, int64_t Dv) {
    Gemm::template gemm<RL, NV, Store::AccumulateScaled>(Dv, BQ, jn, vp, 1, ldv, w.sT, BQ, w.o, BQ, T(1), w.alpha);
  }
  /// Keys of chunk j0 from Ctx::kpack for qk_packed, or null where the chunk does not start a key block.
  static const T* packed_keys(const Ctx& c, const Tile& t, int64_t j0) {
    if (!c.kpack || j0 % R != 0) return nullptr;
    const AttnProblem& p = *c.p;
    const int64_t nb = (p.Sk + R - 1) / R;
    return c.kpack + ((t.b * p.Hkv + t.hkv) * nb * R + j0) * p.D;
  }
  /// qk from Ctx::kpack (same sums in the same order as qk: bitwise the same scores).
  template <Store kStore = Store::Overwrite>
  static void qk_packed(const Work& w, const T* kp, int64_t D, T scale, int jn) {
    Gemm::template gemm<R, QV, kStore>(jn, BQ, D, kp, 1, R, w.qT, BQ, w.sT, BQ, scale, w.cmax, R * D);
  }

  /// x^T[d][lanes] *= alpha[lanes] for d < Dv.
  static void rescale(const Work& w, T* x, int64_t Dv) {
    for (int64_t d = 0; d < Dv; ++d)
      for (int v = 0; v < NQV; ++v) {
        T* e = x + d * BQ + v * W;
        S::store(e, S::load(e) * S::load(w.alpha + v * W));
      }
  }

  /// pv for a chunk that holds a non-finite value AND keys masked for some lanes: a masked key's
  /// probability is 0, but 0 * NaN = NaN, so the masked (lane, key) pairs are skipped here ("masked
  /// entries are never read"). Scalar; it only runs for such chunks.
  static void pv_masked(const Ctx& c, const Work& w, const T* vp, int64_t ldv, int64_t j0, int jn, int nl) {
    const int64_t Dv = c.p->Dv;
    rescale(w, w.o, Dv);
    for (int l = 0; l < nl; ++l) {
      T* o = w.o + l;
      for (int j = 0; j < jn; ++j) {
        const int64_t kj = j0 + j;
        if (kj < w.lo[l] || kj >= w.hi[l]) continue;
        if (c.bias_tile && w.bT[j * BQ + l] == math::neg_inf<T>()) continue;
        const T pj = w.sT[j * BQ + l];
        const T* vr = vp + j * ldv;
        for (int64_t d = 0; d < Dv; ++d) o[d * BQ] += pj * vr[d];
      }
    }
  }

  /// Whether every value of kv head (b, hkv) is finite: one pass over V per head and call, on first need
  /// (threads racing on it compute the same answer; relaxed atomics make the race well defined).
  static bool values_finite(const Ctx& c, int64_t b, int64_t hkv) {
    int8_t* f = c.v_finite + b * c.p->Hkv + hkv;
    int8_t known = __atomic_load_n(f, __ATOMIC_RELAXED);
    if (known < 0) {
      const ViewN<4>& v = c.p->v;
      const St* base = static_cast<const St*>(v.data) + b * v.stride[0] + hkv * v.stride[1];
      T acc = T(0);
      for (int64_t j = 0; j < c.p->Sk; ++j)
        for (int64_t d = 0; d < c.p->Dv; ++d) acc += static_cast<T>(to_acc(base[j * v.stride[2] + d * v.stride[3]])) * T(0);
      known = acc == T(0) ? 1 : 0;
      __atomic_store_n(f, known, __ATOMIC_RELAXED);
    }
    return known == 1;
  }

  // --------------------------------------------------------------------------------------- tile steps

  /// Valid lanes of tile t.
  static int tile_lanes(const Ctx& c, const Tile& t) {
    const int64_t block_lanes = imin(c.qblock, c.p->Sq - t.qb * c.qblock) * c.Gp;
    return static_cast<int>(imin(BQ, block_lanes - t.f0));
  }
  /// Query row i and head h of lane l of tile t.
  static void lane_row_head(const Ctx& c, const Tile& t, int l, int64_t& i, int64_t& h) {
    const int64_t f = t.f0 + l;
    i = t.qb * c.qblock + f / c.Gp;
    h = t.group * c.Gp + f % c.Gp;
  }

  /// Sets up the lanes of a tile: rows, heads, key ranges, ALiBi, packed queries. Returns the number of
  /// valid lanes; inner_lo / inner_hi receive the intersection of their key ranges (chunks inside it need
  /// no range test) and *nranges the key ranges to visit (in w.kr).
  static int setup_lanes(const Ctx& c, const Work& w, const Tile& t, int64_t& inner_lo, int64_t& inner_hi,
                         int* nranges) {
    const AttnProblem& p = *c.p;
    const int nl = tile_lanes(c, t);
    int64_t kv_len = p.Sk;
    if (p.key_lengths.present)
      kv_len = load_int(p.key_lengths.data, p.key_lengths.dtype, t.b * p.key_lengths.stride[0]);
    inner_lo = 0;
    inner_hi = p.Sk;
    for (int l = 0; l < BQ; ++l) {
      if (l < nl) {
        int64_t i, h;
        lane_row_head(c, t, l, i, h);
        w.row[l] = i;
        w.head[l] = h;
        math::KeyRange kr;
        if (p.row_lo) {
          const int64_t o = (t.b * p.Hq + h) * p.Sq + i;
          kr = {p.row_lo[o], p.row_hi[o] > p.row_lo[o] ? p.row_hi[o] : p.row_lo[o]};
        } else {
          kr = math::key_range(i, p.Sq, p.Sk, p.causal, p.window_left, p.window_right, kv_len);
        }
        w.lo[l] = static_cast<I>(kr.lo);
        w.hi[l] = static_cast<I>(kr.hi);
        w.pos[l] = static_cast<I>(i + p.Sk - p.Sq);
        inner_lo = imax(inner_lo, kr.lo);
        inner_hi = imin(inner_hi, kr.hi);
        w.slope[l] = c.alibi ? load_float<T>(p.alibi.data, p.alibi.dtype, t.b * p.alibi.stride[0] + h * p.alibi.stride[1])
                             : T(0);
      } else {
        w.row[l] = 0;
        w.head[l] = 0;
        w.lo[l] = 0;
        w.hi[l] = 0;
        w.pos[l] = 0;
        w.slope[l] = T(0);
      }
      w.m[l] = math::neg_inf<T>();
      w.l[l] = T(0);
      w.alpha[l] = T(1);
    }
    *nranges = key_ranges(c, w, t, nl);
    // Pack q (transposed for the outer-product path, row-major for the dot path).
    const ViewN<4>& q = p.q;
    for (int l = 0; l < BQ; ++l) {
      if (l >= nl) {
        if (!c.dot)
          for (int64_t d = 0; d < p.D; ++d) w.qT[d * BQ + l] = T(0);
        continue;
      }
      const St* src = static_cast<const St*>(q.data) + t.b * q.stride[0] + w.head[l] * q.stride[1] +
                      w.row[l] * q.stride[2];
      if (c.dot)
        for (int64_t d = 0; d < p.D; ++d) w.qr[l * p.D + d] = static_cast<T>(to_acc(src[d * q.stride[3]]));
      else
        for (int64_t d = 0; d < p.D; ++d) w.qT[d * BQ + l] = static_cast<T>(to_acc(src[d * q.stride[3]]));
    }
    if constexpr (kPairDot)
      if (c.pair_qk) PairDot::template pack_q<NQV>(w.qT, p.D, w.qp);
    return nl;
  }

  /// The sorted, disjoint key ranges the tile visits, in w.kr; returns their number. First the union of
  /// the lanes' ranges (insertion sort of <= BQ ranges, then merging); for block-sparse attention that
  /// union is then intersected with the runs of allowed key blocks of the tile's query block.
  static int key_ranges(const Ctx& c, const Work& w, const Tile& t, int nl) {
    int64_t* kr = w.kr;
    const int m = math::union_of_ranges(w.lo, w.hi, nl, kr);
    const AttnProblem& p = *c.p;
    if (!p.sparse || m == 0) return m;
    // Rows of one tile lie in one query block and, unless the layout is shared, one head.
    const LayoutView& L = p.layout;
    const int64_t lh = L.heads == 1 ? 0 : w.head[0];
    int64_t* dst = kr + 2 * m;
    const int out = math::intersect_block_runs(kr, m, L.col_idx, L.row_ptr[lh * L.nqb + t.qb],
                                               L.row_ptr[lh * L.nqb + t.qb + 1], L.bk, dst);
    for (int r = 0; r < 2 * out; ++r) kr[r] = dst[r];
    return out;
  }

  /// Key rows j0 .. j0+jn of kv head (b, hkv) as T rows: in place when possible, else packed.
  static const T* key_rows(const Ctx& c, const Work& w, int64_t b, int64_t hkv, int64_t j0, int jn, int64_t& ld) {
    if constexpr (!kSameType)
      if (c.kconv) return converted_rows(c, c.kconv, c.p->D, b, hkv, j0, ld);
    return operand_rows<T, St>(c.p->k, b, hkv, j0, jn, c.p->D, c.k_direct, w.kbuf, c.p->D, ld);
  }

  static const T* value_rows(const Ctx& c, const Work& w, int64_t b, int64_t hkv, int64_t j0, int jn, int64_t& ld) {
    if constexpr (!kSameType)
      if (c.vconv) return converted_rows(c, c.vconv, c.p->Dv, b, hkv, j0, ld);
    return operand_rows<T, St>(c.p->v, b, hkv, j0, jn, c.p->Dv, c.v_direct, w.vbuf, c.DvP, ld);
  }

  /// Row j0 of kv head (b, hkv) in a converted copy [B][Hkv][Sk][N] (Ctx::kconv / vconv).
  static const T* converted_rows(const Ctx& c, const T* x, int64_t N, int64_t b, int64_t hkv, int64_t j0, int64_t& ld) {
    ld = N;
    if (c.conv_one_head) return x + j0 * N;
    return x + ((b * c.p->Hkv + hkv) * c.p->Sk + j0) * N;
  }

  /// Prefetches rows [j0, j0 + n) (clipped to Sk) of kv head (b, hkv) of x into L2. Decoding streams
  /// every V row once and the PV product walks a chunk of V by columns (one cache line of every row per
  /// pass), which profiles showed stalling on its loads. (Not A/B-timed alone: the machine was shared.)
  static void prefetch_rows(const Ctx& c, const ViewN<4>& x, int64_t b, int64_t hkv, int64_t j0, int64_t n, int64_t N) {
    if (x.stride[3] != 1) return;
    n = imin(n, c.p->Sk - j0);
    const char* base = reinterpret_cast<const char*>(static_cast<const St*>(x.data) + b * x.stride[0] +
                                                     hkv * x.stride[1] + j0 * x.stride[2]);
    const int64_t ld = x.stride[2] * static_cast<int64_t>(sizeof(St)), bytes = N * static_cast<int64_t>(sizeof(St));
    for (int64_t j = 0; j < n; ++j)
      for (int64_t o = 0; o < bytes; o += 64) {
        // GCC deletes a loop of nothing but __builtin_prefetch (it has no side effect), hence the asm.
#if defined(__x86_64__) || defined(__i386__)
        asm volatile("prefetcht1 %0" : : "m"(base[j * ld + o]));
#else
        __builtin_prefetch(base + j * ld + o, 0, 2);
#endif
      }
  }

  /// Fills bT with the bias (-inf where the mask forbids).
  static void bias_tile(const Ctx& c, const Work& w, int64_t b, int nl, int64_t j0, int jn) {
    const AttnProblem& p = *c.p;
    const T ninf = math::neg_inf<T>();
    for (int l = 0; l < BQ; ++l) {
      if (l >= nl) {
        for (int j = 0; j < jn; ++j) w.bT[j * BQ + l] = T(0);
        continue;
      }
      const int64_t h = w.head[l], i = w.row[l];
      if (p.mask.present) {
        const uint8_t* mrow = static_cast<const uint8_t*>(p.mask.data) + b * p.mask.stride[0] +
                              h * p.mask.stride[1] + i * p.mask.stride[2];
        const int64_t ms = p.mask.stride[3];
        if (p.bias.present) {
          const int64_t bo = b * p.bias.stride[0] + h * p.bias.stride[1] + i * p.bias.stride[2];
          for (int j = 0; j < jn; ++j)
            w.bT[j * BQ + l] = mrow[(j0 + j) * ms]
                                   ? load_float<T>(p.bias.data, p.bias.dtype, bo + (j0 + j) * p.bias.stride[3])
                                   : ninf;
        } else {
          for (int j = 0; j < jn; ++j) w.bT[j * BQ + l] = mrow[(j0 + j) * ms] ? T(0) : ninf;
        }
      } else {
        const int64_t bo = b * p.bias.stride[0] + h * p.bias.stride[1] + i * p.bias.stride[2];
        for (int j = 0; j < jn; ++j)
          w.bT[j * BQ + l] = load_float<T>(p.bias.data, p.bias.dtype, bo + (j0 + j) * p.bias.stride[3]);
      }
    }
  }

  /// Applies softcap / bias / ALiBi / key ranges to the raw score chunk and returns its per-lane max
  /// in bmax[NQV].
  static void transform(const Ctx& c, const Work& w, int64_t j0, int jn, bool range_mask, V* bmax) {
    const V ninf = S::set1(math::neg_inf<T>());
    for (int v = 0; v < NQV; ++v) bmax[v] = ninf;
    const bool any = c.softcap || c.bias_tile || c.alibi || range_mask;
    for (int j = 0; j < jn; ++j) {
      T* s = w.sT + j * BQ;
      const VI jv = S::set1i(static_cast<I>(j0 + j));
      for (int v = 0; v < NQV; ++v) {
        V x = S::load(s + v * W);
        if (any) {
          if (c.softcap) x = S::tanh(x * c.cap_in) * c.cap_out;
          V b{};
          if (c.bias_tile) {
            b = S::load(w.bT + j * BQ + v * W);
            x += b;
          }
          if (c.alibi)
            x -= S::load(w.slope + v * W) * S::to_float(math::alibi_distance(S::loadi(w.pos + v * W), jv));
          // A -inf entry (mask False or bias -inf) masks the key even when the score or the ALiBi term
          // is NaN: masked entries are never read.
          if (c.bias_tile) x = b == ninf ? ninf : x;
          if (range_mask) {
            const VI ok = (jv >= S::loadi(w.lo + v * W)) & (jv < S::loadi(w.hi + v * W));
            x = ok ? x : ninf;
          }
          S::store(s + v * W, x);
        }
        bmax[v] = S::vmax(bmax[v], x);
      }
    }
  }

  /// The softmax's exponentials, of x = s - offset(m) in the chunk pass, m_old - m_new for the rescale and
  /// s - m for attention_weights, never positive (or -inf / NaN): exp_via_exp2 by Simd::exp2_nonpos
  /// (inlined, no upper clamp, a degree-5 polynomial for float) where Simd::exp would call Simd::exp2.
  static V sm_exp(V x) {
    return math::exp_via_exp2<V, T>(x, [](V y) { return S::exp2_nonpos(y); });
  }

  /// Online-softmax update of the chunk: probabilities in place in sT, running m / l, alpha per lane.
  static void softmax_update(const Work& w, int jn, const V* bmax) {
    for (int v = 0; v < NQV; ++v) {
      const V m_old = S::load(w.m + v * W);
      const V m_new = math::softmax_new_max(m_old, bmax[v]);
      const V off = math::softmax_offset<V, T>(m_new);
      const V alpha = sm_exp(math::softmax_rescale_arg<V, T>(m_old, m_new));
      V sum = V{};
      T* s = w.sT + v * W;
      for (int j = 0; j < jn; ++j) {
        const V pj = sm_exp(S::load(s + j * BQ) - off);
        S::store(s + j * BQ, pj);
        sum += pj;
      }
      S::store(w.l + v * W, S::load(w.l + v * W) * alpha + sum);
      S::store(w.m + v * W, m_new);
      S::store(w.alpha + v * W, alpha);
    }
  }

  /// Scores of a chunk; returns whether some key of it may be masked for some lane (range or mask/bias).
  static bool compute_chunk_scores(const Ctx& c, const Work& w, const Tile& t, int nl, int64_t j0, int jn,
                                   int64_t inner_lo, int64_t inner_hi, V* bmax) {
    int64_t ldk = 0;
    const bool range_mask = !(j0 >= inner_lo && j0 + jn <= inner_hi);
    bool done = false;
    if constexpr (kPairDot)
      if (c.pair_qk) {
        const ViewN<4>& k = c.p->k;
        const St* kr = static_cast<const St*>(k.data) + t.b * k.stride[0] + t.hkv * k.stride[1] + j0 * k.stride[2];
        PairDot::template qk<NQV>(w.qp, &kr->bits, k.stride[2], c.p->D, c.qscale, jn, w.sT);
        done = true;
      }
    if (!done) {
      const T* kpk = packed_keys(c, t, j0);
      const T* kp = kpk ? nullptr : key_rows(c, w, t.b, t.hkv, j0, jn, ldk);
      if (!c.dot && !range_mask && !c.softcap && !c.bias_tile && !c.alibi) {
        // Scores as they are (most chunks): their max comes out of the product's stores.
        const V ninf = S::set1(math::neg_inf<T>());
        for (int v = 0; v < NQV; ++v) S::store(w.cmax + v * W, ninf);
        if (kpk)
          qk_packed<Store::OverwriteMax>(w, kpk, c.p->D, c.qscale, jn);
        else
          qk<Store::OverwriteMax>(w, kp, ldk, c.p->D, c.qscale, jn);
        for (int v = 0; v < NQV; ++v) bmax[v] = S::load(w.cmax + v * W);
        return false;
      }
      if (kpk)
        qk_packed(w, kpk, c.p->D, c.qscale, jn);
      else if (c.dot)
        qk_dot(w, kp, ldk, c.p->D, c.qscale, jn, nl);
      else
        qk(w, kp, ldk, c.p->D, c.qscale, jn);
    }
    if (c.bias_tile) bias_tile(c, w, t.b, nl, j0, jn);
    transform(c, w, j0, jn, range_mask, bmax);
    return range_mask || c.bias_tile;
  }

  /// Calls f(j0, jn) for every chunk of at most BK keys of the tile's key ranges, and end_segment() after
  /// every kSegmentChunks chunks. The segments are the outer loop (each range is cut at the segment
  /// boundaries it crosses), so the chunk loop itself tests no counter.
  template <class F, class E>
  static void for_each_chunk(const Work& w, int nranges, F&& f, E&& end_segment) {
    int64_t left = kSegmentChunks;  // chunks left in the current segment
    for (int r = 0; r < nranges; ++r) {
      const int64_t end = w.kr[2 * r + 1];
      for (int64_t j0 = w.kr[2 * r]; j0 < end;) {
        const int64_t n = imin(left, (end - j0 + BK - 1) / BK);  // this range's chunks in this segment
        const int64_t stop = imin(end, j0 + n * BK);
        for (; j0 < stop; j0 += BK) f(j0, static_cast<int>(imin(BK, end - j0)));
        left -= n;
        if (left == 0) {
          end_segment();
          left = kSegmentChunks;
        }
      }
    }
  }
  template <class F>
  static void for_each_chunk(const Work& w, int nranges, F&& f) {
    for_each_chunk(w, nranges, f, [] {});
  }

  /// One work item of attention().
  static void attend_tile(const Ctx& c, const Work& w, const Tile& t) {
    const AttnProblem& p = *c.p;
    int64_t inner_lo, inner_hi;
    int nranges;
    const int nl = setup_lanes(c, w, t, inner_lo, inner_hi, &nranges);
    if (c.nsplit > 1)
      nranges = math::clip_ranges(w.kr, nranges, t.split * c.split_len, (t.split + 1) * c.split_len);
    const int64_t Dv = p.Dv;
    const std::size_t obytes = sizeof(T) * Dv * BQ;
    std::memset(w.o, 0, obytes);
    V bmax[NQV];
    bool segmented = false;  // (o2, l2) hold finished segments
    auto add_into = [&](T* dst, const T* src) {
      for (int64_t e = 0; e < Dv * BQ; e += W) S::store(dst + e, S::load(dst + e) + S::load(src + e));
    };
    for_each_chunk(w, nranges, [&](int64_t j0, int jn) {
      if (c.prefetch) {  // this chunk's values, read after the scores (keys are read row by row)
        prefetch_rows(c, p.v, t.b, t.hkv, j0, jn, p.Dv);
      }
      const bool masked = compute_chunk_scores(c, w, t, nl, j0, jn, inner_lo, inner_hi, bmax);
      softmax_update(w, jn, bmax);
      if (segmented) {
        rescale(w, w.o2, Dv);
        for (int v = 0; v < NQV; ++v) S::store(w.l2 + v * W, S::load(w.l2 + v * W) * S::load(w.alpha + v * W));
      }
      int64_t ldv;
      const T* vp = value_rows(c, w, t.b, t.hkv, j0, jn, ldv);
      if (masked && !values_finite(c, t.b, t.hkv) && !rows_finite<T, W>(vp, ldv, jn, p.Dv))
        pv_masked(c, w, vp, ldv, j0, jn, nl);
      else
        pv(w, vp, ldv, jn, Dv);
    }, [&] {
      if (!segmented) {
        std::memset(w.o2, 0, obytes);
        for (int l = 0; l < BQ; ++l) w.l2[l] = T(0);
        segmented = true;
      }
      add_into(w.o2, w.o);
      std::memset(w.o, 0, obytes);
      for (int l = 0; l < BQ; ++l) {
        w.l2[l] += w.l[l];
        w.l[l] = T(0);
      }
    });
    if (segmented) {
      add_into(w.o, w.o2);
      for (int l = 0; l < BQ; ++l) w.l[l] += w.l2[l];
    }
    // Finalise: out = o / l, lse = m + log l; empty rows give 0 and -inf, NaN stays NaN.
    if (c.nsplit > 1) {  // a partial result, merged by merge_tile
      const int64_t base = (t.index * c.nsplit + t.split) * BQ;
      for (int l = 0; l < nl; ++l) {
        const T sc = math::softmax_out_scale(w.m[l], w.l[l]);
        T* dst = c.part_o + (base + l) * Dv;
        for (int64_t d = 0; d < Dv; ++d) dst[d] = w.o[d * BQ + l] * sc;
        c.part_lse[base + l] = math::softmax_lse(w.m[l], w.l[l]);
      }
      return;
    }
    for (int l = 0; l < nl; ++l) {
      const T sc = math::softmax_out_scale(w.m[l], w.l[l]);
      St* dst = static_cast<St*>(p.out) + t.b * p.out_stride[0] + w.head[l] * p.out_stride[1] +
                w.row[l] * p.out_stride[2];
      // o^T holds the row's dims BQ apart: gathered 64 at a time for store_row_scaled's vector rounding
      T row[64];
      for (int64_t d0 = 0; d0 < Dv; d0 += 64) {
        const int64_t n = std::min<int64_t>(64, Dv - d0);
        for (int64_t d = 0; d < n; ++d) row[d] = w.o[(d0 + d) * BQ + l];
        store_row_scaled(row, sc, n, dst + d0 * p.out_stride[3], p.out_stride[3]);
      }
      if (p.lse) {
        T* lse = static_cast<T*>(p.lse) + t.b * p.lse_stride[0] + w.head[l] * p.lse_stride[1] +
                 w.row[l] * p.lse_stride[2];
        *lse = math::softmax_lse(w.m[l], w.l[l]);
      }
    }
  }

  /// One work item of attention_weights(): a statistics pass, then the normalised probabilities.
  static void weights_tile(const Ctx& c, const Work& w, const Tile& t) {
    const AttnProblem& p = *c.p;
    int64_t inner_lo, inner_hi;
    int nranges;
    const int nl = setup_lanes(c, w, t, inner_lo, inner_hi, &nranges);
    V bmax[NQV];
    for_each_chunk(w, nranges, [&](int64_t j0, int jn) {
      compute_chunk_scores(c, w, t, nl, j0, jn, inner_lo, inner_hi, bmax);
      softmax_update(w, jn, bmax);
    });
    // inv = 1/l (0 on empty rows) and off = offset(m) per lane.
    T* inv = w.alpha;
    T* off = w.l;
    for (int l = 0; l < BQ; ++l) {
      inv[l] = math::softmax_out_scale(w.m[l], w.l[l]);
      off[l] = math::softmax_offset<T, T>(w.m[l]);
    }
    // Rows are written whole: zeros first, then the probabilities over the visited keys.
    auto row_ptr = [&](int l) {
      return static_cast<St*>(p.out) + t.b * p.out_stride[0] + w.head[l] * p.out_stride[1] + w.row[l] * p.out_stride[2];
    };
    const int64_t os = p.out_stride[3];
    for (int l = 0; l < nl; ++l) {
      St* dst = row_ptr(l);
      for (int64_t j = 0; j < p.Sk; ++j) dst[j * os] = from_acc<St>(T(0));
    }
    for_each_chunk(w, nranges, [&](int64_t j0, int jn) {
      compute_chunk_scores(c, w, t, nl, j0, jn, inner_lo, inner_hi, bmax);
      const V ninf = S::set1(math::neg_inf<T>());
      for (int v = 0; v < NQV; ++v) {
        const V o = S::load(off + v * W), sc = S::load(inv + v * W);
        for (int j = 0; j < jn; ++j) {
          T* s = w.sT + j * BQ + v * W;
          const V x = S::load(s);
          S::store(s, x == ninf ? V{} : sm_exp(x - o) * sc);  // masked: exactly 0, even in a NaN row
        }
      }
      for (int l = 0; l < nl; ++l) {
        St* dst = row_ptr(l) + j0 * os;
        for (int j = 0; j < jn; ++j) dst[j * os] = from_acc<St>(w.sT[j * BQ + l]);
      }
    });
  }
};

}  // namespace ATTNKIT_ISA_NAMESPACE
}  // namespace cpu
}  // namespace detail
}  // namespace attnkit
