// Kernelized linear attention and Performer (FAVOR+) on the GPU: the semantics of cpu/linear_kernel.h (its
// file comment explains the chunked causal form and Performer's stabilizer), with the meaning of every
// feature map and stabilizer step from attnkit/math/feature_maps.h.
//
// Work mapping (deterministic: every value is summed by one thread in a fixed order, nothing depends on
// the launch configuration): the features of all rows first (kernels parallel over rows; Performer's
// projection x' W^T by a shared-memory tiled product), then the states and outputs by tiled products
// parallel over (b, head, chunk, tile). Causal: chunk increments phi(K_c)^T V_c, an exclusive scan over the
// chunks in order per state element (the CPU's S = S r + increment), then per chunk the outputs from the
// state before it plus the masked intra-chunk scores (linear_causal.cuh). Bidirectional: the state over
// all allowed keys, then out = phi(Q) S (linear_bidirectional.cuh). Feature maps: linear_features.cuh.
// This file: the host side (workspace layout and launches). Workspace holds the features of all rows (and,
// causal, the state before every chunk).
// Chunk length: p.chunk, else the CPU's defaults (32 causal, 128 bidirectional), so the stabilizer's rescale
// points are the CPU's (v2: the causal default is a tuning choice, see LinearCudaTuning). Keys
// j >= key_lengths[b] are never read. The v2 path (linear_v2.cuh: row-tiled per-row kernels, segmented
// bidirectional state, vector-loading tiled products) replaces some launches below where
// has_kernel("linear_attention_v2" / "performer_attention_v2") says so; on it, Performer's products
// (projections, states, outputs) run on tensor cores (performer_mma.cuh) where
// has_kernel("performer_attention_mma") and the case is supported (performer_mma_wanted).
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>

#include "cpp/src/backend.h"
#include "cuda/linear_bidirectional.cuh"
#include "cuda/linear_causal.cuh"
#include "cuda/linear_v2.cuh"
#include "cuda/performer_mma.cuh"
#include "cuda/workspace.cuh"

namespace attnkit {
namespace detail {
namespace cuda {

// Tensor-core causal form of the elementwise maps (linear_mma.cu): false where it does not apply.
bool linear_mma_causal(const LinearProblem& p, int64_t C, cudaStream_t stream);
// Performer softmax features, bidirectional, on tensor cores without stored features (performer_mma2.cu):
// false where it does not apply.
bool performer_mma2_bidirectional(const LinearProblem& p, cudaStream_t stream);
// Performer softmax features, causal, on tensor cores without stored float32 features (performer_causal_mma.cu):
// false where it does not apply (chunk: the chunk asked for, 0 for the default).
bool performer_mma2_causal(const LinearProblem& p, int64_t chunk, cudaStream_t stream);

namespace {

constexpr int64_t kDefaultCausalChunk = 32;          // cpu/linear_kernel.h kDefaultLinearChunk
constexpr int64_t kDefaultBidirectionalChunk = 128;  // cpu/linear_kernel.h kDefaultBidirectionalChunk

/// Internal tuning of the v2 path (linear_v2.cuh), read once from the environment (for the benchmark's
/// sweep, bench/bench_gpu.py --linear-sweep; not a public interface):
///   ATTNKIT_LINEAR_CUDA_V1=1        use the v1 kernels even where the v2 ones are enabled (the baseline);
///   ATTNKIT_LINEAR_CUDA_CHUNK=n     causal chunk length when the caller gives none (v2 default 64 for the
///                                   elementwise maps, 128 for Performer: the fastest on an H100, 2026-11-26;
///                                   v1 and the CPU use 32): fewer chunks mean fewer stored states and a
///                                   shorter scan, longer ones more intra-chunk work;
///   ATTNKIT_LINEAR_CUDA_SEG=n       keys per partial state of the bidirectional form (default 512): more
///                                   segments mean more parallel blocks and more partial states to add.
/// CHUNK and SEG only change rounding (every choice is deterministic); values outside [1, 4096] / [16, 2^20]
/// are ignored. v2 is taken per call where has_kernel("linear_attention_v2") (elementwise maps) or
/// has_kernel("performer_attention_v2") (Performer) and F, D <= 2^20.
struct LinearCudaTuning {
  bool v1 = false;
  int64_t causal_chunk = 0;  // 0: 64 for the elementwise maps, 128 for Performer
  int64_t seg = 512;
};

const LinearCudaTuning& linear_cuda_tuning() {
  static const LinearCudaTuning t = [] {
    LinearCudaTuning r;
    auto get = [](const char* name, int64_t lo, int64_t hi, int64_t dflt) {
      const char* e = std::getenv(name);
      if (!e || !*e) return dflt;
      char* end = nullptr;
      const long long v = std::strtoll(e, &end, 10);
      return (end && *end == 0 && v >= lo && v <= hi) ? static_cast<int64_t>(v) : dflt;
    };
    const char* v1 = std::getenv("ATTNKIT_LINEAR_CUDA_V1");
    r.v1 = v1 && std::strcmp(v1, "1") == 0;
    r.causal_chunk = get("ATTNKIT_LINEAR_CUDA_CHUNK", 1, 4096, r.causal_chunk);
    r.seg = get("ATTNKIT_LINEAR_CUDA_SEG", 16, int64_t{1} << 20, r.seg);
    return r;
  }();
  return t;
}

template <class T>
void run_linear(const LinearProblem& p, cudaStream_t stream) {
  using A = acc_t<T>;
  LinArgs a = lin_args<A>(p);
  const LinearCudaTuning& tune = linear_cuda_tuning();
  // v2 (linear_v2.cuh) where enabled; its row kernels index a tile's F columns with int.
  const bool v2 = !tune.v1 && has_kernel(p.projected() ? "performer_attention_v2" : "linear_attention_v2") &&
                  p.F <= (int64_t{1} << 20) && p.D <= (int64_t{1} << 20);
  // Performer products on tensor cores (performer_mma.cuh), a mask of kPm* (0: none).
  const int pm = v2 ? performer_mma_wanted<T>(p) : 0;
  const int64_t v2_chunk = tune.causal_chunk > 0 ? tune.causal_chunk : (p.projected() ? 128 : 64);
  a.C = p.chunk > 0 ? p.chunk : (p.causal ? (v2 ? v2_chunk : kDefaultCausalChunk) : kDefaultBidirectionalChunk);
  a.proj = p.projected();
  a.stab = p.stabilized();
  // As the CPU: sqrt(scale) and scale / 2 (lin_args) are each rounded once to A (from double).
  const A fs = static_cast<A>(p.feature_scale);

  const int64_t F = p.F, Dv = p.Dv, C = a.C;
  const int64_t wS_elems = a.proj ? F * p.D : 0;
  // Causal attention without query heads (Hq = 0) still owes state_out: the bidirectional state kernels
  // compute it (the state after all keys does not depend on the chunk boundaries beyond rounding).
  const bool causal_items = p.causal && p.Hq > 0;
  auto grid = [](int64_t blocks) { return static_cast<unsigned>(std::min<int64_t>(blocks, int64_t{1} << 20)); };
  auto feature_grid = [&](int64_t rows) {
    return grid(a.proj ? ceil_div(rows, kTM) * ceil_div(F, kTN) : ceil_div(rows * F, kThreads));
  };
  const unsigned row_grid_k = grid(ceil_div(p.B * p.Hkv * p.Sk, kRowTile));
  const unsigned row_grid_q = grid(ceil_div(p.B * p.Hq * p.S, kRowTile));
  RowSet kr{};
  kr.x = p.k.data;
  kr.H = p.Hkv;
  kr.L = p.Sk;
  kr.keys = true;
  for (int i = 0; i < 4; ++i) kr.xs[i] = p.k.stride[i];
  RowSet qr{};
  qr.x = p.q.data;
  qr.H = p.Hq;
  qr.L = p.S;
  qr.keys = false;
  for (int i = 0; i < 4; ++i) qr.xs[i] = p.q.stride[i];
  const int64_t items = p.B * p.Hkv, krows = items * p.Sk;
  // Both forms start alike: Performer's scaled projection wS (a.wS: the workspace's first wS_elems values),
  // then the raw key features phi(K) [B Hkv Sk][F].
  auto key_features = [&](A* wS, A* phiK) {
    if (wS_elems > 0) {
      scale_features_kernel<A><<<blocks_for(wS_elems, kThreads), kThreads, 0, stream>>>(
          wS, p.features.data, p.features.dtype, p.features.stride[0], p.features.stride[1], F, p.D, fs);
      ATTNKIT_CUDA_CHECK_LAUNCH();
    }
    if (krows > 0 && F > 0) {
      if (v2 && !a.proj)
        map_rows_kernel<T><<<row_grid_k, kThreads, 0, stream>>>(a, kr, phiK);
      else if (pm & kPmFeatures)
        pm_features<T>(feature_grid(krows), stream, a, kr, phiK);
      else if (v2)
        features_kernel<T, true><<<feature_grid(krows), kThreads, 0, stream>>>(a, kr, phiK);
      else
        features_kernel<T><<<feature_grid(krows), kThreads, 0, stream>>>(a, kr, phiK);
      ATTNKIT_CUDA_CHECK_LAUNCH();
    }
  };
  // Elementwise maps, float16 / bfloat16: the tensor-core path (linear_mma.cuh) where enabled and it applies
  // (its chunks: 64 or 128). Its default chunk is 128 (H200, B=4 H=16 D=64: 40.8 / 47.2 million tokens/s at
  // S = 4096 / 16384 against 34.1 / 40.1 at 64; bench_gpu's "v2 chunk*" rows) where it fits shared memory,
  // else the v2 chunk a.C; a chunk the caller or the tuning chose is kept. That default is gated by
  // "linear_attention_mma_c128" (runtime.cu; verified on an H200: 46.9 / 50.1 million tokens/s against
  // 37.2 / 41.6 at chunk 64).
  if (causal_items && v2 && !a.proj && has_kernel("linear_attention_mma")) {
    const bool keep_chunk = p.chunk > 0 || tune.causal_chunk > 0 || !has_kernel("linear_attention_mma_c128");
    if ((!keep_chunk && linear_mma_causal(p, 128, stream)) || linear_mma_causal(p, a.C, stream)) return;
  }
  // Causal Performer softmax features, float16 / bfloat16: the tensor-core path (performer_causal_mma.cuh,
  // chunks of 64) where enabled and it applies (gated by "performer_attention_mma2_causal").
  if (causal_items && v2 && a.stab && has_kernel("performer_attention_mma2_causal") &&
      performer_mma2_causal(p, p.chunk > 0 ? p.chunk : tune.causal_chunk, stream))
    return;
  if (causal_items) {
    // Workspace (A): wS, phi(K) [B Hkv Sk][F], hK, cK (softmax), P [B Hkv][nch][F Dv + F],
    // phi(Q) [B Hq S][F], Am [B Hq S][C], den, rq.
    const int64_t qrows = p.B * p.Hq * p.S;
    const int64_t nch = ceil_div(p.S, C), E = F * Dv + F;
    const int64_t stat_elems = a.stab ? krows : 0;
    const int64_t n_all = wS_elems + krows * F + 2 * stat_elems + items * nch * E + qrows * (F + C + 2);
    Workspace ws(sizeof(A) * static_cast<std::size_t>(n_all), stream);
    A* base = ws.as<A>();
    a.wS = base;
    A* phiK = base + wS_elems;
    A* hK = phiK + krows * F;
    A* cK = hK + stat_elems;
    A* P = cK + stat_elems;
    A* phiQ = P + items * nch * E;
    A* Am = phiQ + qrows * F;
    A* den = Am + qrows * C;
    A* rq = den + qrows;
    key_features(base, phiK);
    if (a.stab && krows > 0) {
      if (v2)
        key_stats_rows_kernel<T><<<row_grid_k, kThreads, 0, stream>>>(a, kr, phiK, hK, cK);
      else
        key_stats_kernel<T><<<grid(ceil_div(krows, kThreads)), kThreads, 0, stream>>>(a, kr, phiK, hK, cK);
      ATTNKIT_CUDA_CHECK_LAUNCH();
      key_prefix_kernel<T><<<grid(items), kThreads, 0, stream>>>(a, cK);
      ATTNKIT_CUDA_CHECK_LAUNCH();
      if (F > 0) {
        if (v2)
          key_exp_rows_kernel<T><<<row_grid_k, kThreads, 0, stream>>>(a, kr, phiK, hK, cK, true);
        else
          key_exp_kernel<T><<<grid(ceil_div(krows * F, kThreads)), kThreads, 0, stream>>>(a, kr, phiK, hK, cK, true);
        ATTNKIT_CUDA_CHECK_LAUNCH();
      }
    }
    const int64_t inc_blocks = items * nch * ceil_div(F, kTM) * std::max<int64_t>(ceil_div(Dv, kTN), 1);
    if (inc_blocks > 0) {
      if (pm & kPmStates)
        pm_inc<T>(grid(inc_blocks), stream, a, phiK, cK, P, nch);
      else if (v2)
        inc_kernel<T, true><<<grid(inc_blocks), kThreads, 0, stream>>>(a, phiK, cK, P, nch);
      else
        inc_kernel<T><<<grid(inc_blocks), kThreads, 0, stream>>>(a, phiK, cK, P, nch);
      ATTNKIT_CUDA_CHECK_LAUNCH();
    }
    if (items * E > 0) {
      scan_kernel<T><<<grid(ceil_div(items * E, kThreads)), kThreads, 0, stream>>>(a, cK, P, nch);
      ATTNKIT_CUDA_CHECK_LAUNCH();
    }
    if (qrows == 0 || Dv == 0) return;
    if (F > 0) {
      if (v2 && !a.proj)
        map_rows_kernel<T><<<row_grid_q, kThreads, 0, stream>>>(a, qr, phiQ);
      else if (pm & kPmFeatures)
        pm_features<T>(feature_grid(qrows), stream, a, qr, phiQ);
      else if (v2)
        features_kernel<T, true><<<feature_grid(qrows), kThreads, 0, stream>>>(a, qr, phiQ);
      else
        features_kernel<T><<<feature_grid(qrows), kThreads, 0, stream>>>(a, qr, phiQ);
      ATTNKIT_CUDA_CHECK_LAUNCH();
      if (a.stab) {
        if (v2)
          query_rows_kernel<T><<<row_grid_q, kThreads, 0, stream>>>(a, phiQ, nullptr);
        else
          query_den_kernel<T><<<grid(ceil_div(qrows, kThreads)), kThreads, 0, stream>>>(a, phiQ, nullptr);
        ATTNKIT_CUDA_CHECK_LAUNCH();
      }
    }
    // Chunks of at most 32 rows (the default) take 32-row tiles, longer ones 64-row tiles.
    const bool small = C <= 32;
    const int64_t cm = ceil_div(C, small ? 32 : kTM), sc_blocks = p.B * p.Hq * nch * cm * cm;
    if (pm & kPmOutputs)
      pm_scores<T>(small, grid(sc_blocks), stream, a, phiQ, phiK, cK, Am, nch);
    else if (small && v2)
      scores_kernel<T, 32, true><<<grid(sc_blocks), kThreads, 0, stream>>>(a, phiQ, phiK, cK, Am, nch);
    else if (v2)
      scores_kernel<T, kTM, true><<<grid(sc_blocks), kThreads, 0, stream>>>(a, phiQ, phiK, cK, Am, nch);
    else if (small)
      scores_kernel<T, 32><<<grid(sc_blocks), kThreads, 0, stream>>>(a, phiQ, phiK, cK, Am, nch);
    else
      scores_kernel<T, kTM><<<grid(sc_blocks), kThreads, 0, stream>>>(a, phiQ, phiK, cK, Am, nch);
    ATTNKIT_CUDA_CHECK_LAUNCH();
    if (v2)
      causal_den_rows_kernel<T><<<row_grid_q, kThreads, 0, stream>>>(a, phiQ, cK, P, Am, den, rq, nch);
    else
      causal_den_kernel<T><<<grid(ceil_div(qrows, kThreads)), kThreads, 0, stream>>>(a, phiQ, cK, P, Am, den, rq, nch);
    ATTNKIT_CUDA_CHECK_LAUNCH();
    const int64_t out_blocks = p.B * p.Hq * nch * cm * ceil_div(Dv, kTN);
    if (pm & kPmOutputs)
      pm_causal_out<T>(small, grid(out_blocks), stream, a, phiQ, P, Am, den, rq, nch);
    else if (small && v2)
      causal_out_kernel<T, 32, true><<<grid(out_blocks), kThreads, 0, stream>>>(a, phiQ, P, Am, den, rq, nch);
    else if (v2)
      causal_out_kernel<T, kTM, true><<<grid(out_blocks), kThreads, 0, stream>>>(a, phiQ, P, Am, den, rq, nch);
    else if (small)
      causal_out_kernel<T, 32><<<grid(out_blocks), kThreads, 0, stream>>>(a, phiQ, P, Am, den, rq, nch);
    else
      causal_out_kernel<T, kTM><<<grid(out_blocks), kThreads, 0, stream>>>(a, phiQ, P, Am, den, rq, nch);
    ATTNKIT_CUDA_CHECK_LAUNCH();
    return;
  }
  // Bidirectional Performer softmax features, float16 / bfloat16: the fused tensor-core path
  // (performer_mma2.cuh) where enabled and it applies (gated by "performer_attention_mma2").
  if (!p.causal && v2 && a.stab && has_kernel("performer_attention_mma2") && performer_mma2_bidirectional(p, stream))
    return;
  // Bidirectional: see the section's comment. Workspace (A): wS, states, phi(K) [B Hkv Sk][F], hK, mK,
  // cs, phi(Q) [B Hq S][F], den.
  const int64_t qrows = p.B * p.Hq * (p.causal ? 0 : p.S);
  const int64_t state_elems = items * (F * Dv + F);
  const int64_t stat_elems = a.stab ? krows : 0;
  const int64_t nseg = ceil_div(p.Sk, kZSeg), zp_elems = items * nseg * F;
  // v2: partial states of key segments of seg2 keys.
  const int64_t seg2 = tune.seg, nseg2 = ceil_div(p.Sk, seg2), sp_elems = v2 ? items * nseg2 * F * Dv : 0;
  const int64_t n_all =
      wS_elems + state_elems + krows * F + 2 * stat_elems + 2 * items + qrows * F + qrows + zp_elems + sp_elems;
  Workspace ws(sizeof(A) * static_cast<std::size_t>(n_all), stream);
  A* base = ws.as<A>();
  a.wS = base;
  a.states = base + wS_elems;
  A* phiK = base + wS_elems + state_elems;
  A* hK = phiK + krows * F;
  A* mK = hK + stat_elems;
  A* cs = mK + stat_elems;
  A* phiQ = cs + 2 * items;
  A* den = phiQ + qrows * F;
  A* zp = den + qrows;
  A* sp = zp + zp_elems;
  key_features(base, phiK);
  if (a.stab) {
    if (krows > 0) {
      if (v2)
        key_stats_rows_kernel<T><<<row_grid_k, kThreads, 0, stream>>>(a, kr, phiK, hK, mK);
      else
        key_stats_kernel<T><<<grid(ceil_div(krows, kThreads)), kThreads, 0, stream>>>(a, kr, phiK, hK, mK);
      ATTNKIT_CUDA_CHECK_LAUNCH();
    }
    key_max_kernel<T><<<grid(items), kThreads, 0, stream>>>(a, mK, cs);
    ATTNKIT_CUDA_CHECK_LAUNCH();
    if (krows > 0 && F > 0) {
      if (v2)
        key_exp_rows_kernel<T><<<row_grid_k, kThreads, 0, stream>>>(a, kr, phiK, hK, cs, false);
      else
        key_exp_kernel<T><<<grid(ceil_div(krows * F, kThreads)), kThreads, 0, stream>>>(a, kr, phiK, hK, cs, false);
      ATTNKIT_CUDA_CHECK_LAUNCH();
    }
  }
  if (F > 0) {
    if (zp_elems > 0) {
      z_part_kernel<T><<<grid(ceil_div(zp_elems, kThreads)), kThreads, 0, stream>>>(a, phiK, zp, nseg);
      ATTNKIT_CUDA_CHECK_LAUNCH();
    }
    z_kernel<T><<<grid(ceil_div(items * F, kThreads)), kThreads, 0, stream>>>(a, zp, cs, nseg);
    ATTNKIT_CUDA_CHECK_LAUNCH();
    if (Dv > 0) {
      if (v2) {
        if (sp_elems > 0) {
          const unsigned sp_grid = grid(items * nseg2 * ceil_div(F, kTM) * ceil_div(Dv, kTN));
          if (pm & kPmStates)
            pm_state_part<T>(sp_grid, stream, a, phiK, sp, seg2, nseg2);
          else
            state_part_kernel<T><<<sp_grid, kThreads, 0, stream>>>(a, phiK, sp, seg2, nseg2);
          ATTNKIT_CUDA_CHECK_LAUNCH();
        }
        state_sum_kernel<T><<<grid(ceil_div(items * F * Dv, kThreads)), kThreads, 0, stream>>>(a, sp, cs, nseg2);
      } else {
        state_kernel<T><<<grid(items * ceil_div(F, kTM) * ceil_div(Dv, kTN)), kThreads, 0, stream>>>(a, phiK, cs);
      }
      ATTNKIT_CUDA_CHECK_LAUNCH();
    }
  }
  if (qrows == 0 || Dv == 0) return;
  if (F > 0) {
    if (v2 && !a.proj)
      map_rows_kernel<T><<<row_grid_q, kThreads, 0, stream>>>(a, qr, phiQ);
    else if (pm & kPmFeatures)
      pm_features<T>(feature_grid(qrows), stream, a, qr, phiQ);
    else if (v2)
      features_kernel<T, true><<<feature_grid(qrows), kThreads, 0, stream>>>(a, qr, phiQ);
    else
      features_kernel<T><<<feature_grid(qrows), kThreads, 0, stream>>>(a, qr, phiQ);
    ATTNKIT_CUDA_CHECK_LAUNCH();
  }
  if (v2)
    query_rows_kernel<T><<<row_grid_q, kThreads, 0, stream>>>(a, phiQ, den);
  else
    query_den_kernel<T><<<grid(ceil_div(qrows, kThreads)), kThreads, 0, stream>>>(a, phiQ, den);
  ATTNKIT_CUDA_CHECK_LAUNCH();
  const unsigned out_grid = grid(p.B * p.Hq * ceil_div(p.S, kTM) * ceil_div(Dv, kTN));
  if (pm & kPmOutputs)
    pm_out<T>(out_grid, stream, a, phiQ, den);
  else if (v2)
    out_kernel<T, true><<<out_grid, kThreads, 0, stream>>>(a, phiQ, den);
  else
    out_kernel<T><<<out_grid, kThreads, 0, stream>>>(a, phiQ, den);
  ATTNKIT_CUDA_CHECK_LAUNCH();
}

}  // namespace

void linear_attention(const LinearProblem& p) {
  require_device(p.device_index);
  if (p.B == 0 || p.Hkv == 0) return;
  DeviceGuard g(p.device_index);
  const cudaStream_t stream = as_stream(p.stream);
  dispatch_float(p.dtype, [&](auto tag) { run_linear<decltype(tag)>(p, stream); });
}

}  // namespace cuda
}  // namespace detail
}  // namespace attnkit
