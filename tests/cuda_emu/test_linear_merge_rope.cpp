// Host emulation test of cuda/{merge,rope,linear}.cu against naive float64 references (see run.sh).
#include <cmath>
#include <cstdio>
#include <limits>
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
static uint64_t rs = 12345;
static double urand() { rs = rs * 6364136223846793005ULL + 1442695040888963407ULL; return ((rs >> 11) * (1.0 / 9007199254740992.0)); }
static double nrand() { return urand() * 2 - 1; }
static int fails = 0;
static void check(const char* what, double err, double tol) {
  const bool ok = err <= tol;
  if (!ok) ++fails;
  std::printf("%-60s err %.3g tol %.3g %s\n", what, err, tol, ok ? "ok" : "FAIL");
}
template <class T> static double diff(const std::vector<T>& a, const std::vector<double>& b) {
  double m = 0;
  for (size_t i = 0; i < b.size(); ++i) {
    const double x = a[i], y = b[i];
    if (std::isnan(x) != std::isnan(y)) return INFINITY;
    if (std::isinf(y) || std::isinf(x)) { if (x != y) return INFINITY; continue; }
    m = std::max(m, std::fabs(x - y) / (1 + std::fabs(y)));
  }
  return m;
}
template <class T> static DType dt() { return sizeof(T) == 8 ? DType::Float64 : DType::Float32; }

// ------------------------------------------------------------------------------------------------ merge
template <class T> void test_merge(int P, int64_t Dv) {
  const int64_t sh[3] = {2, 3, 5};
  const int64_t rows = 30;
  std::vector<std::vector<T>> outs(P);
  std::vector<std::vector<T>> lses(P);
  std::vector<TensorRef> to(P), tl(P);
  for (int p = 0; p < P; ++p) {
    outs[p].resize(rows * Dv);
    lses[p].resize(rows);
    for (auto& x : outs[p]) x = nrand();
    for (int64_t r = 0; r < rows; ++r) lses[p][r] = (r == 7 || urand() < 0.2) ? -INFINITY : 3 * nrand();
    // part 1 row 3: NaN output with -inf lse must not leak
    if (p == 1) { lses[p][3] = -INFINITY; for (int64_t d = 0; d < Dv; ++d) outs[p][3 * Dv + d] = NAN; }
    to[p].data = outs[p].data(); to[p].dtype = dt<T>(); to[p].ndim = 4;
    tl[p].data = lses[p].data(); tl[p].dtype = dt<T>(); tl[p].ndim = 3;
    // outs laid out [2,3,5,Dv] contiguous; lse [2,3,5] contiguous
    to[p].strides[3] = 1; to[p].strides[2] = Dv; to[p].strides[1] = 5 * Dv; to[p].strides[0] = 15 * Dv;
    tl[p].strides[2] = 1; tl[p].strides[1] = 5; tl[p].strides[0] = 15;
  }
  std::vector<T> out(rows * Dv, T(-777)), lse(rows, T(-777));
  MergeProblem m;
  m.dtype = dt<T>(); m.lse_dtype = dt<T>(); m.nd = 3;
  m.shape[0] = 2; m.shape[1] = 3; m.shape[2] = 5; m.shape[3] = Dv;
  m.rows = rows; m.Dv = Dv; m.parts = P; m.outs = to.data(); m.lses = tl.data();
  // out transposed: [Dv] fastest dim has stride rows, rows contiguous
  m.out.data = out.data(); m.out.dtype = dt<T>(); m.out.ndim = 4;
  m.out.strides[3] = rows; m.out.strides[2] = 1; m.out.strides[1] = 5; m.out.strides[0] = 15;
  m.lse.data = lse.data(); m.lse.dtype = dt<T>(); m.lse.ndim = 3;
  m.lse.strides[2] = 1; m.lse.strides[1] = 5; m.lse.strides[0] = 15;
  (void)sh;
  cuda::merge_attention(m);
  std::vector<double> ro(rows * Dv), rl(rows);
  std::vector<T> got(rows * Dv);
  for (int64_t r = 0; r < rows; ++r) {
    double mx = -INFINITY;
    for (int p = 0; p < P; ++p) mx = std::max(mx, (double)lses[p][r]);
    double s = 0;
    for (int p = 0; p < P; ++p) if (lses[p][r] != -INFINITY) s += std::exp(lses[p][r] - mx);
    rl[r] = mx == -INFINITY ? -INFINITY : mx + std::log(s);
    for (int64_t d = 0; d < Dv; ++d) {
      double o = 0;
      for (int p = 0; p < P; ++p) if (lses[p][r] != -INFINITY) o += std::exp(lses[p][r] - rl[r]) * outs[p][r * Dv + d];
      ro[r * Dv + d] = o;
      got[r * Dv + d] = out[d * rows + r];
    }
  }
  char buf[128];
  std::snprintf(buf, sizeof buf, "merge %s P=%d Dv=%lld out", sizeof(T) == 8 ? "f64" : "f32", P, (long long)Dv);
  check(buf, diff(got, ro), sizeof(T) == 8 ? 1e-12 : 1e-5);
  std::snprintf(buf, sizeof buf, "merge %s P=%d Dv=%lld lse", sizeof(T) == 8 ? "f64" : "f32", P, (long long)Dv);
  check(buf, diff(lse, rl), sizeof(T) == 8 ? 1e-12 : 1e-5);
}

// ------------------------------------------------------------------------------------------------- rope
template <class T> void test_rope(bool inter, bool inplace, bool pos, int64_t D = 10, int64_t r = 6) {
  const int64_t B = 2, H = 3, S = 5;
  std::vector<T> x(B * H * S * D), out(B * H * S * D, T(-777));
  for (auto& e : x) e = nrand();
  std::vector<int64_t> ps(B * S);
  for (auto& p : ps) p = (int64_t)(urand() * 1000);
  const std::vector<T> x0 = x;
  RopeProblem p;
  p.dtype = dt<T>(); p.B = B; p.H = H; p.S = S; p.D = D; p.rotary_dim = r;
  p.x.data = x.data(); p.x.dtype = dt<T>(); p.x.present = true;
  // x contiguous [B,H,S,D]
  p.x.stride[0] = H * S * D; p.x.stride[1] = S * D; p.x.stride[2] = D; p.x.stride[3] = 1;
  T* o = inplace ? x.data() : out.data();
  p.out = o;
  for (int i = 0; i < 4; ++i) p.out_stride[i] = p.x.stride[i];
  if (pos) { p.positions.present = true; p.positions.data = ps.data(); p.positions.dtype = DType::Int64; p.positions.stride[0] = S; p.positions.stride[1] = 1; }
  p.base = 500.0; p.interleaved = inter;
  cuda::rope(p);
  std::vector<double> ref(B * H * S * D);
  std::vector<T> got(o, o + B * H * S * D);
  for (int64_t b = 0; b < B; ++b) for (int64_t h = 0; h < H; ++h) for (int64_t s = 0; s < S; ++s) {
    const T* xr = &x0[((b * H + h) * S + s) * D];
    double* rr = &ref[((b * H + h) * S + s) * D];
    for (int64_t d = 0; d < D; ++d) rr[d] = xr[d];
    const double ppos = pos ? ps[b * S + s] : s;
    for (int64_t i = 0; i < r / 2; ++i) {
      const double th = ppos * std::pow(500.0, -2.0 * i / r);
      const int64_t a = inter ? 2 * i : i, c = inter ? 2 * i + 1 : i + r / 2;
      rr[a] = xr[a] * std::cos(th) - xr[c] * std::sin(th);
      rr[c] = xr[c] * std::cos(th) + xr[a] * std::sin(th);
    }
  }
  char buf[128];
  std::snprintf(buf, sizeof buf, "rope %s inter=%d inplace=%d pos=%d D=%lld r=%lld", sizeof(T) == 8 ? "f64" : "f32", inter, inplace,
                pos, (long long)D, (long long)r);
  check(buf, diff(got, ref), sizeof(T) == 8 ? 1e-12 : 1e-5);
}

// ----------------------------------------------------------------------------------------------- linear
struct LinCase {
  int64_t B = 2, Hq = 4, Hkv = 2, S = 37, Sk = 37, D = 6, Dv = 5, m = 0;
  LinearMap map = LinearMap::Elu1;
  bool causal = true, normalize = true, lens = false, state_in = false, state_out = false;
  double eps = 1e-6, fscale = 0.7;
  int64_t chunk = 0;
};
template <class T> struct LinData {
  std::vector<T> q, k, v, out;
  std::vector<double> W;
  std::vector<int32_t> len;
  std::vector<T> s_in, z_in, s_out, z_out;  // states in T = acc for f32/f64
};
static double phi_el(LinearMap m, double x) {
  if (m == LinearMap::Elu1) return x > 0 ? x + 1 : std::exp(x);
  if (m == LinearMap::Relu) return x < 0 ? 0 : x;
  return x;
}
template <class T> void run_linear_case(const LinCase& c, const char* name, int64_t q_layout_perm) {
  const int64_t F = (c.map == LinearMap::FavorSoftmax || c.map == LinearMap::FavorRelu) ? c.m : c.D;
  LinData<T> d;
  d.q.resize(c.B * c.Hq * c.S * c.D); d.k.resize(c.B * c.Hkv * c.Sk * c.D); d.v.resize(c.B * c.Hkv * c.Sk * c.Dv);
  d.out.assign(c.B * c.Hq * c.S * c.Dv, T(-777));
  for (auto& e : d.q) e = nrand();
  for (auto& e : d.k) e = nrand();
  for (auto& e : d.v) e = nrand();
  d.W.resize(F * c.D); for (auto& e : d.W) e = nrand() * 1.5;
  d.len = {int32_t(c.Sk * 2 / 3), int32_t(c.Sk)};
  if (c.B > 2) d.len.resize(c.B, 0);
  const int64_t G = c.Hq / c.Hkv;
  if (c.state_in) { d.s_in.resize(c.B * c.Hkv * F * c.Dv); d.z_in.resize(c.B * c.Hkv * F); for (auto& e : d.s_in) e = nrand(); for (auto& e : d.z_in) e = 1 + urand(); }
  if (c.state_out) { d.s_out.assign(c.B * c.Hkv * F * c.Dv, T(-777)); d.z_out.assign(c.B * c.Hkv * F, T(-777)); }
  LinearProblem p;
  p.dtype = dt<T>(); p.state_dtype = dt<T>();
  p.B = c.B; p.Hq = c.Hq; p.Hkv = c.Hkv; p.S = c.S; p.Sk = c.Sk; p.D = c.D; p.Dv = c.Dv; p.F = F;
  // q stored as [B, S, Hq, D] when q_layout_perm (non-contiguous view)
  p.q.data = d.q.data(); p.q.present = true; p.q.dtype = dt<T>();
  if (q_layout_perm) { p.q.stride[0] = c.S * c.Hq * c.D; p.q.stride[1] = c.D; p.q.stride[2] = c.Hq * c.D; p.q.stride[3] = 1; }
  else { p.q.stride[0] = c.Hq * c.S * c.D; p.q.stride[1] = c.S * c.D; p.q.stride[2] = c.D; p.q.stride[3] = 1; }
  auto qat = [&](int64_t b, int64_t h, int64_t t, int64_t e) { return (double)d.q[b * p.q.stride[0] + h * p.q.stride[1] + t * p.q.stride[2] + e]; };
  p.k.data = d.k.data(); p.k.present = true; p.k.dtype = dt<T>();
  p.k.stride[0] = c.Hkv * c.Sk * c.D; p.k.stride[1] = c.Sk * c.D; p.k.stride[2] = c.D; p.k.stride[3] = 1;
  p.v.data = d.v.data(); p.v.present = true; p.v.dtype = dt<T>();
  p.v.stride[0] = c.Hkv * c.Sk * c.Dv; p.v.stride[1] = c.Sk * c.Dv; p.v.stride[2] = c.Dv; p.v.stride[3] = 1;
  p.out = d.out.data();
  // out: [B, Hq, S, Dv] with the Dv dim strided by S (transposed last two dims)
  p.out_stride[0] = c.Hq * c.S * c.Dv; p.out_stride[1] = c.S * c.Dv; p.out_stride[2] = 1; p.out_stride[3] = c.S;
  p.map = c.map;
  p.features.present = F > 0 && c.m > 0; p.features.data = d.W.data(); p.features.dtype = DType::Float64;
  p.features.stride[0] = c.D; p.features.stride[1] = 1;
  p.feature_scale = c.fscale; p.causal = c.causal; p.normalize = c.normalize; p.eps = c.eps; p.chunk = c.chunk;
  if (c.lens) { p.key_lengths.present = true; p.key_lengths.data = d.len.data(); p.key_lengths.dtype = DType::Int32; p.key_lengths.stride[0] = 1; }
  if (c.state_in) {
    p.state_in.present = true; p.state_in.data = d.s_in.data(); p.state_in.dtype = dt<T>();
    p.state_in.stride[0] = c.Hkv * F * c.Dv; p.state_in.stride[1] = F * c.Dv; p.state_in.stride[2] = c.Dv; p.state_in.stride[3] = 1;
    p.z_in.present = true; p.z_in.data = d.z_in.data(); p.z_in.dtype = dt<T>();
    p.z_in.stride[0] = c.Hkv * F; p.z_in.stride[1] = F; p.z_in.stride[2] = 1;
  }
  if (c.state_out) {
    p.state_out = d.s_out.data(); p.state_out_stride[0] = c.Hkv * F * c.Dv; p.state_out_stride[1] = F * c.Dv; p.state_out_stride[2] = c.Dv; p.state_out_stride[3] = 1;
    p.z_out = d.z_out.data(); p.z_out_stride[0] = c.Hkv * F; p.z_out_stride[1] = F; p.z_out_stride[2] = 1;
  }
  cuda::linear_attention(p);
  // naive reference in double
  const double fs = c.fscale;
  auto feats = [&](const double* x, bool is_key, std::vector<double>& ph) {
    ph.assign(F, 0);
    if (c.map != LinearMap::FavorSoftmax && c.map != LinearMap::FavorRelu) { for (int64_t f = 0; f < F; ++f) ph[f] = phi_el(c.map, x[f]); return; }
    double sq = 0; for (int64_t e = 0; e < c.D; ++e) sq += fs * fs * x[e] * x[e];
    for (int64_t f = 0; f < F; ++f) {
      double wx = 0; for (int64_t e = 0; e < c.D; ++e) wx += fs * d.W[f * c.D + e] * x[e];
      ph[f] = c.map == LinearMap::FavorRelu ? std::max(wx, 0.0) + 1e-3 : std::exp(wx - sq / 2) / std::sqrt((double)F);
    }
    (void)is_key;
  };
  std::vector<double> ref(c.B * c.Hq * c.S * c.Dv), got(ref.size());
  std::vector<double> rs_out(c.B * c.Hkv * F * c.Dv), rz_out(c.B * c.Hkv * F);
  std::vector<double> x(c.D), phq, phk;
  for (int64_t b = 0; b < c.B; ++b) {
    const int64_t L = c.lens ? d.len[b] : c.Sk;
    for (int64_t hk = 0; hk < c.Hkv; ++hk) {
      // final state
      for (int64_t f = 0; f < F; ++f) {
        rz_out[(b * c.Hkv + hk) * F + f] = c.state_in ? (double)d.z_in[(b * c.Hkv + hk) * F + f] : 0;
        for (int64_t e = 0; e < c.Dv; ++e) rs_out[((b * c.Hkv + hk) * F + f) * c.Dv + e] = c.state_in ? (double)d.s_in[((b * c.Hkv + hk) * F + f) * c.Dv + e] : 0;
      }
      const int64_t Lend = c.causal ? std::min(L, c.S) : L;
      for (int64_t j = 0; j < Lend; ++j) {
        for (int64_t e = 0; e < c.D; ++e) x[e] = d.k[((b * c.Hkv + hk) * c.Sk + j) * c.D + e];
        feats(x.data(), true, phk);
        for (int64_t f = 0; f < F; ++f) {
          rz_out[(b * c.Hkv + hk) * F + f] += phk[f];
          for (int64_t e = 0; e < c.Dv; ++e) rs_out[((b * c.Hkv + hk) * F + f) * c.Dv + e] += phk[f] * d.v[((b * c.Hkv + hk) * c.Sk + j) * c.Dv + e];
        }
      }
    }
    for (int64_t h = 0; h < c.Hq; ++h) {
      const int64_t hk = h / G;
      for (int64_t t = 0; t < c.S; ++t) {
        for (int64_t e = 0; e < c.D; ++e) x[e] = qat(b, h, t, e);
        feats(x.data(), false, phq);
        std::vector<double> num(c.Dv, 0);
        double den = 0;
        if (c.state_in) for (int64_t f = 0; f < F; ++f) {
          den += phq[f] * d.z_in[(b * c.Hkv + hk) * F + f];
          for (int64_t e = 0; e < c.Dv; ++e) num[e] += phq[f] * d.s_in[((b * c.Hkv + hk) * F + f) * c.Dv + e];
        }
        const int64_t jend = c.causal ? std::min(t + 1, L) : L;
        for (int64_t j = 0; j < jend; ++j) {
          for (int64_t e = 0; e < c.D; ++e) x[e] = d.k[((b * c.Hkv + hk) * c.Sk + j) * c.D + e];
          feats(x.data(), true, phk);
          double a = 0; for (int64_t f = 0; f < F; ++f) a += phq[f] * phk[f];
          den += a;
          for (int64_t e = 0; e < c.Dv; ++e) num[e] += a * d.v[((b * c.Hkv + hk) * c.Sk + j) * c.Dv + e];
        }
        for (int64_t e = 0; e < c.Dv; ++e) {
          const double dd = den + c.eps;
          ref[((b * c.Hq + h) * c.S + t) * c.Dv + e] = c.normalize ? (dd == 0 ? 0 : num[e] / dd) : num[e];
          got[((b * c.Hq + h) * c.S + t) * c.Dv + e] = d.out[b * p.out_stride[0] + h * p.out_stride[1] + t * p.out_stride[2] + e * p.out_stride[3]];
        }
      }
    }
  }
  const double tol = sizeof(T) == 8 ? 1e-10 : 2e-4;
  char buf[160];
  std::snprintf(buf, sizeof buf, "%s %s out", name, sizeof(T) == 8 ? "f64" : "f32");
  check(buf, diff(got, ref), tol);
  if (c.state_out) {
    std::snprintf(buf, sizeof buf, "%s %s state", name, sizeof(T) == 8 ? "f64" : "f32");
    check(buf, diff(d.s_out, rs_out), tol);
    std::snprintf(buf, sizeof buf, "%s %s z", name, sizeof(T) == 8 ? "f64" : "f32");
    check(buf, diff(d.z_out, rz_out), tol);
    if (diff(d.z_out, rz_out) > tol) for (size_t i = 0; i < rz_out.size(); ++i) std::printf("  z[%zu] got %g ref %g\n", i, (double)d.z_out[i], rz_out[i]);
  }
}

template <class T> void all() {
  test_merge<T>(3, 7); test_merge<T>(20, 7); test_merge<T>(33, 1); test_merge<T>(17, 0); test_merge<T>(0, 4);
  for (int i = 0; i < 8; ++i) test_rope<T>(i & 1, i & 2, i & 4);
  test_rope<T>(false, false, true, 920, 900);  // past the host frequency table
  test_rope<T>(true, true, true, 901, 2);
  LinCase c;
  run_linear_case<T>(c, "causal elu1 GQA", 0);
  c.lens = true; run_linear_case<T>(c, "causal elu1 lens", 1);
  c.state_in = c.state_out = true; run_linear_case<T>(c, "causal elu1 lens state", 1);
  c.chunk = 5; run_linear_case<T>(c, "causal elu1 lens state chunk5", 1);
  c.map = LinearMap::Relu; c.normalize = false; run_linear_case<T>(c, "causal relu unnorm", 0);
  c.map = LinearMap::Identity; run_linear_case<T>(c, "causal identity unnorm", 0);
  c.map = LinearMap::Elu1; c.normalize = true; c.causal = false; c.chunk = 0; run_linear_case<T>(c, "bidir elu1 lens state", 1);
  c.Sk = 23; c.chunk = 4; run_linear_case<T>(c, "bidir elu1 Sk!=S chunk4", 0);
  LinCase pf; pf.map = LinearMap::FavorSoftmax; pf.m = 9; pf.eps = 0; pf.lens = true;
  run_linear_case<T>(pf, "performer softmax causal", 1);
  pf.chunk = 4; run_linear_case<T>(pf, "performer softmax causal chunk4", 0);
  pf.causal = false; run_linear_case<T>(pf, "performer softmax bidir chunk4", 0);
  pf.chunk = 0; pf.Sk = 50; run_linear_case<T>(pf, "performer softmax bidir Sk50", 0);
  pf.map = LinearMap::FavorRelu; pf.eps = 1e-6; run_linear_case<T>(pf, "performer relu bidir", 0);
  pf.causal = true; pf.Sk = pf.S; run_linear_case<T>(pf, "performer relu causal", 1);
  LinCase e; e.S = e.Sk = 0; e.state_in = e.state_out = true; run_linear_case<T>(e, "causal S=0 state passthrough", 0);
  e.causal = false; run_linear_case<T>(e, "bidir S=0 state passthrough", 0);
  LinCase z; z.Hq = 0; z.state_out = true; run_linear_case<T>(z, "causal Hq=0 state_out", 0);
  LinCase dv; dv.Dv = 0; dv.state_out = true; run_linear_case<T>(dv, "causal Dv=0", 0);
  LinCase one; one.S = one.Sk = 1; one.B = 1; one.Hq = one.Hkv = 1; run_linear_case<T>(one, "causal S=1", 0);
}
int main() {
  for (int v2 = 0; v2 < 2; ++v2) {
    cuda::g_emu_v2 = v2 == 1;
    for (unsigned th : {1u, 5u, 32u}) {
      g_emu_threads = th;
      std::printf("== %s kernels, emulated block of %u threads\n", v2 ? "v2" : "v1", th);
      all<double>();
      all<float>();
    }
  }
  std::printf("%d failures\n", fails);
  return fails != 0;
}
