#pragma once
// The CPU backward pass of exact and block-sparse attention (FlashAttention-2, Dao 2023, Algorithm 2),
// written once over SIMD width and compiled per instruction set by attention_bwd_{generic,avx2,avx512}.cpp.
//
// Work items are (batch, kv head, key split): a split is a fixed run of key tiles of BK keys. For each key
// tile the item walks the query heads of the kv head's GQA group and the query chunks (BQ rows) that can
// see the tile, recomputes the scores S = scale Q K^T of the chunk x tile, P = exp(S - lse) (math/
// attention_grad.h), dP = dO V^T and dS = P (dP - delta), and accumulates
//   dV_tile += P^T dO,   dK_tile += scale dS^T Q,   dQ_chunk += scale dS K_tile,
// five products of the register-blocked micro-kernel (cpu/gemm_kernel.h), all in row-major tiles with
// the keys along the SIMD lanes. dK / dV of a tile are finished inside the item and written once. dQ rows
// receive contributions from every split: each split accumulates into its own float buffer and a last
// pass adds the splits in split order. The number of splits is a function of the problem's shape only
// (enough items to feed the cores without extra memory blow-up), so results never depend on the number
// of threads: every sum runs in a fixed order. Extra memory: delta [B, Hq, Sq] and the split buffers,
// splits * B * Hq * Sq * D values (O(S)), plus O(threads * tile) scratch.
//
// Masks: causal / window / key_lengths give each row a key range (math/masks.h) that grows with the row,
// so a chunk's rows see keys in [lo(first row), hi(last row)) and chunks outside a tile are skipped; for
// block-sparse attention chunks stay inside one query block and a tile's key columns are tested against
// the block's CSR row (chunks whose tile holds no allowed block are skipped). mask / bias / ALiBi /
// softcap apply elementwise, with the forward kernel's meaning.

#include <cstring>

#include "attnkit/math/attention_grad.h"
#include "attnkit/math/masks.h"
#include "attnkit/math/softmax.h"
#include "cpu/gemm_kernel.h"
#include "check.h"
#include "cpu/kernel_common.h"
#include "cpu/parallel.h"
#include "cpu/simd.h"
#include "validate/attention_backward.h"
#include "workspace.h"

#if defined(_OPENMP)
#include <omp.h>
#endif

namespace attnkit {
namespace detail {
namespace cpu {
inline namespace ATTNKIT_ISA_NAMESPACE {

/// Cfg provides T (accumulator type), W (SIMD lanes), BQ (query rows per chunk), BK (keys per tile, a
/// multiple of W), RB and NVB (rows and vectors of a micro-kernel register block).
template <class Cfg, class St>
struct BwdKernel {
  using T = typename Cfg::T;
  using S = Simd<T, Cfg::W>;
  using V = typename S::V;
  using VI = typename S::VI;
  using I = typename S::I;
  static constexpr int W = Cfg::W;
  static constexpr int BQ = Cfg::BQ;
  static constexpr int BK = Cfg::BK;
  static_assert(BK % W == 0, "key tiles are whole vectors");
  using Gemm = MicroGemm<T, W>;
  /// Aim for this many work items before splitting the keys of a kv head (a shape-only rule).
  static constexpr int64_t kTargetItems = 16;
  /// ... and never let the dQ split buffers exceed this many bytes.
  static constexpr int64_t kMaxSplitBytes = int64_t(1) << 29;

  struct Ctx {
    const AttnBwdProblem* bp;
    const AttnProblem* p;
    int64_t G, DP, DvP, qblock, nkt, nsplit, tiles_per_split;
    T scale, cap_in, cap_out;
    bool softcap, bias_tile, alibi;
    T* delta;   // [B, Hq, Sq]
    T* dq_acc;  // [nsplit, B, Hq, Sq, DP]
  };

  struct Work {
    T* kT;   // [D][BK]   keys of the tile, transposed (zero past the valid keys)
    T* vT;   // [Dv][BK]  values, transposed
    T* kr;   // [BK][DP]  keys, row-major
    T* qp;   // [BQ][DP]  queries of the chunk
    T* dop;  // [BQ][DvP] dout of the chunk
    T* s;    // [BQ][BK]  scores, then P
    T* t;    // [BQ][BK]  tanh(x / c) under softcap
    T* dp;   // [BQ][BK]  dP, then dS (w.r.t. the pre-softcap score)
    T* bt;   // [BQ][BK]  bias / mask tile (-inf = masked)
    T* dk;   // [BK][DP]  dK accumulator of the tile
    T* dv;   // [BK][DvP] dV accumulator
    uint8_t* colok;  // [BK] allowed key columns (block-sparse)
  };

  static std::size_t work_bytes(const Ctx& c) {
    const AttnProblem& p = *c.p;
    const std::size_t n = p.D * BK + p.Dv * BK + BK * c.DP + BQ * c.DP + BQ * c.DvP + 4 * BQ * BK + BK * c.DP +
                          BK * c.DvP;
    return sizeof(T) * n + BK + 13 * 64;
  }

  static Work carve(void* base, const Ctx& c) {
    const AttnProblem& p = *c.p;
    Carver cv(base);
    Work w;
    w.kT = cv.take<T>(p.D * BK);
    w.vT = cv.take<T>(p.Dv * BK);
    w.kr = cv.take<T>(BK * c.DP);
    w.qp = cv.take<T>(BQ * c.DP);
    w.dop = cv.take<T>(BQ * c.DvP);
    w.s = cv.take<T>(BQ * BK);
    w.t = cv.take<T>(BQ * BK);
    w.dp = cv.take<T>(BQ * BK);
    w.bt = cv.take<T>(BQ * BK);
    w.dk = cv.take<T>(BK * c.DP);
    w.dv = cv.take<T>(BK * c.DvP);
    w.colok = cv.take<uint8_t>(BK);
    return w;
  }

  static const St* row_of(const ViewN<4>& x, int64_t b, int64_t h, int64_t i) {
    return static_cast<const St*>(x.data) + b * x.stride[0] + h * x.stride[1] + i * x.stride[2];
  }

  static int64_t kv_len(const AttnProblem& p, int64_t b) {
    return p.key_lengths.present ? load_int(p.key_lengths.data, p.key_lengths.dtype, b * p.key_lengths.stride[0])
                                 : p.Sk;
  }

  /// Packs keys [j0, j0 + jn) of kv head (b, hkv) into kT / kr / vT, zero past jn.
  static void pack_tile(const Ctx& c, const Work& w, int64_t b, int64_t hkv, int64_t j0, int jn) {
    const AttnProblem& p = *c.p;
    std::memset(w.kT, 0, sizeof(T) * p.D * BK);
    std::memset(w.vT, 0, sizeof(T) * p.Dv * BK);
    std::memset(w.kr, 0, sizeof(T) * BK * c.DP);
    for (int j = 0; j < jn; ++j) {
      const St* kr = row_of(p.k, b, hkv, j0 + j);
      const St* vr = row_of(p.v, b, hkv, j0 + j);
      for (int64_t d = 0; d < p.D; ++d) {
        const T x = static_cast<T>(to_acc(kr[d * p.k.stride[3]]));
        w.kT[d * BK + j] = x;
        w.kr[j * c.DP + d] = x;
      }
      for (int64_t d = 0; d < p.Dv; ++d) w.vT[d * BK + j] = static_cast<T>(to_acc(vr[d * p.v.stride[3]]));
    }
  }

  /// dst[0, n) = src[0, n * stride) as T, then zeros up to np.
  static void copy_row(T* dst, const St* src, int64_t n, int64_t stride, int64_t np) {
    if (std::is_same<St, T>::value && stride == 1)
      std::memcpy(dst, src, sizeof(T) * n);
    else
      for (int64_t d = 0; d < n; ++d) dst[d] = static_cast<T>(to_acc(src[d * stride]));
    for (int64_t d = n; d < np; ++d) dst[d] = T(0);
  }

  /// Packs rows [i0, i0 + n) of query head (b, h): q, dout; zero padding columns.
  static void pack_chunk(const Ctx& c, const Work& w, int64_t b, int64_t h, int64_t i0, int n) {
    const AttnProblem& p = *c.p;
    const ViewN<4>& dout = c.bp->dout;
    for (int r = 0; r < n; ++r) {
      const St* qr = row_of(p.q, b, h, i0 + r);
      const St* gr = row_of(dout, b, h, i0 + r);
      T* qd = w.qp + r * c.DP;
      T* gd = w.dop + r * c.DvP;
      copy_row(qd, qr, p.D, p.q.stride[3], c.DP);
      copy_row(gd, gr, p.Dv, dout.stride[3], c.DvP);
    }
  }

  /// Fills bt[r][j] with the bias (or 0) where the element mask allows, -inf where it forbids.
  static void bias_tile(const Ctx& c, const Work& w, int64_t b, int64_t h, int64_t i0, int n, int64_t j0, int jn) {
    const AttnProblem& p = *c.p;
    const T ninf = math::neg_inf<T>();
    for (int r = 0; r < n; ++r) {
      T* dst = w.bt + r * BK;
      const int64_t i = i0 + r;
      const uint8_t* mrow = p.mask.present ? static_cast<const uint8_t*>(p.mask.data) + b * p.mask.stride[0] +
                                                 h * p.mask.stride[1] + i * p.mask.stride[2]
                                           : nullptr;
      const int64_t bo = p.bias.present ? b * p.bias.stride[0] + h * p.bias.stride[1] + i * p.bias.stride[2] : 0;
      for (int j = 0; j < jn; ++j) {
        const int64_t jj = j0 + j;
        T x = p.bias.present ? load_float<T>(p.bias.data, p.bias.dtype, bo + jj * p.bias.stride[3]) : T(0);
        if (mrow && !mrow[jj * p.mask.stride[3]]) x = ninf;
        dst[j] = x;
      }
      for (int j = jn; j < BK; ++j) dst[j] = ninf;
    }
  }

  /// Block-sparse: colok[j] = whether key j0 + j lies in an allowed block of (layout head lh, query
  /// block qb). Returns the number of allowed columns.
  static int sparse_columns(const Ctx& c, const Work& w, int64_t lh, int64_t qb, int64_t j0, int jn) {
    const LayoutView& L = c.p->layout;
    std::memset(w.colok, 0, BK);
    const int64_t beg = L.row_ptr[lh * L.nqb + qb], end = L.row_ptr[lh * L.nqb + qb + 1];
    const int64_t kb0 = j0 / L.bk, kb1 = (j0 + jn - 1) / L.bk;
    // First allowed block >= kb0 (binary search in the sorted CSR row).
    int64_t lo = beg, hi = end;
    while (lo < hi) {
      const int64_t mid = (lo + hi) / 2;
      if (L.col_idx[mid] < kb0) lo = mid + 1; else hi = mid;
    }
    int count = 0;
    for (int64_t e = lo; e < end && L.col_idx[e] <= kb1; ++e) {
      const int64_t a = imax(static_cast<int64_t>(L.col_idx[e]) * L.bk, j0) - j0;
      const int64_t z = imin((static_cast<int64_t>(L.col_idx[e]) + 1) * L.bk, j0 + jn) - j0;
      for (int64_t j = a; j < z; ++j) w.colok[j] = 1;
      count += static_cast<int>(z - a);
    }
    return count;
  }

  /// One chunk x tile: rows [i0, i0 + n) of query head h against keys [j0, j0 + jn).
  static void chunk_tile(const Ctx& c, const Work& w, int64_t b, int64_t h, int64_t i0, int n, int64_t j0, int jn,
                         int64_t klen, bool sparse_mask, T* dq_rows) {
    const AttnProblem& p = *c.p;
    const AttnBwdProblem& bp = *c.bp;
    pack_chunk(c, w, b, h, i0, n);
    // S = scale Q K^T
    Gemm::template gemm<Cfg::RB, Cfg::NVB, Store::Overwrite>(n, BK, p.D, w.qp, c.DP, 1, w.kT, BK, w.s, BK, c.scale);
    // dP = dO V^T
    Gemm::template gemm<Cfg::RB, Cfg::NVB, Store::Overwrite>(n, BK, p.Dv, w.dop, c.DvP, 1, w.vT, BK, w.dp, BK);
    if (c.bias_tile) bias_tile(c, w, b, h, i0, n, j0, jn);
    const T slope = c.alibi ? load_float<T>(p.alibi.data, p.alibi.dtype, b * p.alibi.stride[0] + h * p.alibi.stride[1])
                            : T(0);
    const V ninf = S::set1(math::neg_inf<T>());
    VI iota;
    for (int l = 0; l < W; ++l) iota[l] = static_cast<I>(l);
    for (int r = 0; r < n; ++r) {
      const int64_t i = i0 + r;
      const math::KeyRange kr = math::key_range(i, p.Sq, p.Sk, p.causal, p.window_left, p.window_right, klen);
      const VI lo = S::set1i(static_cast<I>(kr.lo)), hi = S::set1i(static_cast<I>(kr.hi));
      const VI pos = S::set1i(static_cast<I>(i + p.Sk - p.Sq));
      const T lse = *(static_cast<const T*>(p.lse) + b * p.lse_stride[0] + h * p.lse_stride[1] + i * p.lse_stride[2]);
      const V delta = S::set1(c.delta[(b * p.Hq + h) * p.Sq + i]);
      T* dbias = bp.dbias ? static_cast<T*>(bp.dbias) + b * bp.dbias_stride[0] + h * bp.dbias_stride[1] +
                                i * bp.dbias_stride[2]
                          : nullptr;
      // Rows whose key range covers the whole tile need no range test.
      const bool range_test = kr.lo > j0 || kr.hi < j0 + BK;
      for (int j = 0; j < BK; j += W) {
        T* sp = w.s + r * BK + j;
        T* dpp = w.dp + r * BK + j;
        const VI jv = S::set1i(static_cast<I>(j0 + j)) + iota;
        V x = S::load(sp), t = V{};
        if (c.softcap) {
          t = S::tanh(x * c.cap_in);
          x = t * c.cap_out;
        }
        if (c.bias_tile) x += S::load(w.bt + r * BK + j);
        if (c.alibi) x -= slope * S::to_float(math::alibi_distance(pos, jv));
        if (range_test) x = ((jv >= lo) & (jv < hi)) ? x : ninf;
        if (sparse_mask) {
          VI col;
          for (int l = 0; l < W; ++l) col[l] = w.colok[j + l] ? I(-1) : I(0);
          x = col ? x : ninf;
        }
        const V pr = S::exp(math::backward_prob_arg(x, lse));
        V ds = math::softmax_grad(pr, S::load(dpp), delta);
        if (dbias)
          for (int l = 0; l < W && j + l < jn; ++l) dbias[(j0 + j + l) * bp.dbias_stride[3]] = ds[l];
        if (c.softcap) ds *= math::softcap_grad<V, T>(t);
        S::store(sp, pr);
        S::store(dpp, ds);
      }
    }
    // dV += P^T dO, dK += scale dS^T Q, dQ += scale dS K
    Gemm::template gemm<Cfg::RB, Cfg::NVB, Store::Accumulate>(jn, c.DvP, n, w.s, 1, BK, w.dop, c.DvP, w.dv, c.DvP);
    Gemm::template gemm<Cfg::RB, Cfg::NVB, Store::Accumulate>(jn, c.DP, n, w.dp, 1, BK, w.qp, c.DP, w.dk, c.DP,
                                                              c.scale);
    Gemm::template gemm<Cfg::RB, Cfg::NVB, Store::Accumulate>(n, c.DP, jn, w.dp, BK, 1, w.kr, c.DP, dq_rows, c.DP,
                                                              c.scale);
  }

  /// Keys [j0, j0 + jn) of kv head (b, hkv) against every query row of its group that can see them.
  static void key_tile(const Ctx& c, const Work& w, int64_t b, int64_t hkv, int64_t split, int64_t j0) {
    const AttnProblem& p = *c.p;
    const AttnBwdProblem& bp = *c.bp;
    const int64_t klen = kv_len(p, b);
    const int jn = static_cast<int>(imax(0, imin(BK, imin(klen, p.Sk) - j0)));
    std::memset(w.dk, 0, sizeof(T) * BK * c.DP);
    std::memset(w.dv, 0, sizeof(T) * BK * c.DvP);
    if (jn > 0) {
      pack_tile(c, w, b, hkv, j0, jn);
      for (int64_t g = 0; g < c.G; ++g) {
        const int64_t h = hkv * c.G + g;
        T* dq_head = c.dq_acc + ((split * p.B + b) * p.Hq + h) * p.Sq * c.DP;
        for (int64_t blk0 = 0; blk0 < p.Sq; blk0 += c.qblock) {
          const int64_t blk1 = imin(p.Sq, blk0 + c.qblock);
          for (int64_t i0 = blk0; i0 < blk1; i0 += BQ) {
            const int n = static_cast<int>(imin(BQ, blk1 - i0));
            // Key ranges grow with the row: the chunk sees keys in [lo(i0), hi(i0 + n - 1)).
            const math::KeyRange first = math::key_range(i0, p.Sq, p.Sk, p.causal, p.window_left, p.window_right, klen);
            const math::KeyRange last =
                math::key_range(i0 + n - 1, p.Sq, p.Sk, p.causal, p.window_left, p.window_right, klen);
            if (last.hi <= j0 || first.lo >= j0 + jn || last.hi <= first.lo) continue;
            bool sparse_mask = false;
            if (p.sparse) {
              const int64_t lh = p.layout.heads == 1 ? 0 : h;
              const int cols = sparse_columns(c, w, lh, blk0 / c.qblock, j0, jn);
              if (cols == 0) continue;
              sparse_mask = cols < jn;
            }
            chunk_tile(c, w, b, h, i0, n, j0, jn, klen, sparse_mask, dq_head + i0 * c.DP);
          }
        }
      }
    }
    // Write the finished dK / dV rows of the tile (zeros for keys nobody sees).
    const int64_t jend = imin(p.Sk, j0 + BK);
    for (int64_t j = j0; j < jend; ++j) {
      St* dk = static_cast<St*>(bp.dk) + b * bp.dk_stride[0] + hkv * bp.dk_stride[1] + j * bp.dk_stride[2];
      St* dv = static_cast<St*>(bp.dv) + b * bp.dv_stride[0] + hkv * bp.dv_stride[1] + j * bp.dv_stride[2];
      const T* sk = w.dk + (j - j0) * c.DP;
      const T* sv = w.dv + (j - j0) * c.DvP;
      for (int64_t d = 0; d < p.D; ++d) dk[d * bp.dk_stride[3]] = from_acc<St>(sk[d]);
      for (int64_t d = 0; d < p.Dv; ++d) dv[d * bp.dv_stride[3]] = from_acc<St>(sv[d]);
    }
  }

  /// delta = rowsum(dout * out) per (b, h, i), and dbias rows zeroed (the main pass writes only the
  /// elements it visits).
  static void prologue_row(const Ctx& c, int64_t row) {
    const AttnProblem& p = *c.p;
    const AttnBwdProblem& bp = *c.bp;
    const int64_t i = row % p.Sq, bh = row / p.Sq, h = bh % p.Hq, b = bh / p.Hq;
    const St* g = row_of(bp.dout, b, h, i);
    const St* o = static_cast<const St*>(p.out) + b * p.out_stride[0] + h * p.out_stride[1] + i * p.out_stride[2];
    T acc = T(0);
    for (int64_t d = 0; d < p.Dv; ++d)
      acc += static_cast<T>(to_acc(g[d * bp.dout.stride[3]])) * static_cast<T>(to_acc(o[d * p.out_stride[3]]));
    c.delta[row] = acc;
    if (bp.dbias) {
      T* db = static_cast<T*>(bp.dbias) + b * bp.dbias_stride[0] + h * bp.dbias_stride[1] + i * bp.dbias_stride[2];
      for (int64_t j = 0; j < p.Sk; ++j) db[j * bp.dbias_stride[3]] = T(0);
    }
  }

  /// dq row = sum over splits in split order.
  static void epilogue_row(const Ctx& c, int64_t row) {
    const AttnProblem& p = *c.p;
    const AttnBwdProblem& bp = *c.bp;
    const int64_t i = row % p.Sq, bh = row / p.Sq, h = bh % p.Hq, b = bh / p.Hq;
    const int64_t rows = p.B * p.Hq * p.Sq;
    St* dq = static_cast<St*>(bp.dq) + b * bp.dq_stride[0] + h * bp.dq_stride[1] + i * bp.dq_stride[2];
    const T* src = c.dq_acc + row * c.DP;
    for (int64_t d = 0; d < p.D; ++d) {
      T acc = src[d];
      for (int64_t s = 1; s < c.nsplit; ++s) acc += src[s * rows * c.DP + d];
      dq[d * bp.dq_stride[3]] = from_acc<St>(acc);
    }
  }

  static void run(const AttnBwdProblem& bp) {
    const AttnProblem& p = bp.fwd;
    Ctx c;
    c.bp = &bp;
    c.p = &p;
    c.G = p.Hkv ? p.Hq / p.Hkv : 1;
    c.DP = (p.D + W - 1) / W * W;
    c.DvP = (p.Dv + W - 1) / W * W;
    c.qblock = p.sparse ? p.layout.bq : (p.Sq > 0 ? p.Sq : 1);
    c.nkt = (p.Sk + BK - 1) / BK;
    c.softcap = p.softcap > 0;
    c.scale = static_cast<T>(p.scale);
    c.cap_in = c.softcap ? static_cast<T>(1.0 / p.softcap) : T(0);
    c.cap_out = static_cast<T>(p.softcap);
    c.bias_tile = p.mask.present || p.bias.present;
    c.alibi = p.alibi.present;
    const int64_t rows = p.B * p.Hq * p.Sq;
    const int64_t split_bytes = rows * c.DP * static_cast<int64_t>(sizeof(T));
    const int64_t base_items = p.B * p.Hkv;
    int64_t nsplit = (kTargetItems + base_items - 1) / base_items;
    nsplit = imin(nsplit, imax(1, kMaxSplitBytes / imax(1, split_bytes)));
    nsplit = imax(1, imin(nsplit, c.nkt));
    c.tiles_per_split = c.nkt ? (c.nkt + nsplit - 1) / nsplit : 0;
    c.nsplit = c.tiles_per_split ? (c.nkt + c.tiles_per_split - 1) / c.tiles_per_split : 1;
    Workspace shared(Workspace::need<T>(rows) + Workspace::need<T>(static_cast<std::size_t>(split_bytes) / sizeof(T) * c.nsplit),
                     "attention backward (row sums and dq partials)");
    c.delta = shared.take<T>(rows);
    c.dq_acc = shared.take<T>(static_cast<std::size_t>(split_bytes) / sizeof(T) * c.nsplit);
    const int64_t items = base_items * c.nsplit;
    parallel_with_scratch("attention backward", true, work_bytes(c), /*zero=*/false, [&](void* mem) {
      team_for_static(rows, mem, [&](int64_t row) { prologue_row(c, row); });
      const Work w = carve(mem, c);
      team_for(items, mem, [&](int64_t it) {
        const int64_t split = it % c.nsplit, bh = it / c.nsplit;
        const int64_t b = bh / p.Hkv, hkv = bh % p.Hkv;
        std::memset(c.dq_acc + ((split * p.B + b) * p.Hq + hkv * c.G) * p.Sq * c.DP, 0,
                    sizeof(T) * c.G * p.Sq * c.DP);
        const int64_t t1 = imin(c.nkt, (split + 1) * c.tiles_per_split);
        for (int64_t kt = split * c.tiles_per_split; kt < t1; ++kt) key_tile(c, w, b, hkv, split, kt * BK);
      });
      team_for_static(rows, mem, [&](int64_t row) { epilogue_row(c, row); });
    });
  }
};

/// Runs the backward pass for every storage dtype with the ISA's two tile configurations.
template <class Cfg32, class Cfg64>
void run_attention_backward(const AttnBwdProblem& p) {
  switch (p.fwd.dtype) {
    case DType::Float32: return BwdKernel<Cfg32, float>::run(p);
    case DType::Float64: return BwdKernel<Cfg64, double>::run(p);
    case DType::Float16: return BwdKernel<Cfg32, Half>::run(p);
    case DType::BFloat16: return BwdKernel<Cfg32, BFloat>::run(p);
    default: ATTNKIT_ASSERT(false, "attention backward: a non-floating dtype passed validation");
  }
}

}  // namespace ATTNKIT_ISA_NAMESPACE
}  // namespace cpu
}  // namespace detail
}  // namespace attnkit
