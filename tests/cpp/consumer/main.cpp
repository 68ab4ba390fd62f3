// Downstream use of attnkit: one causal attention call, checked against a direct computation.
#include <attnkit/attnkit.h>

#include <cmath>
#include <cstdio>
#include <vector>

int main() {
  const int64_t B = 1, H = 2, S = 5, D = 4;
  std::vector<float> q(B * H * S * D), k(q.size()), v(q.size()), out(q.size());
  for (size_t i = 0; i < q.size(); ++i) {
    q[i] = std::sin(0.3f * i);
    k[i] = std::cos(0.7f * i);
    v[i] = 0.1f * static_cast<float>(i % 7);
  }
  attnkit::AttentionParams p;
  p.q = attnkit::make_tensor(q.data(), attnkit::DType::Float32, {B, H, S, D});
  p.k = attnkit::make_tensor(k.data(), attnkit::DType::Float32, {B, H, S, D});
  p.v = attnkit::make_tensor(v.data(), attnkit::DType::Float32, {B, H, S, D});
  p.out = attnkit::make_tensor(out.data(), attnkit::DType::Float32, {B, H, S, D});
  p.causal = true;
  attnkit::attention(p);

  double max_err = 0;
  for (int64_t h = 0; h < H; ++h)
    for (int64_t i = 0; i < S; ++i) {
      const float* qi = &q[(h * S + i) * D];
      std::vector<double> w(i + 1);
      double m = -1e300, sum = 0;
      for (int64_t j = 0; j <= i; ++j) {
        double s = 0;
        for (int64_t d = 0; d < D; ++d) s += qi[d] * k[(h * S + j) * D + d];
        w[j] = s / std::sqrt(static_cast<double>(D));
        m = std::fmax(m, w[j]);
      }
      for (auto& x : w) sum += (x = std::exp(x - m));
      for (int64_t d = 0; d < D; ++d) {
        double o = 0;
        for (int64_t j = 0; j <= i; ++j) o += w[j] / sum * v[(h * S + j) * D + d];
        max_err = std::fmax(max_err, std::fabs(o - out[(h * S + i) * D + d]));
      }
    }
  std::printf("attnkit %s (cpu kernels %s): max |out - direct| = %.3g\n", attnkit::version(), attnkit::cpu_isa(),
              max_err);
  return max_err < 1e-5 ? 0 : 1;
}
