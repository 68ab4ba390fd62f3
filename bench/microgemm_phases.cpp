// The exact kernel's two products alone (issue 11 item 1, session 28): per 64-key chunk of a 24-lane float32
// tile (the AVX2 configuration), QK^T from packed K (MicroGemm<float, 8>::gemm<4, 3, OverwriteMax>, as
// qk_packed) and PV into o^T (gemm<4, 3, AccumulateScaled>, as pv) from V read in place, then from V packed
// chunk-major in the PV blocks' order. The chunks cycle through `keys` keys: 64 keeps everything in L1; 4096 or
// more makes K and V stream from L3 as they do for a long head. Prints GFLOP/s by process CPU time. Not built
// by CMake; from the repository root:
//   g++ -std=c++17 -O3 -mavx2 -mfma -mf16c -Icpp/src -Icpp/include bench/microgemm_phases.cpp -o /tmp/mgp
//   /tmp/mgp 128 4096      # D, keys
// Figures: bench/results/history/exact_avx2_s28_phases.json.
#define ATTNKIT_ISA_NAMESPACE isa_avx2
#include "cpu/gemm_kernel.h"
#include <cstdio>
#include <initializer_list>
#include <ctime>
#include <cstdlib>
#include <cstring>
using namespace attnkit::detail::cpu;
using G = MicroGemm<float, 8>;
static double now() { return double(clock()) / CLOCKS_PER_SEC; }
int main(int argc, char** argv) {
  const int D = argc > 1 ? atoi(argv[1]) : 128, BK = 64, BQ = 24;
  const long nkeys = argc > 2 ? atol(argv[2]) : 64;  // keys cycled through (a multiple of 64)
  float* K = (float*)aligned_alloc(64, nkeys * D * 4);   // packed [nkeys/4][D][4]
  float* Vv = (float*)aligned_alloc(64, nkeys * D * 4);  // rows [nkeys][D]
  float* qT = (float*)aligned_alloc(64, D * BQ * 4);
  float* sT = (float*)aligned_alloc(64, BK * BQ * 4);
  float* o = (float*)aligned_alloc(64, D * BQ * 4);
  float cm[24], al[24];
  for (long i = 0; i < nkeys * D; ++i) { K[i] = 1e-3f * (i % 7); Vv[i] = 1e-3f * (i % 5); }
  for (int i = 0; i < D * BQ; ++i) { qT[i] = 1e-3f * (i % 3); o[i] = 0; }
  for (int i = 0; i < BK * BQ; ++i) sT[i] = 1e-3f;
  for (int i = 0; i < 24; ++i) al[i] = 1.f;
  const long chunks = 400000L * 64 / D;
  double flop = 2.0 * BK * BQ * D * chunks;
  double t0 = now();
  for (long i = 0; i < chunks; ++i) {
    const long j0 = (i * BK) % nkeys;
    for (int v = 0; v < 3; ++v) cm[v] = -1e30f;
    G::gemm<4, 3, Store::OverwriteMax>(BK, BQ, D, K + j0 * D, 1, 4, qT, BQ, sT, BQ, 0.1f, cm, 4 * D);
  }
  double tq = now() - t0;
  t0 = now();
  for (long i = 0; i < chunks; ++i) {
    const long j0 = (i * BK) % nkeys;
    G::gemm<4, 3, Store::AccumulateScaled>(D, BQ, BK, Vv + j0 * D, 1, D, sT, BQ, o, BQ, 1.f, al);
  }
  double tp = now() - t0;
  std::printf("D=%d keys=%ld: QK %.1f GFLOP/s, PV %.1f GFLOP/s\n", D, nkeys, flop / tq / 1e9, flop / tp / 1e9);
  // V packed chunk-major in the PV blocks' order: [nkeys/BK][D/4][BK][4]
  float* Vp = (float*)aligned_alloc(64, nkeys * D * 4);
  for (long j = 0; j < nkeys; ++j) for (int d = 0; d < D; ++d) Vp[(j / BK) * BK * D + (d / 4) * BK * 4 + (j % BK) * 4 + d % 4] = Vv[j * D + d];
  t0 = now();
  for (long i = 0; i < chunks; ++i) {
    const long j0 = (i * BK) % nkeys;
    G::gemm<4, 3, Store::AccumulateScaled>(D, BQ, BK, Vp + j0 * D, 1, 4, sT, BQ, o, BQ, 1.f, al, 4 * BK);
  }
  double tpp = now() - t0;
  std::printf("  PV from V packed chunk-major: %.1f GFLOP/s\n", flop / tpp / 1e9);
}
