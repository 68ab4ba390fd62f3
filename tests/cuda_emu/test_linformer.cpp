// Host emulation test of cuda/linformer.cu's projection (see run.sh); attention() is replaced by a probe.
#include <cmath>
#include <cstdio>
#include <vector>
#include "cpp/src/backend.h"
#include "cuda/common.cuh"
using namespace attnkit;
using namespace attnkit::detail;
static std::vector<double> g_k, g_v;
static int64_t g_kstride[4], g_vstride[4];
namespace attnkit { namespace detail { namespace cuda {
void attention(const AttnProblem& a) {
  const int64_t nk = a.B * a.Hkv * a.Sk * a.D, nv = a.B * a.Hkv * a.Sk * a.Dv;
  g_k.assign(nk, 0); g_v.assign(nv, 0);
  for (int64_t i = 0; i < nk; ++i) g_k[i] = load_float<double>(a.k.data, a.k.dtype, i);
  for (int64_t i = 0; i < nv; ++i) g_v[i] = load_float<double>(a.v.data, a.v.dtype, i);
  for (int i = 0; i < 4; ++i) { g_kstride[i] = a.k.stride[i]; g_vstride[i] = a.v.stride[i]; }
}
}}}
static uint64_t rs = 99;
static double nrand() { rs = rs * 6364136223846793005ULL + 1442695040888963407ULL; return ((rs >> 11) * (1.0 / 9007199254740992.0)) * 2 - 1; }
int fails = 0;
template <class T> void run(bool shared, bool lens, bool sepF) {
  const int64_t B = 2, Hq = 4, Hkv = 2, S = 5, Sk = 13, D = 3, Dv = 4, P = 6;
  std::vector<T> k(B * Hkv * Sk * D), v(B * Hkv * Sk * Dv);
  std::vector<float> E(Hkv * P * Sk), Fm(Hkv * P * Sk);
  for (auto& x : k) x = nrand();
  for (auto& x : v) x = nrand();
  for (auto& x : E) x = nrand();
  for (auto& x : Fm) x = nrand();
  std::vector<int64_t> len = {7, 13};
  LinformerProblem p;
  AttnProblem& a = p.attn;
  a.dtype = sizeof(T) == 8 ? DType::Float64 : DType::Float32;
  a.B = B; a.Hq = Hq; a.Hkv = Hkv; a.Sq = S; a.Sk = P; a.D = D; a.Dv = Dv;
  p.Sk = Sk; p.P = P;
  // k stored [B, Sk, Hkv, D]
  p.k.data = k.data(); p.k.dtype = a.dtype; p.k.present = true;
  p.k.stride[0] = Sk * Hkv * D; p.k.stride[1] = D; p.k.stride[2] = Hkv * D; p.k.stride[3] = 1;
  p.v.data = v.data(); p.v.dtype = a.dtype; p.v.present = true;
  p.v.stride[0] = Hkv * Sk * Dv; p.v.stride[1] = Sk * Dv; p.v.stride[2] = Dv; p.v.stride[3] = 1;
  p.E.data = E.data(); p.E.dtype = DType::Float32; p.E.present = true;
  p.E.stride[0] = shared ? 0 : P * Sk; p.E.stride[1] = Sk; p.E.stride[2] = 1;
  p.F = p.E;
  if (sepF) { p.F.data = Fm.data(); }
  if (lens) { p.key_lengths.present = true; p.key_lengths.data = len.data(); p.key_lengths.dtype = DType::Int64; p.key_lengths.stride[0] = 1; }
  cuda::linformer_attention(p);
  double err = 0;
  for (int64_t b = 0; b < B; ++b) for (int64_t h = 0; h < Hkv; ++h) for (int64_t r = 0; r < P; ++r) {
    const int64_t L = lens ? len[b] : Sk;
    for (int64_t d = 0; d < D; ++d) {
      double s = 0;
      for (int64_t j = 0; j < L; ++j) s += (double)E[h * p.E.stride[0] + r * Sk + j] * k[b * p.k.stride[0] + h * p.k.stride[1] + j * p.k.stride[2] + d];
      err = std::max(err, std::fabs(s - g_k[b * g_kstride[0] + h * g_kstride[1] + r * g_kstride[2] + d * g_kstride[3]]));
    }
    for (int64_t d = 0; d < Dv; ++d) {
      double s = 0;
      const float* Fp = sepF ? Fm.data() : E.data();
      for (int64_t j = 0; j < L; ++j) s += (double)Fp[h * p.E.stride[0] + r * Sk + j] * v[((b * Hkv + h) * Sk + j) * Dv + d];
      err = std::max(err, std::fabs(s - g_v[b * g_vstride[0] + h * g_vstride[1] + r * g_vstride[2] + d * g_vstride[3]]));
    }
  }
  const double tol = sizeof(T) == 8 ? 1e-12 : 1e-5;
  std::printf("linformer %s shared=%d lens=%d sepF=%d err %.3g %s\n", sizeof(T) == 8 ? "f64" : "f32", shared, lens, sepF, err, err <= tol ? "ok" : "FAIL");
  fails += err > tol;
}
int main() {
  for (unsigned th : {1u, 7u}) { g_emu_threads = th; for (int i = 0; i < 8; ++i) { run<double>(i & 1, i & 2, i & 4); run<float>(i & 1, i & 2, i & 4); } }
  std::printf("%d failures\n", fails);
  return fails != 0;
}
std::size_t attnkit::dtype_size(DType t) { return t == DType::Float64 || t == DType::Int64 ? 8 : (t == DType::Float32 || t == DType::Int32) ? 4 : t == DType::Bool ? 1 : 2; }
