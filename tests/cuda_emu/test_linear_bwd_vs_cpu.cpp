// Emulated CUDA linear-attention / Performer backward (cuda/linear_backward.cu through the shim, see run.sh) vs
// the CPU backend's generic kernel (cpu/linear_bwd_kernel.h) on the same LinearBwdProblem: dq, dk, dv and the
// initial state's gradient, over causal / bidirectional, every feature map, GQA, key_lengths (0, partial, full),
// initial_state / dfinal_state, eps = 0 and > 0, several chunks (64 causal, 256 bidirectional) with partial
// last ones, and tiles crossing 64 along D, F and Dv. The workspace shim poisons scratch with NaN bytes, so a
// read of an unwritten value shows up as NaN; outputs are poisoned too (every element must be written). Blocks
// of 3 emulated threads; float32 cases run again with blocks of 1 and must give the same bits (no result may
// depend on the launch configuration). Padded keys must get exactly zero dk / dv.
#include <cmath>
#include <cstdio>
#include <cstring>
#include <stdexcept>
#include <vector>
#include "cpp/src/backend.h"
#include "cuda/common.cuh"
using namespace attnkit;
using namespace attnkit::detail;
namespace attnkit { namespace detail {
void assert_failed(const char*, const char*, const char*, int) { throw std::runtime_error("assert"); }
namespace cpu { void out_of_memory(const char*, unsigned long) { throw std::runtime_error("oom"); }
void linear_attention_backward_generic(const LinearBwdProblem& p); }
}}
static uint64_t rs = 11;
static double urand() { rs = rs * 6364136223846793005ULL + 1442695040888963407ULL; return ((rs >> 11) * (1.0 / 9007199254740992.0)); }
static int fails = 0;
static int64_t g_D = 7, g_Dv = 6, g_Hq = 4, g_Hkv = 2;

template <class T>
void run(const char* name, LinearMap map, bool causal, double eps, double amp, std::vector<int64_t> lens, bool state,
         int64_t S, int64_t Sk, int64_t m = 11) {
  const int64_t B = 2, Hq = g_Hq, Hkv = g_Hkv, D = g_D, Dv = g_Dv;
  const bool proj = map == LinearMap::FavorSoftmax || map == LinearMap::FavorRelu;
  const int64_t F = proj ? m : D;
  if (causal) Sk = S;
  std::vector<T> q(B * Hq * S * D), k(B * Hkv * Sk * D), v(B * Hkv * Sk * Dv), dout(B * Hq * S * Dv);
  for (auto& x : q) x = amp * (urand() * 2 - 1);
  for (auto& x : k) x = amp * (urand() * 2 - 1);
  for (auto& x : v) x = urand() * 2 - 1;
  for (auto& x : dout) x = urand() * 2 - 1;
  std::vector<float> W(F * D);
  for (auto& x : W) x = urand() * 2 - 1;
  for (auto& l : lens) l = l < 0 ? Sk : l;
  std::vector<T> sin(B * Hkv * F * Dv), zin(B * Hkv * F), dsf(B * Hkv * F * Dv), dzf(B * Hkv * F);
  for (auto& x : sin) x = urand();
  for (auto& x : zin) x = 1 + urand();
  for (auto& x : dsf) x = urand() * 2 - 1;
  for (auto& x : dzf) x = urand() * 2 - 1;
  const T poison = T(NAN);
  std::vector<T> dq1(q.size(), poison), dk1(k.size(), poison), dv1(v.size(), poison), ds1(sin.size(), poison),
      dz1(zin.size(), poison);
  std::vector<T> dq2 = dq1, dk2 = dk1, dv2 = dv1, ds2 = ds1, dz2 = dz1;
  LinearBwdProblem bp;
  LinearProblem& p = bp.fwd;
  p.dtype = p.state_dtype = sizeof(T) == 8 ? DType::Float64 : DType::Float32;
  p.B = B; p.Hq = Hq; p.Hkv = Hkv; p.S = S; p.Sk = Sk; p.D = D; p.Dv = Dv; p.F = F;
  auto view = [&](ViewN<4>& vw, const void* d, int64_t H, int64_t L, int64_t E) {
    vw.data = d; vw.present = true; vw.dtype = p.dtype;
    vw.stride[0] = H * L * E; vw.stride[1] = L * E; vw.stride[2] = E; vw.stride[3] = 1;
  };
  view(p.q, q.data(), Hq, S, D); view(p.k, k.data(), Hkv, Sk, D); view(p.v, v.data(), Hkv, Sk, Dv);
  view(bp.dout, dout.data(), Hq, S, Dv);
  auto strides = [](int64_t* s, int64_t H, int64_t L, int64_t E) { s[0] = H * L * E; s[1] = L * E; s[2] = E; s[3] = 1; };
  strides(bp.dq_stride, Hq, S, D); strides(bp.dk_stride, Hkv, Sk, D); strides(bp.dv_stride, Hkv, Sk, Dv);
  p.map = map;
  if (proj) { p.features.present = true; p.features.data = W.data(); p.features.dtype = DType::Float32; p.features.stride[0] = D; p.features.stride[1] = 1; }
  p.feature_scale = 0.6; p.causal = causal; p.normalize = map != LinearMap::Identity; p.eps = eps;
  if (!lens.empty()) { p.key_lengths.present = true; p.key_lengths.data = lens.data(); p.key_lengths.dtype = DType::Int64; p.key_lengths.stride[0] = 1; }
  if (state) {
    auto sview = [&](ViewN<4>& s4, ViewN<3>& z3, const void* sd, const void* zd) {
      s4.present = true; s4.data = sd; s4.dtype = p.dtype;
      s4.stride[0] = Hkv * F * Dv; s4.stride[1] = F * Dv; s4.stride[2] = Dv; s4.stride[3] = 1;
      z3.present = true; z3.data = zd; z3.dtype = p.dtype; z3.stride[0] = Hkv * F; z3.stride[1] = F; z3.stride[2] = 1;
    };
    sview(p.state_in, p.z_in, sin.data(), zin.data());
    sview(bp.dstate_out, bp.dz_out, dsf.data(), dzf.data());
    strides(bp.dstate_in_stride, Hkv, F, Dv);
    bp.dz_in_stride[0] = Hkv * F; bp.dz_in_stride[1] = F; bp.dz_in_stride[2] = 1;
  }
  LinearBwdProblem b1 = bp, b2 = bp;
  b1.dq = dq1.data(); b1.dk = dk1.data(); b1.dv = dv1.data();
  b2.dq = dq2.data(); b2.dk = dk2.data(); b2.dv = dv2.data();
  if (state) { b1.dstate_in = ds1.data(); b1.dz_in = dz1.data(); b2.dstate_in = ds2.data(); b2.dz_in = dz2.data(); }
  cuda::linear_attention_backward(b1);
  cpu::linear_attention_backward_generic(b2);
  // float32: the same bits with blocks of one thread (grid-stride loops, 256 virtual threads in passes)
  std::vector<T> dq3 = dq1, dk3 = dk1, dv3 = dv1, ds3 = ds1, dz3 = dz1;
  if (sizeof(T) == 4) {
    LinearBwdProblem b3 = bp;
    b3.dq = dq3.data(); b3.dk = dk3.data(); b3.dv = dv3.data();
    if (state) { b3.dstate_in = ds3.data(); b3.dz_in = dz3.data(); }
    const unsigned th = g_emu_threads;
    g_emu_threads = 1;
    cuda::linear_attention_backward(b3);
    g_emu_threads = th;
  }
  auto same = [](const std::vector<T>& a, const std::vector<T>& b) {
    return std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0;
  };
  const bool det = same(dq1, dq3) && same(dk1, dk3) && same(dv1, dv3) && (!state || (same(ds1, ds3) && same(dz1, dz3)));
  // max |a - b| / (max |b| + 1e-30) over the array: both kernels sum in other orders (float32: ~1e-6 of the
  // largest gradient); NaN anywhere in the emulated result (an unwritten element or scratch) fails.
  auto cmp = [](const std::vector<T>& a, const std::vector<T>& b) -> double {
    double m = 0, mb = 0;
    for (size_t i = 0; i < a.size(); ++i) {
      if (std::isnan((double)a[i]) || std::isnan((double)b[i])) return (double)INFINITY;  // inputs are finite
      m = std::max(m, std::fabs((double)a[i] - (double)b[i]));
      mb = std::max(mb, std::fabs((double)b[i]));
    }
    return m / (mb + 1e-30);
  };
  const double tol = sizeof(T) == 8 ? 1e-11 : 2e-5;
  const double e[5] = {cmp(dq1, dq2), cmp(dk1, dk2), cmp(dv1, dv2), state ? cmp(ds1, ds2) : 0, state ? cmp(dz1, dz2) : 0};
  double worst = 0;
  for (double x : e) worst = std::max(worst, x);
  // padded keys: exactly zero dk / dv
  bool pad_ok = true;
  for (int64_t b = 0; b < B && !lens.empty(); ++b)
    for (int64_t h = 0; h < Hkv; ++h)
      for (int64_t j = lens[b]; j < Sk; ++j) {
        for (int64_t d = 0; d < D; ++d) pad_ok &= dk1[((b * Hkv + h) * Sk + j) * D + d] == T(0);
        for (int64_t d = 0; d < Dv; ++d) pad_ok &= dv1[((b * Hkv + h) * Sk + j) * Dv + d] == T(0);
      }
  const bool ok = worst <= tol && pad_ok && det;
  fails += !ok;
  std::printf("%-46s %s dq %.2g dk %.2g dv %.2g ds %.2g dz %.2g %s\n", name, sizeof(T) == 8 ? "f64" : "f32", e[0], e[1],
              e[2], e[3], e[4], ok ? "ok" : !pad_ok ? "FAIL (padded keys not 0)" : !det ? "FAIL (bits depend on the block size)" : "FAIL");
}

template <class T> void all() {
  using L = std::vector<int64_t>;
  g_D = 7; g_Dv = 6; g_Hq = 4; g_Hkv = 2;
  run<T>("elu1 causal lens state S=150", LinearMap::Elu1, true, 1e-6, 1, L{77, -1}, true, 150, 150);
  run<T>("elu1 causal S=45", LinearMap::Elu1, true, 1e-6, 1, L{}, false, 45, 45);
  run<T>("relu bidir lens state Sk=300", LinearMap::Relu, false, 1e-6, 1, L{0, 271}, true, 45, 300);
  run<T>("relu causal eps0 lens0 (den 0 rows)", LinearMap::Relu, true, 0, 1, L{0, 100}, false, 130, 130);
  run<T>("identity causal unnorm state", LinearMap::Identity, true, 0, 1, L{}, true, 70, 70);
  run<T>("identity bidir unnorm state S=300", LinearMap::Identity, false, 0, 1, L{5, -1}, true, 300, 20);
  run<T>("favor softmax causal eps1e-2 lens S=150", LinearMap::FavorSoftmax, true, 1e-2, 1, L{90, -1}, false, 150, 150);
  run<T>("favor softmax causal eps1e-3 amp4 S=200", LinearMap::FavorSoftmax, true, 1e-3, 4, L{0, 131}, false, 200, 200);
  run<T>("favor softmax causal eps0", LinearMap::FavorSoftmax, true, 0, 2, L{}, false, 100, 100);
  run<T>("favor softmax bidir lens S=300 Sk=270", LinearMap::FavorSoftmax, false, 1e-3, 3, L{200, 0}, false, 300, 270);
  run<T>("favor softmax bidir eps0", LinearMap::FavorSoftmax, false, 0, 1, L{}, false, 40, 33);
  run<T>("favor relu causal lens", LinearMap::FavorRelu, true, 1e-6, 1, L{50, -1}, false, 100, 100);
  run<T>("favor relu bidir", LinearMap::FavorRelu, false, 1e-6, 1, L{20, -1}, false, 20, 33);
  g_Hq = 3; g_Hkv = 3;
  run<T>("elu1 bidir no GQA", LinearMap::Elu1, false, 1e-6, 1, L{}, true, 30, 40);
  g_Hq = 6; g_Hkv = 1;
  run<T>("favor softmax causal MQA S=70", LinearMap::FavorSoftmax, true, 1e-3, 2, L{70, 33}, false, 70, 70, 9);
  g_D = 37; g_Dv = 70; g_Hq = 4; g_Hkv = 2;  // several tiles along D, F, Dv and the rows
  run<T>("big favor softmax causal S=140 m=130", LinearMap::FavorSoftmax, true, 1e-3, 1, L{100, -1}, false, 140, 140, 130);
  run<T>("big favor softmax bidir m=70", LinearMap::FavorSoftmax, false, 1e-3, 1, L{-1, 101}, false, 90, 130, 70);
  run<T>("big elu1 causal state S=129", LinearMap::Elu1, true, 1e-6, 1, L{-1, 64}, true, 129, 129);
  run<T>("big relu bidir state", LinearMap::Relu, false, 1e-6, 1, L{}, true, 70, 80);
  run<T>("big favor relu causal", LinearMap::FavorRelu, true, 1e-6, 1, L{}, false, 66, 66, 65);
}

int main() {
  g_emu_threads = 3;  // float32 cases also run with blocks of 1 thread (the bits must not change)
  all<double>();
  all<float>();
  std::printf("%d failures\n", fails);
  return fails != 0;
}
