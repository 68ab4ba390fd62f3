// Emulated CUDA linear attention (see run.sh) vs the CPU backend's generic kernel on the same LinearProblem:
// outputs, final states and NaN / inf patterns.
#include <cmath>
#include <cstdio>
#include <stdexcept>
#include <vector>
#include "cpp/src/backend.h"
#include "cuda/common.cuh"
using namespace attnkit;
using namespace attnkit::detail;
// has_kernel of cuda/runtime.cu: only linear.cu's gates ask it here ("linear_attention_v2", "performer_attention_v2").
namespace attnkit { namespace detail { namespace cuda {
bool g_emu_v2 = false;
bool has_kernel(const char*) { return g_emu_v2; }
// The tensor-core causal path (linear_mma.cu) is not emulated: it takes no problem here (linear.cu falls back).
bool linear_mma_causal(const LinearProblem&, int64_t, cudaStream_t) { return false; }
bool performer_mma2_bidirectional(const LinearProblem&, cudaStream_t) { return false; }  // tensor cores: not emulated
bool performer_mma2_causal(const LinearProblem&, int64_t, cudaStream_t) { return false; }  // tensor cores: not emulated
}}}
namespace attnkit { namespace detail {
void assert_failed(const char*, const char*, const char*, int) { throw std::runtime_error("assert"); }
namespace cpu { void out_of_memory(const char*, unsigned long) { throw std::runtime_error("oom"); }
void linear_attention_generic(const LinearProblem& p); }
}}
static uint64_t rs = 7;
static double urand() { rs = rs * 6364136223846793005ULL + 1442695040888963407ULL; return ((rs >> 11) * (1.0 / 9007199254740992.0)); }
static int fails = 0;
static int g_nan = 0;  // 1: NaN in v, 2: NaN in k, 3: inf in k
static int64_t g_D = 7, g_Dv = 6;  // head dims (larger ones cross the GPU kernels' 64 x 64 x 16 tiles)
template <class T> void run(const char* name, LinearMap map, bool causal, int64_t chunk, double eps, double amp, bool lens,
                            bool state, int64_t S = 45, int64_t Sk = 45, int64_t m = 11) {
  const int64_t B = 2, Hq = 4, Hkv = 2, D = g_D, Dv = g_Dv;
  const bool proj = map == LinearMap::FavorSoftmax || map == LinearMap::FavorRelu;
  const int64_t F = proj ? m : D;
  if (causal) Sk = S;
  std::vector<T> q(B * Hq * S * D), k(B * Hkv * Sk * D), v(B * Hkv * Sk * Dv);
  for (auto& x : q) x = amp * (urand() * 2 - 1);
  for (auto& x : k) x = amp * (urand() * 2 - 1);
  for (auto& x : v) x = urand() * 2 - 1;
  if (g_nan == 1) v[(Sk * 3 / 4) * Dv + 2] = NAN;
  if (g_nan == 2) k[(Sk / 3) * D + 1] = NAN;
  if (g_nan == 3) k[(Sk / 3) * D + 1] = INFINITY;
  std::vector<float> W(F * D);
  for (auto& x : W) x = urand() * 2 - 1;
  std::vector<int64_t> len = {Sk / 2, Sk};
  std::vector<T> sin(B * Hkv * F * Dv), zin(B * Hkv * F);
  for (auto& x : sin) x = urand();
  for (auto& x : zin) x = 1 + urand();
  std::vector<T> o1(B * Hq * S * Dv, T(-7)), o2 = o1, s1(B * Hkv * F * Dv, T(-7)), s2 = s1, z1(B * Hkv * F, T(-7)), z2 = z1;
  LinearProblem p;
  p.dtype = p.state_dtype = sizeof(T) == 8 ? DType::Float64 : DType::Float32;
  p.B = B; p.Hq = Hq; p.Hkv = Hkv; p.S = S; p.Sk = Sk; p.D = D; p.Dv = Dv; p.F = F;
  auto view = [&](ViewN<4>& vw, const void* d, int64_t H, int64_t L, int64_t E) {
    vw.data = d; vw.present = true; vw.dtype = p.dtype;
    vw.stride[0] = H * L * E; vw.stride[1] = L * E; vw.stride[2] = E; vw.stride[3] = 1;
  };
  view(p.q, q.data(), Hq, S, D); view(p.k, k.data(), Hkv, Sk, D); view(p.v, v.data(), Hkv, Sk, Dv);
  p.out_stride[0] = Hq * S * Dv; p.out_stride[1] = S * Dv; p.out_stride[2] = Dv; p.out_stride[3] = 1;
  p.map = map;
  if (proj) { p.features.present = true; p.features.data = W.data(); p.features.dtype = DType::Float32; p.features.stride[0] = D; p.features.stride[1] = 1; }
  p.feature_scale = 0.6; p.causal = causal; p.normalize = map != LinearMap::Identity; p.eps = eps; p.chunk = chunk;
  if (lens) { p.key_lengths.present = true; p.key_lengths.data = len.data(); p.key_lengths.dtype = DType::Int64; p.key_lengths.stride[0] = 1; }
  if (state) {
    p.state_in.present = true; p.state_in.data = sin.data(); p.state_in.dtype = p.dtype;
    p.state_in.stride[0] = Hkv * F * Dv; p.state_in.stride[1] = F * Dv; p.state_in.stride[2] = Dv; p.state_in.stride[3] = 1;
    p.z_in.present = true; p.z_in.data = zin.data(); p.z_in.dtype = p.dtype; p.z_in.stride[0] = Hkv * F; p.z_in.stride[1] = F; p.z_in.stride[2] = 1;
    for (int i = 0; i < 4; ++i) p.state_out_stride[i] = p.state_in.stride[i];
    for (int i = 0; i < 3; ++i) p.z_out_stride[i] = p.z_in.stride[i];
  }
  LinearProblem p1 = p, p2 = p;
  p1.out = o1.data(); p2.out = o2.data();
  if (state) { p1.state_out = s1.data(); p1.z_out = z1.data(); p2.state_out = s2.data(); p2.z_out = z2.data(); }
  cuda::linear_attention(p1);
  cpu::linear_attention_generic(p2);
  auto cmp = [](const std::vector<T>& a, const std::vector<T>& b) -> double {
    double m = 0;
    for (size_t i = 0; i < a.size(); ++i) {
      if (std::isnan((double)a[i]) != std::isnan((double)b[i])) return (double)INFINITY;
      if (!std::isnan((double)a[i])) m = std::max(m, std::fabs((double)a[i] - (double)b[i]) / (1 + std::fabs((double)b[i])));
    }
    return m;
  };
  const double tol = sizeof(T) == 8 ? 1e-11 : 3e-5;
  double e = cmp(o1, o2);
  if (state) e = std::max({e, cmp(s1, s2), cmp(z1, z2)});
  const bool ok = e <= tol;
  fails += !ok;
  std::printf("%-44s %s err %.3g %s\n", name, sizeof(T) == 8 ? "f64" : "f32", e, ok ? "ok" : "FAIL");
}
template <class T> void all() {
  run<T>("elu1 causal", LinearMap::Elu1, true, 0, 1e-6, 1, true, true);
  run<T>("elu1 causal chunk7", LinearMap::Elu1, true, 7, 1e-6, 1, true, true);
  run<T>("relu bidir chunk5", LinearMap::Relu, false, 5, 1e-6, 1, true, true, 45, 31);
  run<T>("identity causal unnorm", LinearMap::Identity, true, 0, 0, 1, false, true);
  run<T>("favor softmax causal eps1e-2", LinearMap::FavorSoftmax, true, 0, 1e-2, 1, true, false);
  run<T>("favor softmax causal chunk6 amp4", LinearMap::FavorSoftmax, true, 6, 1e-3, 4, true, false);
  run<T>("favor softmax causal chunk6 amp4 state", LinearMap::FavorSoftmax, true, 6, 1e-3, 4, true, true);
  run<T>("favor softmax bidir chunk6 amp4 state", LinearMap::FavorSoftmax, false, 6, 1e-3, 4, true, true, 45, 40);
  run<T>("favor softmax bidir default chunk", LinearMap::FavorSoftmax, false, 0, 1e-3, 3, false, false, 300, 200);
  run<T>("favor softmax bidir Sk=600 lens state", LinearMap::FavorSoftmax, false, 0, 1e-3, 2, true, true, 20, 600);
  run<T>("elu1 bidir Sk=700", LinearMap::Elu1, false, 0, 1e-6, 1, false, false, 10, 700);
  run<T>("favor softmax causal default chunk S=100", LinearMap::FavorSoftmax, true, 0, 1e-3, 3, true, false, 100);
  run<T>("favor relu causal", LinearMap::FavorRelu, true, 0, 1e-6, 1, true, false);
  run<T>("favor relu bidir", LinearMap::FavorRelu, false, 0, 1e-6, 1, true, false, 20, 33);
  for (int n = 1; n <= 3; ++n) {
    g_nan = n;
    run<T>("nan/inf elu1 causal chunk7", LinearMap::Elu1, true, 7, 1e-6, 1, false, true);
    run<T>("nan/inf elu1 bidir", LinearMap::Elu1, false, 0, 1e-6, 1, false, true);
    run<T>("nan/inf favor softmax causal chunk7", LinearMap::FavorSoftmax, true, 7, 1e-3, 1, false, false);
    run<T>("nan/inf favor relu causal chunk7", LinearMap::FavorRelu, true, 7, 1e-3, 1, false, false);
    g_nan = 0;
  }
  run<T>("favor softmax causal amp30 (overflow guard)", LinearMap::FavorSoftmax, true, 8, 1e-3, 30, false, false);
  g_D = 37; g_Dv = 70;  // several tiles along D, F, Dv and the rows
  run<T>("big favor softmax bidir state", LinearMap::FavorSoftmax, false, 0, 1e-3, 1, true, true, 140, 150, 130);
  run<T>("big favor relu bidir", LinearMap::FavorRelu, false, 0, 1e-6, 1, true, false, 70, 150, 65);
  run<T>("big elu1 bidir state", LinearMap::Elu1, false, 0, 1e-6, 1, true, true, 130, 129);
  run<T>("big favor softmax causal chunk20 state", LinearMap::FavorSoftmax, true, 20, 1e-3, 1, true, true, 90, 90, 70);
  run<T>("big elu1 causal state", LinearMap::Elu1, true, 0, 1e-6, 1, true, true, 100);
  run<T>("big favor softmax causal chunk70 state", LinearMap::FavorSoftmax, true, 70, 1e-3, 2, true, true, 160, 160, 70);
  run<T>("big elu1 causal chunk40", LinearMap::Elu1, true, 40, 1e-6, 1, true, false, 100);
  // v2 boundaries: causal default chunk (64) over several chunks with a partial last one; bidirectional key
  // segments (512 keys) with a partial last one and key_lengths inside a segment.
  run<T>("big favor softmax causal default chunk S=150", LinearMap::FavorSoftmax, true, 0, 1e-3, 1, true, true, 150, 150, 70);
  run<T>("big elu1 causal default chunk S=129", LinearMap::Elu1, true, 0, 1e-6, 1, true, true, 129);
  g_D = 5; g_Dv = 3;
  run<T>("favor softmax bidir Sk=1100 lens state", LinearMap::FavorSoftmax, false, 0, 1e-3, 1, true, true, 9, 1100, 7);
  run<T>("relu bidir Sk=1025", LinearMap::Relu, false, 0, 1e-6, 1, false, false, 5, 1025);
  g_D = 7; g_Dv = 6;
}
int main() {
  for (int v2 = 0; v2 < 2; ++v2) {
    cuda::g_emu_v2 = v2 == 1;  // the v2 path of linear.cu (linear_v2.cuh), as has_kernel("..._v2") selects it
    for (unsigned th : {1u, 6u}) { g_emu_threads = th; all<double>(); all<float>(); }
  }
  std::printf("%d failures\n", fails);
  return fails != 0;
}
