// C++ unit tests: the shared math headers (bit-exact conversions, key ranges, softmax helpers, gradients),
// errors from the validator, attention calls against a direct computation, and attention_backward
// against float64 central differences. No framework: CHECK counts failures and main returns their number.
#include <attnkit/attnkit.h>
#include <attnkit/math/attention_grad.h>
#include <attnkit/math/dla.h>
#include <attnkit/math/dtypes.h>
#include <attnkit/math/feature_maps.h>
#include <attnkit/math/masks.h>
#include <attnkit/math/random.h>
#include <attnkit/math/rope.h>
#include <attnkit/math/softmax.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "cpu/isa.h"  // choose_isa: internal, pure (tests/cpp/CMakeLists.txt adds cpp/src for it)

static int failures = 0;
#define CHECK(cond)                                                    \
  do {                                                                 \
    if (!(cond)) {                                                     \
      std::fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond); \
      ++failures;                                                      \
    }                                                                  \
  } while (0)

namespace m = attnkit::math;

static void test_conversions() {
  // float16: every finite half round-trips exactly; float -> half rounds to nearest even.
  for (uint32_t h = 0; h < 65536; ++h) {
    const float f = m::f16_to_float(static_cast<uint16_t>(h));
    if (std::isnan(f)) {
      CHECK(std::isnan(m::f16_to_float(m::float_to_f16(f))));
      continue;
    }
    CHECK(m::float_to_f16(f) == h);
  }
  CHECK(m::float_to_f16(65504.0f) == 0x7bff);
  CHECK(m::float_to_f16(65520.0f) == 0x7c00);              // rounds up to inf
  CHECK(m::float_to_f16(1.0f + 1.0f / 2048) == 0x3c00);    // tie -> even (down)
  CHECK(m::float_to_f16(1.0f + 3.0f / 2048) == 0x3c02);    // tie -> even (up)
  CHECK(m::float_to_f16(std::ldexp(1.0f, -25)) == 0);      // half of the smallest subnormal -> 0 (even)
  CHECK(m::float_to_f16(std::ldexp(3.0f, -26)) == 1);      // 0.75 of the smallest subnormal -> 1
  CHECK(m::f16_to_float(1) == std::ldexp(1.0f, -24));
  // bfloat16: exact round trip of all 2^16 patterns; rounding to nearest even.
  for (uint32_t h = 0; h < 65536; ++h) {
    const float f = m::bf16_to_float(static_cast<uint16_t>(h));
    if (!std::isnan(f)) CHECK(m::float_to_bf16(f) == h);
  }
  CHECK(m::float_to_bf16(1.0f + 1.0f / 256) == 0x3f80);
  CHECK(m::float_to_bf16(1.0f + 3.0f / 256) == 0x3f82);
  CHECK(std::isnan(m::bf16_to_float(m::float_to_bf16(std::numeric_limits<float>::quiet_NaN()))));
}

static void test_key_range() {
  // causal, square: row i sees [0, i]
  auto r = m::key_range(3, 10, 10, true, -1, -1, 10);
  CHECK(r.lo == 0 && r.hi == 4);
  // bottom-right alignment with Sk > Sq: row 0 sees Sk - Sq + 1 keys
  r = m::key_range(0, 4, 10, true, -1, -1, 10);
  CHECK(r.lo == 0 && r.hi == 7);
  // Sq > Sk: the first rows see nothing
  r = m::key_range(1, 10, 4, true, -1, -1, 4);
  CHECK(r.hi <= r.lo);
  // window (2, 1) and key_lengths
  r = m::key_range(5, 10, 10, false, 2, 1, 6);
  CHECK(r.lo == 3 && r.hi == 6);
  CHECK(m::alibi_distance<int64_t>(3, 7) == 4 && m::alibi_distance<int64_t>(7, 3) == 4);
}

static void test_softmax_helpers() {
  const double ninf = -std::numeric_limits<double>::infinity();
  CHECK((m::softmax_offset<double, double>(ninf) == 0.0));
  CHECK(m::softmax_lse(ninf, 0.0) == ninf);
  CHECK(m::softmax_out_scale(ninf, 0.0) == 0.0);
  CHECK(std::fabs(m::softmax_lse(1.0, std::exp(2.0)) - 3.0) < 1e-15);
  // NaN propagation: a NaN sum (NaN score of an allowed key) stays NaN; only l == 0 is an empty row.
  const double nan = std::numeric_limits<double>::quiet_NaN();
  CHECK(std::isnan(m::softmax_lse(ninf, nan)) && std::isnan(m::softmax_out_scale(ninf, nan)));
  CHECK(std::isnan(m::softmax_lse(1.0, nan)) && std::isnan(m::softmax_out_scale(1.0, nan)));
  CHECK(std::isnan(m::phi_relu(nan)) && std::isnan(m::phi_elu1(nan, [](double x) { return std::exp(x); })));
  CHECK(std::isnan(m::performer_relu<double>(nan)));
  // merge of lse 0 and log 3 (and an empty part) is log 4
  double mx = ninf, sum = 0, w;
  m::merge_step(mx, sum, 0.0, &w);
  m::merge_step(mx, sum, ninf, &w);
  CHECK(w == 0.0);
  m::merge_step(mx, sum, std::log(3.0), &w);
  CHECK(std::fabs(m::merge_lse(mx, sum) - std::log(4.0)) < 1e-15);
}

template <class F>
static std::string error_of(F&& f, attnkit::ErrorKind* kind) {
  try {
    f();
  } catch (const attnkit::Error& e) {
    *kind = e.kind();
    return e.what();
  }
  return "";
}

static void test_attention_and_errors() {
  using attnkit::DType;
  const int64_t B = 2, Hq = 4, Hkv = 2, Sq = 9, Sk = 13, D = 8, Dv = 3;
  std::vector<double> q(B * Hq * Sq * D), k(B * Hkv * Sk * D), v(B * Hkv * Sk * Dv), out(B * Hq * Sq * Dv);
  std::vector<double> lse(B * Hq * Sq);
  for (size_t i = 0; i < q.size(); ++i) q[i] = std::sin(1.7 * i);
  for (size_t i = 0; i < k.size(); ++i) k[i] = std::cos(0.9 * i);
  for (size_t i = 0; i < v.size(); ++i) v[i] = std::sin(0.37 * i + 1);
  attnkit::AttentionParams p;
  p.q = attnkit::make_tensor(q.data(), DType::Float64, {B, Hq, Sq, D});
  p.k = attnkit::make_tensor(k.data(), DType::Float64, {B, Hkv, Sk, D});
  p.v = attnkit::make_tensor(v.data(), DType::Float64, {B, Hkv, Sk, Dv});
  p.out = attnkit::make_tensor(out.data(), DType::Float64, {B, Hq, Sq, Dv});
  {
    // The support query answers with the same selection the call makes.
    const attnkit::Support cpu = attnkit::supported(p);
    CHECK(cpu.ok && cpu.backend == std::string("cpu/") + attnkit::cpu_isa());
    const attnkit::OutputSpecs specs = attnkit::attention_outputs(p);
    CHECK(specs.count == 2 && specs.find("lse") && specs.find("lse")->ndim == 3 && specs.find("out")->shape[3] == Dv);
    auto dev = p;
    for (attnkit::TensorRef* t : {&dev.q, &dev.k, &dev.v, &dev.out}) t->device = attnkit::Device::CUDA;
    const attnkit::Support gpu = attnkit::supported(dev);
    CHECK(!gpu.ok && gpu.reason.find("CUDA") != std::string::npos);
    attnkit::ErrorKind kind{};
    const std::string msg = error_of([&] { attnkit::attention(dev); }, &kind);
    CHECK(kind == attnkit::ErrorKind::NotBuilt && msg == gpu.reason);
  }
  p.lse = attnkit::make_tensor(lse.data(), DType::Float64, {B, Hq, Sq});
  p.causal = true;
  p.window_left = 3;
  attnkit::attention(p);
  double max_err = 0;
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < Hq; ++h)
      for (int64_t i = 0; i < Sq; ++i) {
        const int64_t hk = h / (Hq / Hkv), pos = i + Sk - Sq;
        double mx = -1e300, s[Sk];
        for (int64_t j = 0; j < Sk; ++j) {
          double dot = 0;
          for (int64_t d = 0; d < D; ++d) dot += q[((b * Hq + h) * Sq + i) * D + d] * k[((b * Hkv + hk) * Sk + j) * D + d];
          s[j] = (j <= pos && j >= pos - 3) ? dot / std::sqrt(double(D)) : -INFINITY;
          mx = std::fmax(mx, s[j]);
        }
        double sum = 0;
        for (int64_t j = 0; j < Sk; ++j) sum += std::exp(s[j] - mx);
        max_err = std::fmax(max_err, std::fabs(lse[(b * Hq + h) * Sq + i] - (mx + std::log(sum))));
        for (int64_t e = 0; e < Dv; ++e) {
          double o = 0;
          for (int64_t j = 0; j < Sk; ++j) o += std::exp(s[j] - mx) / sum * v[((b * Hkv + hk) * Sk + j) * Dv + e];
          max_err = std::fmax(max_err, std::fabs(o - out[((b * Hq + h) * Sq + i) * Dv + e]));
        }
      }
  CHECK(max_err < 1e-12);

  // Errors name the argument and carry a kind.
  attnkit::ErrorKind kind{};
  auto bad = p;
  bad.k = attnkit::make_tensor(k.data(), DType::Float32, {B, Hkv, Sk, D});
  std::string msg = error_of([&] { attnkit::attention(bad); }, &kind);
  CHECK(kind == attnkit::ErrorKind::Type && msg.find("k must be float64") != std::string::npos);
  bad = p;
  bad.q = attnkit::make_tensor(q.data(), DType::Float64, {B, 3, Sq, D});
  msg = error_of([&] { attnkit::attention(bad); }, &kind);
  CHECK(kind == attnkit::ErrorKind::Value && msg.find("heads of q") != std::string::npos);
  bad = p;
  bad.scale = std::numeric_limits<double>::quiet_NaN();
  msg = error_of([&] { attnkit::attention(bad); }, &kind);
  CHECK(kind == attnkit::ErrorKind::Value && msg.find("scale") != std::string::npos);
  bad = p;
  bad.out = attnkit::TensorRef();
  msg = error_of([&] { attnkit::attention(bad); }, &kind);
  CHECK(kind == attnkit::ErrorKind::Value && msg.find("out is required") != std::string::npos);
  // A device tensor: without CUDA the library says it was built without it; with CUDA and no GPU it
  // says there is no device.
  bad = p;
  attnkit::TensorRef* all[] = {&bad.q, &bad.k, &bad.v, &bad.out, &bad.lse};
  for (attnkit::TensorRef* t : all) t->device = attnkit::Device::CUDA;
  msg = error_of([&] { attnkit::attention(bad); }, &kind);
  if (!attnkit::built_with_cuda())
    CHECK(kind == attnkit::ErrorKind::NotBuilt && msg.find("built without CUDA") != std::string::npos);
  else if (attnkit::cuda_device_count() == 0)
    CHECK(kind == attnkit::ErrorKind::Runtime && msg.find("no CUDA device") != std::string::npos);
}

static void test_philox() {
  // Known-answer vectors of Random123 (kat_vectors, philox4x32_10).
  auto eq = [](m::Philox4 a, uint32_t x0, uint32_t x1, uint32_t x2, uint32_t x3) {
    return a.v[0] == x0 && a.v[1] == x1 && a.v[2] == x2 && a.v[3] == x3;
  };
  CHECK(eq(m::philox4x32_10({{0, 0, 0, 0}}, 0, 0), 0x6627e8d5u, 0xe169c58du, 0xbc57ac4cu, 0x9b00dbd8u));
  CHECK(eq(m::philox4x32_10({{0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu}}, 0xffffffffu, 0xffffffffu),
           0x408f276du, 0x41c83b0eu, 0xa20bc7c6u, 0x6d5451fdu));
  CHECK(eq(m::philox4x32_10({{0x243f6a88u, 0x85a308d3u, 0x13198a2eu, 0x03707344u}}, 0xa4093822u, 0x299f31d0u),
           0xd16cfe09u, 0x94fdccebu, 0x5001e420u, 0x24126ea1u));
  // Normals: mean ~0, variance ~1 over many draws; uniform_below stays in range.
  double s1 = 0, s2 = 0;
  const int n = 200000;
  for (int i = 0; i < n; ++i) {
    const double z = m::normal(42, 7, i);
    s1 += z;
    s2 += z * z;
  }
  CHECK(std::fabs(s1 / n) < 0.01 && std::fabs(s2 / n - 1.0) < 0.02);
  bool in_range = true;
  for (int i = 0; i < 1000; ++i) in_range &= m::uniform_below(1, 2, i, 7) < 7;
  CHECK(in_range);
}

static void test_block_sparse_and_lsh() {
  using attnkit::DType;
  const int64_t H = 2, S = 150, D = 16;
  std::vector<float> q(H * S * D), k(q.size()), v(q.size()), out(q.size()), ref(q.size());
  for (size_t i = 0; i < q.size(); ++i) {
    q[i] = std::sin(0.37f * i);
    k[i] = std::cos(0.11f * i + 1);
    v[i] = std::sin(0.05f * i + 2);
  }
  const auto L = attnkit::BlockLayout::bigbird(S, 32, 1, 1, 1, 42, true, H);
  CHECK(L.num_q_blocks == 5 && L.num_heads == H && L.density() > 0 && L.density() <= 1);
  CHECK(L.to_dense().size() == static_cast<size_t>(H * 5 * 5));
  const auto again = attnkit::BlockLayout::bigbird(S, 32, 1, 1, 1, 42, true, H);
  CHECK(again.col_idx == L.col_idx && again.row_ptr == L.row_ptr);
  attnkit::BlockSparseParams bp;
  bp.q = attnkit::make_tensor(q.data(), DType::Float32, {H, S, D});
  bp.k = attnkit::make_tensor(k.data(), DType::Float32, {H, S, D});
  bp.v = attnkit::make_tensor(v.data(), DType::Float32, {H, S, D});
  bp.out = attnkit::make_tensor(out.data(), DType::Float32, {H, S, D});
  bp.layout = L.ref();
  bp.causal = true;
  attnkit::block_sparse_attention(bp);
  // the same with attention() and the expanded element mask
  const std::vector<uint8_t> blocks = L.to_dense();
  std::vector<uint8_t> mask(H * S * S);
  for (int64_t h = 0; h < H; ++h)
    for (int64_t i = 0; i < S; ++i)
      for (int64_t j = 0; j < S; ++j) mask[(h * S + i) * S + j] = blocks[(h * 5 + i / 32) * 5 + j / 32];
  attnkit::AttentionParams ap;
  ap.q = bp.q;
  ap.k = bp.k;
  ap.v = bp.v;
  ap.out = attnkit::make_tensor(ref.data(), DType::Float32, {H, S, D});
  ap.mask = attnkit::make_tensor(mask.data(), DType::Bool, {H, S, S});
  ap.causal = true;
  attnkit::attention(ap);
  double err = 0;
  for (size_t i = 0; i < out.size(); ++i) err = std::fmax(err, std::fabs(out[i] - ref[i]));
  CHECK(err < 1e-6);
  // LSH with everything in one bucket (num_buckets = 2 and k = q direction-wise) equals exact attention
  attnkit::LshAttentionParams lp;
  lp.q = bp.q;
  lp.k = bp.q;
  lp.v = bp.v;
  lp.out = bp.out;
  lp.num_buckets = 2;
  lp.num_hashes = 2;
  attnkit::lsh_attention(lp);
  std::vector<int32_t> codes(H * 2 * S);
  attnkit::LshBucketsParams hp;
  hp.x = bp.q;
  hp.out = attnkit::make_tensor(codes.data(), DType::Int32, {H, 2, S});
  hp.num_buckets = 2;
  hp.num_hashes = 2;
  attnkit::lsh_buckets(hp);
  bool in_range = true;
  for (int32_t c : codes) in_range &= (c == 0 || c == 1);
  CHECK(in_range);
  // bad layouts are rejected with a message naming the problem
  attnkit::BlockLayout bad = L;
  bad.col_idx[0] = 99;
  attnkit::ErrorKind kind{};
  const std::string msg = error_of([&] { attnkit::validate_layout(bad.ref()); }, &kind);
  CHECK(kind == attnkit::ErrorKind::Value && msg.find("layout.col_idx") != std::string::npos);
}

static void test_dla_math() {
  // Both scores from (A, B, p) against the definitions on explicit 2 x 3 matrices.
  const double S[6] = {0.3, -1.2, 0.5, 2.0, 0.1, -0.7}, k[2] = {0.4, -1.1}, v[3] = {1.5, 0.2, -0.3};
  const double n = 6, eps = m::kDlaRmsEps;
  double s[6], A = 0, B = 0, p = 0;
  for (int i = 0; i < 6; ++i) {
    s[i] = k[i / 3] * v[i % 3];
    A += S[i] * S[i];
    B += s[i] * s[i];
    p += S[i] * s[i];
  }
  auto norm_of = [&](const double* x) {
    double q = 0;
    for (int i = 0; i < 6; ++i) q += x[i] * x[i];
    return std::sqrt(q);
  };
  auto N = [&](const double* x, double* out) {
    const double r = 1 / std::sqrt(norm_of(x) * norm_of(x) / n + eps);
    for (int i = 0; i < 6; ++i) out[i] = x[i] * r;
  };
  double nS[6], ns[6], sum[6], nsum[6], d1[6], d2[6];
  N(S, nS);
  N(s, ns);
  for (int i = 0; i < 6; ++i) sum[i] = S[i] + s[i];
  N(sum, nsum);
  for (int i = 0; i < 6; ++i) {
    d1[i] = ns[i] - nS[i];
    d2[i] = nsum[i] - nS[i];
  }
  const double den = norm_of(nS) + m::kDlaScoreEps;
  CHECK(std::fabs(m::dla_info_score(false, A, B, p, n) - norm_of(d1) / den) < 1e-12);
  CHECK(std::fabs(m::dla_info_score(true, A, B, p, n) - norm_of(d2) / den) < 1e-12);
  CHECK(m::dla_info_score(false, B, B, B, n) == 0.0);  // a token equal to the open state
  CHECK(m::dla_info_score(false, 0.0, 0.0, 0.0, n) == 0.0);
  // Boundary rule and merge pair (ties: the oldest pair).
  CHECK(m::dla_opens_state(0.0, 1e9, 1, 0) && !m::dla_opens_state(5.0, 0.6, 1, 3));
  CHECK(m::dla_opens_state(0.6, 0.6, 2, 1) && !m::dla_opens_state(0.59, 0.6, 2, 1));
  const double info[5] = {5, 1, 1, 1, 1};
  const int64_t count[5] = {1, 1, 1, 1, 1};
  CHECK(m::dla_merge_pair(info, count, 5) == 1);
  const double info2[4] = {1, 1, 0.5, 0.1};
  const int64_t count2[4] = {1, 1, 2, 1};
  CHECK(m::dla_merge_pair(info2, count2, 4) == 2);  // (0.5 + 0.1) / 3 = 0.2
  CHECK(m::dla_lam_index(0, 4) == 3 && m::dla_lam_index(3, 4) == 0);
}

static void test_dla_call() {
  using attnkit::DType;
  // C = 1: y = lam_0 * decayed linear attention, a single state; then a decode step continues it.
  const int64_t B = 1, H = 2, T = 9, Dk = 5, Dv = 3, C = 1;
  std::vector<double> q(B * H * T * Dk), k(q.size()), v(B * H * T * Dv), lam(B * H * T * C), g(B * H * T);
  for (size_t i = 0; i < q.size(); ++i) {
    q[i] = std::sin(0.7 * i);
    k[i] = std::cos(1.3 * i);
  }
  for (size_t i = 0; i < v.size(); ++i) v[i] = std::sin(0.29 * i + 2);
  for (size_t i = 0; i < lam.size(); ++i) lam[i] = 0.5 + 0.1 * i;
  for (size_t i = 0; i < g.size(); ++i) g[i] = -0.05 * (i % 4);
  std::vector<double> y(B * H * T * Dv), st(B * H * C * Dk * Dv), info(B * H * C);
  std::vector<int64_t> cnt(B * H * C), starts(B * H * C), size(B * H);
  attnkit::DLAParams p;
  p.q = attnkit::make_tensor(q.data(), DType::Float64, {B, H, T, Dk});
  p.k = attnkit::make_tensor(k.data(), DType::Float64, {B, H, T, Dk});
  p.v = attnkit::make_tensor(v.data(), DType::Float64, {B, H, T, Dv});
  p.lam = attnkit::make_tensor(lam.data(), DType::Float64, {B, H, T, C});
  p.log_decay = attnkit::make_tensor(g.data(), DType::Float64, {B, H, T});
  p.out = attnkit::make_tensor(y.data(), DType::Float64, {B, H, T, Dv});
  p.capacity = C;
  p.cache_out.states = attnkit::make_tensor(st.data(), DType::Float64, {B, H, C, Dk, Dv});
  p.cache_out.counts = attnkit::make_tensor(cnt.data(), DType::Int64, {B, H, C});
  p.cache_out.info = attnkit::make_tensor(info.data(), DType::Float64, {B, H, C});
  p.cache_out.starts = attnkit::make_tensor(starts.data(), DType::Int64, {B, H, C});
  p.cache_out.size = attnkit::make_tensor(size.data(), DType::Int64, {B, H});
  attnkit::dynamic_linear_attention(p);
  double max_err = 0;
  for (int64_t h = 0; h < H; ++h) {
    std::vector<double> Sx(Dk * Dv, 0.0);
    for (int64_t t = 0; t < T; ++t) {
      const double a = std::exp(g[h * T + t]);
      for (int64_t i = 0; i < Dk * Dv; ++i) Sx[i] = a * Sx[i] + k[(h * T + t) * Dk + i / Dv] * v[(h * T + t) * Dv + i % Dv];
      for (int64_t e = 0; e < Dv; ++e) {
        double o = 0;
        for (int64_t d = 0; d < Dk; ++d) o += q[(h * T + t) * Dk + d] * Sx[d * Dv + e];
        max_err = std::fmax(max_err, std::fabs(lam[h * T + t] * o - y[(h * T + t) * Dv + e]));
      }
    }
    for (int64_t i = 0; i < Dk * Dv; ++i) max_err = std::fmax(max_err, std::fabs(Sx[i] - st[h * Dk * Dv + i]));
    CHECK(size[h] == 1 && cnt[h] == T && starts[h] == 0);
  }
  CHECK(max_err < 1e-12);

  // A decode step from that cache (capacity 1 never opens a second state).
  std::vector<double> st2(st.size()), info2(info.size()), y1(B * H * Dv);
  std::vector<int64_t> cnt2(cnt.size()), starts2(starts.size()), size2(size.size());
  attnkit::DLAParams d = p;
  d.q = attnkit::make_tensor(q.data(), DType::Float64, {B, H, 1, Dk});
  d.q.strides[1] = T * Dk;  // token 0 of each head, as a strided view
  d.k = d.q;
  d.k.data = k.data();
  d.v = attnkit::make_tensor(v.data(), DType::Float64, {B, H, 1, Dv});
  d.v.strides[1] = T * Dv;
  d.lam = attnkit::make_tensor(lam.data(), DType::Float64, {B, H, 1, C});
  d.lam.strides[1] = T * C;
  d.log_decay = attnkit::TensorRef();
  d.out = attnkit::make_tensor(y1.data(), DType::Float64, {B, H, 1, Dv});
  d.cache_in = p.cache_out;
  d.position = T;
  d.cache_out.states = attnkit::make_tensor(st2.data(), DType::Float64, {B, H, C, Dk, Dv});
  d.cache_out.counts = attnkit::make_tensor(cnt2.data(), DType::Int64, {B, H, C});
  d.cache_out.info = attnkit::make_tensor(info2.data(), DType::Float64, {B, H, C});
  d.cache_out.starts = attnkit::make_tensor(starts2.data(), DType::Int64, {B, H, C});
  d.cache_out.size = attnkit::make_tensor(size2.data(), DType::Int64, {B, H});
  attnkit::dynamic_linear_attention(d);
  max_err = 0;
  for (int64_t h = 0; h < H; ++h)
    for (int64_t i = 0; i < Dk * Dv; ++i)
      max_err = std::fmax(max_err, std::fabs(st2[h * Dk * Dv + i] - st[h * Dk * Dv + i] -
                                                 k[h * T * Dk + i / Dv] * v[h * T * Dv + i % Dv]));
  CHECK(max_err < 1e-12 && cnt2[0] == T + 1 && size2[1] == 1);

  // Errors name the argument and carry a kind.
  attnkit::ErrorKind kind{};
  auto bad = p;
  bad.capacity = 0;
  std::string msg = error_of([&] { attnkit::dynamic_linear_attention(bad); }, &kind);
  CHECK(kind == attnkit::ErrorKind::Value && msg.find("capacity") != std::string::npos);
  bad = p;
  bad.capacity = 2;
  msg = error_of([&] { attnkit::dynamic_linear_attention(bad); }, &kind);
  CHECK(kind == attnkit::ErrorKind::Value && msg.find("lam") != std::string::npos);
  bad = p;
  bad.tau = std::numeric_limits<double>::quiet_NaN();
  msg = error_of([&] { attnkit::dynamic_linear_attention(bad); }, &kind);
  CHECK(kind == attnkit::ErrorKind::Value && msg.find("tau") != std::string::npos);
  bad = d;
  bad.cache_in.size = attnkit::make_tensor(size.data(), DType::Int64, {B, 1});
  msg = error_of([&] { attnkit::dynamic_linear_attention(bad); }, &kind);
  CHECK(kind == attnkit::ErrorKind::Value && msg.find("cache.size") != std::string::npos);
  bad = d;
  bad.cache_in.info = attnkit::make_tensor(info.data(), DType::Float32, {B, H, C});
  msg = error_of([&] { attnkit::dynamic_linear_attention(bad); }, &kind);
  CHECK(kind == attnkit::ErrorKind::Type && msg.find("cache.info") != std::string::npos);
  bad = d;
  bad.position = T + 1;
  msg = error_of([&] { attnkit::dynamic_linear_attention(bad); }, &kind);
  CHECK(kind == attnkit::ErrorKind::Value && msg.find("position") != std::string::npos);
  g[3] = 0.5;
  msg = error_of([&] { attnkit::dynamic_linear_attention(p); }, &kind);
  CHECK(kind == attnkit::ErrorKind::Value && msg.find("log_decay") != std::string::npos);
}

static void test_feature_maps() {
  auto ex = [](double x) { return std::exp(x); };
  CHECK(m::phi_elu1(2.0, ex) == 3.0 && m::phi_elu1(0.0, ex) == 1.0);
  CHECK(std::fabs(m::phi_elu1(-1.5, ex) - std::exp(-1.5)) < 1e-16);
  CHECK(m::phi_elu1(-1000.0, ex) == 0.0);  // exp of min(x, 0): no overflow, no NaN
  CHECK(m::phi_relu(-2.0) == 0.0 && m::phi_relu(2.5) == 2.5);
  CHECK(m::performer_relu<double>(-1.0) == m::kPerformerReluShift);
  CHECK(m::linear_output(1.0, 0.0, 0.0) == 0.0);  // zero denominator: 0, never NaN or inf
  CHECK(m::linear_output(3.0, 1.0, 0.5) == 2.0);
  // running maximum and the rescale factor of the accumulated state (0 while nothing was accumulated)
  const double ninf = -std::numeric_limits<double>::infinity();
  double c = m::favor_running_max(ninf, -3.0);
  CHECK(c == -3.0 && std::exp(m::favor_rescale_arg<double, double>(ninf, c)) == 0.0);
  c = m::favor_running_max(c, 2.0);
  CHECK(c == 2.0 && std::fabs(std::exp(m::favor_rescale_arg<double, double>(-3.0, c)) - std::exp(-5.0)) < 1e-18);
  CHECK(m::favor_running_max(c, 1.0) == 2.0);
  // normal_pair is normal(2i) and normal(2i + 1)
  double z0, z1;
  m::normal_pair(9, 4, 21, &z0, &z1);
  CHECK(z0 == m::normal(9, 4, 42) && z1 == m::normal(9, 4, 43));
}

static void test_linear_family() {
  using attnkit::DType;
  // Causal elu+1 linear attention against the recurrent form, in double.
  const int64_t S = 11, D = 3, Dv = 2;
  std::vector<double> q(S * D), k(S * D), v(S * Dv), out(S * Dv), st(D * Dv), z(D);
  for (size_t i = 0; i < q.size(); ++i) q[i] = std::sin(0.7 * i), k[i] = std::cos(1.3 * i);
  for (size_t i = 0; i < v.size(); ++i) v[i] = std::sin(0.2 * i + 0.5);
  attnkit::LinearAttentionParams p;
  p.q = attnkit::make_tensor(q.data(), DType::Float64, {S, D});
  p.k = attnkit::make_tensor(k.data(), DType::Float64, {S, D});
  p.v = attnkit::make_tensor(v.data(), DType::Float64, {S, Dv});
  p.out = attnkit::make_tensor(out.data(), DType::Float64, {S, Dv});
  p.final_state = attnkit::make_tensor(st.data(), DType::Float64, {D, Dv});
  p.final_normalizer = attnkit::make_tensor(z.data(), DType::Float64, {D});
  attnkit::set_tuning("linear_chunk", 4);
  attnkit::linear_attention(p);
  attnkit::set_tuning("linear_chunk", 0);
  auto phi = [](double x) { return x > 0 ? x + 1 : std::exp(x); };
  std::vector<double> rs(D * Dv, 0.0), rz(D, 0.0);
  double max_err = 0;
  for (int64_t t = 0; t < S; ++t) {
    for (int64_t f = 0; f < D; ++f) {
      rz[f] += phi(k[t * D + f]);
      for (int64_t e = 0; e < Dv; ++e) rs[f * Dv + e] += phi(k[t * D + f]) * v[t * Dv + e];
    }
    double den = 1e-6;
    for (int64_t f = 0; f < D; ++f) den += phi(q[t * D + f]) * rz[f];
    for (int64_t e = 0; e < Dv; ++e) {
      double num = 0;
      for (int64_t f = 0; f < D; ++f) num += phi(q[t * D + f]) * rs[f * Dv + e];
      max_err = std::fmax(max_err, std::fabs(num / den - out[t * Dv + e]));
    }
  }
  for (int64_t i = 0; i < D * Dv; ++i) max_err = std::fmax(max_err, std::fabs(rs[i] - st[i]));
  for (int64_t f = 0; f < D; ++f) max_err = std::fmax(max_err, std::fabs(rz[f] - z[f]));
  CHECK(max_err < 1e-12);

  // Random features: orthogonal blocks of norm sqrt(D) rows, a pure function of the seed.
  const int64_t M = 10, Df = 4;
  std::vector<double> w(M * Df), w2(M * Df);
  attnkit::RandomFeaturesParams rf;
  rf.num_features = M;
  rf.head_dim = Df;
  rf.seed = 77;
  rf.scaling = attnkit::FeatureScaling::SqrtD;
  rf.dtype = DType::Float64;
  const attnkit::OutputSpecs rf_specs = attnkit::random_features_outputs(rf);
  CHECK(rf_specs.count == 1 && rf_specs.find("out") && rf_specs.find("out")->dtype == DType::Float64 &&
        rf_specs.find("out")->ndim == 2 && rf_specs.find("out")->shape[0] == M && rf_specs.find("out")->shape[1] == Df);
  rf.out = attnkit::make_tensor(w.data(), DType::Float64, {M, Df});
  attnkit::random_features(rf);
  rf.out = attnkit::make_tensor(w2.data(), DType::Float64, {M, Df});
  attnkit::random_features(rf);
  CHECK(w == w2);
  double ortho_err = 0;
  for (int64_t a = 0; a < M; ++a)
    for (int64_t b = a; b < M && b / Df == a / Df; ++b) {
      double dot = 0;
      for (int64_t d = 0; d < Df; ++d) dot += w[a * Df + d] * w[b * Df + d];
      ortho_err = std::fmax(ortho_err, std::fabs(dot - (a == b ? double(Df) : 0.0)));
    }
  CHECK(ortho_err < 1e-12);

  // Performer with one key attends to it fully: out = v.
  std::vector<double> one_k(Df, 0.5), one_v(3, 0.25), qs(2 * Df, 0.1), pout(2 * 3);
  attnkit::PerformerParams pp;
  pp.q = attnkit::make_tensor(qs.data(), DType::Float64, {2, Df});
  pp.k = attnkit::make_tensor(one_k.data(), DType::Float64, {1, Df});
  pp.v = attnkit::make_tensor(one_v.data(), DType::Float64, {1, 3});
  pp.features = attnkit::make_tensor(w.data(), DType::Float64, {M, Df});
  pp.out = attnkit::make_tensor(pout.data(), DType::Float64, {2, 3});
  pp.eps = 0;
  attnkit::performer_attention(pp);
  for (double x : pout) CHECK(std::fabs(x - 0.25) < 1e-14);

  // Errors carry a kind and name the argument.
  attnkit::ErrorKind kind{};
  auto bad = p;
  bad.eps = -1;
  std::string msg = error_of([&] { attnkit::linear_attention(bad); }, &kind);
  CHECK(kind == attnkit::ErrorKind::Value && msg.find("eps") != std::string::npos);
  bad = p;
  bad.k = attnkit::make_tensor(k.data(), DType::Float64, {S - 1, D});
  bad.v = attnkit::make_tensor(v.data(), DType::Float64, {S - 1, Dv});
  msg = error_of([&] { attnkit::linear_attention(bad); }, &kind);
  CHECK(kind == attnkit::ErrorKind::Value && msg.find("causal") != std::string::npos);
  bad = p;
  bad.final_state = attnkit::make_tensor(st.data(), DType::Float32, {D, Dv});
  msg = error_of([&] { attnkit::linear_attention(bad); }, &kind);
  CHECK(kind == attnkit::ErrorKind::Type && msg.find("final_state") != std::string::npos);
  auto bad_pp = pp;
  bad_pp.features = attnkit::make_tensor(w.data(), DType::Float64, {M, Df - 1});
  msg = error_of([&] { attnkit::performer_attention(bad_pp); }, &kind);
  CHECK(kind == attnkit::ErrorKind::Value && msg.find("features") != std::string::npos);
  attnkit::LinformerParams lp;
  lp.q = p.q;
  lp.k = p.k;
  lp.v = p.v;
  lp.out = p.out;
  lp.causal = true;
  msg = error_of([&] { attnkit::linformer_attention(lp); }, &kind);
  CHECK(kind == attnkit::ErrorKind::Value && msg.find("causal is not defined for Linformer") != std::string::npos);
  rf.num_features = 0;
  msg = error_of([&] { attnkit::random_features(rf); }, &kind);
  CHECK(kind == attnkit::ErrorKind::Value && msg.find("num_features") != std::string::npos);
}

static void test_rope() {
  // x [H=2, S=3, D=6], rotary_dim 4, GPT-NeoX pairs (p, p + 2): direct computation in double.
  using attnkit::DType;
  const int64_t H = 2, S = 3, D = 6, R = 4;
  std::vector<double> x(H * S * D), out(x.size(), -1.0);
  for (size_t i = 0; i < x.size(); ++i) x[i] = std::sin(0.7 * static_cast<double>(i) + 0.1);
  const int64_t pos[S] = {5, 0, 123456};
  attnkit::RopeParams p;
  p.x = attnkit::make_tensor(x.data(), DType::Float64, {H, S, D});
  p.out = attnkit::make_tensor(out.data(), DType::Float64, {H, S, D});
  p.positions = attnkit::make_tensor(const_cast<int64_t*>(pos), DType::Int64, {S});
  p.rotary_dim = R;
  attnkit::rope(p);
  for (int64_t h = 0; h < H; ++h)
    for (int64_t s = 0; s < S; ++s) {
      const double* xr = &x[(h * S + s) * D];
      const double* o = &out[(h * S + s) * D];
      for (int64_t i = 0; i < R / 2; ++i) {
        const double th = static_cast<double>(pos[s]) * std::pow(10000.0, -2.0 * i / R);
        CHECK(std::fabs(o[i] - (xr[i] * std::cos(th) - xr[i + R / 2] * std::sin(th))) < 1e-12);
        CHECK(std::fabs(o[i + R / 2] - (xr[i + R / 2] * std::cos(th) + xr[i] * std::sin(th))) < 1e-12);
      }
      CHECK(o[4] == xr[4] && o[5] == xr[5]);
    }
  int64_t a, b;
  m::rope_pair(3, 8, true, a, b);
  CHECK(a == 6 && b == 7);
  m::rope_pair(3, 8, false, a, b);
  CHECK(a == 3 && b == 7);
  attnkit::ErrorKind kind;
  auto bad = p;
  bad.rotary_dim = 5;
  std::string msg = error_of([&] { attnkit::rope(bad); }, &kind);
  CHECK(kind == attnkit::ErrorKind::Value && msg.find("rotary_dim") != std::string::npos);
  bad = p;
  const int64_t neg[S] = {0, -1, 2};
  bad.positions = attnkit::make_tensor(const_cast<int64_t*>(neg), DType::Int64, {S});
  msg = error_of([&] { attnkit::rope(bad); }, &kind);
  CHECK(kind == attnkit::ErrorKind::Value && msg.find("positions[1]") != std::string::npos);
}

// ----------------------------------------------------------------------------------- backward passes
using attnkit::DType;
using attnkit::make_tensor;

static void test_grad_math() {
  const double ninf = -std::numeric_limits<double>::infinity();
  CHECK((m::backward_prob_arg<double, double>(1.0, ninf) == ninf));  // empty row: p = 0, not exp(+inf)
  CHECK((m::backward_prob_arg<double, double>(1.0, 3.0) == -2.0));
  CHECK(m::softmax_grad(0.0, std::nan(""), 1.0) == 0.0);             // masked key: 0 even for NaN dp
  CHECK(m::softmax_grad(0.5, 3.0, 1.0) == 1.0);
  CHECK((m::softcap_grad<double, double>(0.5) == 0.75));
}

// L = sum(dout * attention(q, k, v)) with causal masking, softcap and GQA (Hq = 2, Hkv = 1), float64.
struct BwdProblem {
  static constexpr int64_t Hq = 2, Hkv = 1, Sq = 3, Sk = 5, D = 4, Dv = 3;
  std::vector<double> q, k, v, dout;
  BwdProblem() : q(Hq * Sq * D), k(Hkv * Sk * D), v(Hkv * Sk * Dv), dout(Hq * Sq * Dv) {
    double x = 0.3;
    for (auto* a : {&q, &k, &v, &dout})
      for (double& e : *a) e = (x = std::fmod(x * 7.31 + 0.17, 2.0)) - 1.0;
  }
  attnkit::AttentionParams params(std::vector<double>& out, std::vector<double>* lse) {
    attnkit::AttentionParams p;
    p.q = make_tensor(q.data(), DType::Float64, {Hq, Sq, D});
    p.k = make_tensor(k.data(), DType::Float64, {Hkv, Sk, D});
    p.v = make_tensor(v.data(), DType::Float64, {Hkv, Sk, Dv});
    p.out = make_tensor(out.data(), DType::Float64, {Hq, Sq, Dv});
    if (lse) p.lse = make_tensor(lse->data(), DType::Float64, {Hq, Sq});
    p.causal = true;
    p.softcap = 2.0;
    return p;
  }
  double loss() {
    std::vector<double> out(Hq * Sq * Dv);
    attnkit::attention(params(out, nullptr));
    double l = 0;
    for (size_t i = 0; i < out.size(); ++i) l += out[i] * dout[i];
    return l;
  }
};

static void test_finite_differences() {
  BwdProblem pr;
  std::vector<double> out(BwdProblem::Hq * BwdProblem::Sq * BwdProblem::Dv), lse(BwdProblem::Hq * BwdProblem::Sq);
  attnkit::AttentionBackwardParams b;
  b.fwd = pr.params(out, &lse);
  attnkit::attention(b.fwd);
  std::vector<double> dq(pr.q.size()), dk(pr.k.size()), dv(pr.v.size());
  b.grad.dout = make_tensor(pr.dout.data(), DType::Float64, {BwdProblem::Hq, BwdProblem::Sq, BwdProblem::Dv});
  b.grad.dq = make_tensor(dq.data(), DType::Float64, {BwdProblem::Hq, BwdProblem::Sq, BwdProblem::D});
  b.grad.dk = make_tensor(dk.data(), DType::Float64, {BwdProblem::Hkv, BwdProblem::Sk, BwdProblem::D});
  b.grad.dv = make_tensor(dv.data(), DType::Float64, {BwdProblem::Hkv, BwdProblem::Sk, BwdProblem::Dv});
  attnkit::attention_backward(b);
  const double eps = 1e-6;
  auto check_grad = [&](std::vector<double>& x, const std::vector<double>& g) {
    for (size_t i = 0; i < x.size(); ++i) {
      const double old = x[i];
      x[i] = old + eps;
      const double hi = pr.loss();
      x[i] = old - eps;
      const double lo = pr.loss();
      x[i] = old;
      CHECK(std::fabs((hi - lo) / (2 * eps) - g[i]) < 1e-7);
    }
  };
  check_grad(pr.q, dq);
  check_grad(pr.k, dk);
  check_grad(pr.v, dv);

  // Errors name the argument: no lse, a dout of the wrong shape.
  auto kind_and_message = [&](attnkit::AttentionBackwardParams p, const char* name) {
    try {
      attnkit::attention_backward(p);
      CHECK(false);
    } catch (const attnkit::Error& e) {
      CHECK(e.kind() == attnkit::ErrorKind::Value);
      CHECK(std::string(e.what()).find(name) != std::string::npos);
    }
  };
  attnkit::AttentionBackwardParams no_lse = b;
  no_lse.fwd.lse = attnkit::TensorRef();
  kind_and_message(no_lse, "lse");
  attnkit::AttentionBackwardParams bad_dout = b;
  bad_dout.grad.dout =
      make_tensor(pr.dout.data(), DType::Float64, {BwdProblem::Hq, BwdProblem::Sq - 1, BwdProblem::Dv});
  kind_and_message(bad_dout, "dout");
}

static void test_choose_isa() {
  namespace c = attnkit::detail::cpu;
  using c::Isa;
  c::CpuFeatures none, v3, v4, v4bf;
  v3.avx2 = v3.fma = v3.bmi2 = v3.f16c = true;
  v4 = v3;
  v4.avx512f = v4.avx512bw = v4.avx512dq = v4.avx512vl = true;
  v4bf = v4;
  v4bf.avx512bf16 = true;
  CHECK(c::choose_isa(none, nullptr) == Isa::Generic);
  CHECK(c::choose_isa(v3, nullptr) == Isa::Avx2);
  // An AVX-512 CPU without BF16 (Skylake-SP, Ice Lake) runs the AVX-512 kernels (it ran AVX2 before
  // session 30), and so does one whose BF16 unit fails the self-check (avx512bf16 false then).
  CHECK(c::choose_isa(v4, nullptr) == Isa::Avx512);
  CHECK(c::choose_isa(v4bf, nullptr) == Isa::Avx512Bf16);
  c::CpuFeatures no_f16c = v4;
  no_f16c.f16c = false;
  CHECK(c::choose_isa(no_f16c, nullptr) == Isa::Generic);
  // ATTNKIT_CPU_ISA lowers, never raises; unknown names change nothing.
  CHECK(c::choose_isa(v4bf, "avx512") == Isa::Avx512);
  CHECK(c::choose_isa(v4bf, "avx2") == Isa::Avx2);
  CHECK(c::choose_isa(v4bf, "generic") == Isa::Generic);
  CHECK(c::choose_isa(v3, "avx512bf16") == Isa::Avx2);
  CHECK(c::choose_isa(v4, "avx512bf16") == Isa::Avx512);
  CHECK(c::choose_isa(v4, "AVX2") == Isa::Avx512);
  CHECK(c::choose_isa(v4, "") == Isa::Avx512);
}

int main() {
  test_choose_isa();
  test_conversions();
  test_block_sparse_and_lsh();
  test_philox();
  test_key_range();
  test_softmax_helpers();
  test_attention_and_errors();
  test_dla_math();
  test_dla_call();
  test_feature_maps();
  test_linear_family();
  test_rope();
  test_grad_math();
  test_finite_differences();
  std::printf("attnkit %s core tests: %d failure(s) (cuda built: %d, cpu isa: %s)\n", attnkit::version(), failures,
              attnkit::built_with_cuda() ? 1 : 0, attnkit::cpu_isa());
  return failures == 0 ? 0 : 1;
}
