// Emulated CUDA attention backward (see run.sh) vs the CPU backend's generic kernel on the same
// AttnBwdProblem: dq, dk, dv and dbias, with exact zeros where the CPU has them (fully masked rows, keys
// beyond key_lengths). out and lse come from a float64 forward written here (math/masks.h key ranges).
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <stdexcept>
#include <vector>
#include "attnkit/math/masks.h"
#include "cpp/src/backend.h"
#include "cuda/common.cuh"
using namespace attnkit;
using namespace attnkit::detail;
namespace attnkit { namespace detail {
void assert_failed(const char*, const char*, const char*, int) { throw std::runtime_error("assert"); }
namespace cpu { void out_of_memory(const char*, unsigned long) { throw std::runtime_error("oom"); }
void attention_backward_generic(const AttnBwdProblem& p); }
}}
static uint64_t rs = 11;
static double urand() { rs = rs * 6364136223846793005ULL + 1442695040888963407ULL; return ((rs >> 11) * (1.0 / 9007199254740992.0)); }
static int fails = 0;

struct Case {
  const char* name;
  int64_t B = 2, Hq = 4, Hkv = 2, Sq = 37, Sk = 45, D = 5, Dv = 6;
  bool causal = false;
  int64_t wl = -1, wr = -1;
  bool mask = false, bias = false, lens = false, alibi = false, sparse = false, sparse_heads = false;
  double softcap = 0;
};

template <class T> void run(const Case& c) {
  const int64_t B = c.B, Hq = c.Hq, Hkv = c.Hkv, Sq = c.Sq, Sk = c.Sk, D = c.D, Dv = c.Dv, G = Hq / Hkv;
  std::vector<T> q(B * Hq * Sq * D), k(B * Hkv * Sk * D), v(B * Hkv * Sk * Dv), dout(B * Hq * Sq * Dv);
  for (auto& x : q) x = T(urand() * 2 - 1);
  for (auto& x : k) x = T(urand() * 2 - 1);
  for (auto& x : v) x = T(urand() * 2 - 1);
  for (auto& x : dout) x = T(urand() * 2 - 1);
  std::vector<uint8_t> mask(B * Hq * Sq * Sk);
  for (auto& x : mask) x = urand() < 0.7;
  for (int64_t j = 0; j < Sk; ++j) mask[(1 * Sq + 3) * Sk + j] = 0;  // b 0, head 1, row 3: fully masked
  std::vector<T> bias(B * Hq * Sq * Sk);
  for (auto& x : bias) x = T(urand() * 2 - 1);
  std::vector<float> slopes(B * Hq);
  for (auto& x : slopes) x = float(0.05 + 0.3 * urand());
  std::vector<int64_t> len = {Sk * 2 / 3, c.causal ? Sk : 0};  // batch 1 without keys (unless causal)
  // Layout: blocks of 8 x 16, query block qb allows key blocks kb with (qb + kb + h) % 3 != 1.
  const int64_t bq = 8, bk = 16, nqb = (Sq + bq - 1) / bq, nkb = (Sk + bk - 1) / bk, lheads = c.sparse_heads ? Hq : 1;
  std::vector<int64_t> row_ptr = {0};
  std::vector<int32_t> col_idx;
  for (int64_t h = 0; h < lheads; ++h)
    for (int64_t qb = 0; qb < nqb; ++qb) {
      for (int64_t kb = 0; kb < nkb; ++kb)
        if ((qb + kb + h) % 3 != 1) col_idx.push_back(static_cast<int32_t>(kb));
      row_ptr.push_back(static_cast<int64_t>(col_idx.size()));
    }
  const double scale = 0.7;
  AttnProblem p;
  p.dtype = sizeof(T) == 8 ? DType::Float64 : DType::Float32;
  p.B = B; p.Hq = Hq; p.Hkv = Hkv; p.Sq = Sq; p.Sk = Sk; p.D = D; p.Dv = Dv;
  auto view = [&](ViewN<4>& vw, const void* d, DType dt, int64_t H, int64_t L, int64_t E) {
    vw.data = d; vw.present = true; vw.dtype = dt;
    vw.stride[0] = H * L * E; vw.stride[1] = L * E; vw.stride[2] = E; vw.stride[3] = 1;
  };
  view(p.q, q.data(), p.dtype, Hq, Sq, D); view(p.k, k.data(), p.dtype, Hkv, Sk, D); view(p.v, v.data(), p.dtype, Hkv, Sk, Dv);
  p.scale = scale; p.softcap = c.softcap; p.causal = c.causal; p.window_left = c.wl; p.window_right = c.wr;
  if (c.mask) view(p.mask, mask.data(), DType::Bool, Hq, Sq, Sk);
  if (c.bias) view(p.bias, bias.data(), p.dtype, Hq, Sq, Sk);
  if (c.lens) { p.key_lengths.present = true; p.key_lengths.data = len.data(); p.key_lengths.dtype = DType::Int64; p.key_lengths.stride[0] = 1; }
  if (c.alibi) { p.alibi.present = true; p.alibi.data = slopes.data(); p.alibi.dtype = DType::Float32; p.alibi.stride[0] = Hq; p.alibi.stride[1] = 1; }
  if (c.sparse) {
    p.sparse = true;
    p.layout.row_ptr = row_ptr.data(); p.layout.col_idx = col_idx.data();
    p.layout.bq = bq; p.layout.bk = bk; p.layout.heads = lheads; p.layout.nqb = nqb; p.layout.nkb = nkb;
  }
  // Forward in float64: out and lse.
  std::vector<T> out(B * Hq * Sq * Dv);
  std::vector<T> lse(B * Hq * Sq);
  std::vector<double> s(Sk);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < Hq; ++h)
      for (int64_t i = 0; i < Sq; ++i) {
        const math::KeyRange kr = math::key_range(i, Sq, Sk, c.causal, c.wl, c.wr, c.lens ? len[b] : Sk);
        double m = -INFINITY;
        for (int64_t j = 0; j < Sk; ++j) {
          double x = -INFINITY;
          bool ok = j >= kr.lo && j < kr.hi;
          if (c.sparse) {
            const int64_t r = (lheads > 1 ? h : 0) * nqb + i / bq;
            ok = ok && std::find(col_idx.begin() + row_ptr[r], col_idx.begin() + row_ptr[r + 1], j / bk) !=
                           col_idx.begin() + row_ptr[r + 1];
          }
          const int64_t e = ((b * Hq + h) * Sq + i) * Sk + j;
          if (ok && !(c.mask && !mask[e])) {
            double dot = 0;
            for (int64_t d = 0; d < D; ++d) dot += double(q[((b * Hq + h) * Sq + i) * D + d]) * double(k[((b * Hkv + h / G) * Sk + j) * D + d]);
            x = dot * scale;
            if (c.softcap > 0) x = c.softcap * std::tanh(x / c.softcap);
            if (c.bias) x += double(bias[e]);
            if (c.alibi) x -= slopes[b * Hq + h] * double(math::alibi_distance<int64_t>(i + Sk - Sq, j));
          }
          s[j] = x;
          m = std::max(m, x);
        }
        double l = 0;
        for (int64_t j = 0; j < Sk; ++j) l += m == -INFINITY ? 0 : std::exp(s[j] - m);
        const double L = m == -INFINITY ? -INFINITY : m + std::log(l);
        lse[(b * Hq + h) * Sq + i] = T(L);
        for (int64_t d = 0; d < Dv; ++d) {
          double o = 0;
          for (int64_t j = 0; j < Sk; ++j)
            if (L != -INFINITY) o += std::exp(s[j] - L) * double(v[((b * Hkv + h / G) * Sk + j) * Dv + d]);
          out[((b * Hq + h) * Sq + i) * Dv + d] = T(o);
        }
      }
  p.out = out.data();
  for (int d = 0; d < 4; ++d) p.out_stride[d] = p.q.stride[d] / D * Dv;
  p.out_stride[3] = 1;
  p.lse = lse.data(); p.lse_stride[0] = Hq * Sq; p.lse_stride[1] = Sq; p.lse_stride[2] = 1;
  // Gradients from both backends, outputs prefilled with garbage.
  std::vector<T> dq1(q.size(), T(-7)), dk1(k.size(), T(-7)), dv1(v.size(), T(-7)), db1(c.bias ? bias.size() : 0, T(-7));
  std::vector<T> dq2 = dq1, dk2 = dk1, dv2 = dv1, db2 = db1;
  AttnBwdProblem bp;
  bp.fwd = p;
  view(bp.dout, dout.data(), p.dtype, Hq, Sq, Dv);
  for (int d = 0; d < 4; ++d) { bp.dq_stride[d] = p.q.stride[d]; bp.dk_stride[d] = p.k.stride[d]; bp.dv_stride[d] = p.v.stride[d]; bp.dbias_stride[d] = p.bias.stride[d]; }
  AttnBwdProblem b1 = bp, b2 = bp;
  b1.dq = dq1.data(); b1.dk = dk1.data(); b1.dv = dv1.data(); b1.dbias = c.bias ? db1.data() : nullptr;
  b2.dq = dq2.data(); b2.dk = dk2.data(); b2.dv = dv2.data(); b2.dbias = c.bias ? db2.data() : nullptr;
  cuda::attention_backward(b1);
  cpu::attention_backward_generic(b2);
  auto cmp = [](const std::vector<T>& a, const std::vector<T>& r) -> double {
    double m = 0;
    for (size_t i = 0; i < a.size(); ++i) {
      if (!std::isfinite(double(a[i])) || !std::isfinite(double(r[i]))) return double(INFINITY);
      if ((r[i] == T(0)) != (a[i] == T(0)) && r[i] == T(0)) return double(INFINITY);  // exact zeros kept
      m = std::max(m, std::fabs(double(a[i]) - double(r[i])) / (1 + std::fabs(double(r[i]))));
    }
    return m;
  };
  const double tol = sizeof(T) == 8 ? 1e-11 : 2e-5;
  const double e = std::max({cmp(dq1, dq2), cmp(dk1, dk2), cmp(dv1, dv2), cmp(db1, db2)});
  const bool ok = e <= tol;
  fails += !ok;
  std::printf("%-36s %s threads %2u err %.3g %s\n", c.name, sizeof(T) == 8 ? "f64" : "f32", g_emu_threads, e,
              ok ? "ok" : "FAIL");
}

template <class T> void all() {
  auto C = [](const char* n) { Case c; c.name = n; return c; };
  { Case c = C("plain GQA"); run<T>(c); }
  { Case c = C("causal Sq < Sk"); c.causal = true; run<T>(c); }
  { Case c = C("causal Sq > Sk"); c.causal = true; c.Sq = 50; c.Sk = 33; run<T>(c); }
  { Case c = C("window (5, 3) MQA"); c.wl = 5; c.wr = 3; c.Hkv = 1; run<T>(c); }
  { Case c = C("mask + fully masked row"); c.mask = true; run<T>(c); }
  { Case c = C("bias + dbias"); c.bias = true; run<T>(c); }
  { Case c = C("mask + bias + key_lengths"); c.mask = c.bias = c.lens = true; run<T>(c); }
  { Case c = C("softcap + ALiBi causal"); c.softcap = 2.0; c.alibi = true; c.causal = true; run<T>(c); }
  { Case c = C("block-sparse shared"); c.sparse = true; run<T>(c); }
  { Case c = C("block-sparse per head causal"); c.sparse = c.sparse_heads = c.causal = true; run<T>(c); }
  { Case c = C("empty Sk"); c.Sk = 0; run<T>(c); }
  { Case c = C("D 40 Dv 3 Sq 70 Sk 66"); c.D = 40; c.Dv = 3; c.Sq = 70; c.Sk = 66; c.Hq = 2; c.Hkv = 2; c.B = 1; c.lens = true; run<T>(c); }
}

int main() {
  // 3 threads: several pairs / elements per thread; 32: threads interleave around every barrier (the
  // barrier structure does not depend on the dtype, so float64 only there: the CI stage stays short).
  g_emu_threads = 3; all<double>(); all<float>();
  g_emu_threads = 32; all<double>();
  std::printf("%d failures\n", fails);
  return fails != 0;
}
