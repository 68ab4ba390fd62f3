// Concurrent calls: several std::threads call attnkit at once on shared read-only inputs, each with its
// own outputs, and every result must equal (bit for bit) the result of a call made alone. Run in the
// normal ctest suite, under AddressSanitizer, and under ThreadSanitizer (.ci/run), where it is the test
// that a call keeps no shared mutable state (thread-local scratch, layouts, rotations, the thread cap).
#include <attnkit/attnkit.h>

#include <cstdio>
#include <cstring>
#include <random>
#include <thread>
#include <vector>

namespace {

constexpr int64_t B = 2, H = 4, S = 96, D = 16;

struct Inputs {
  std::vector<float> q, k, v;
  attnkit::BlockLayout layout = attnkit::BlockLayout::sliding_window(S, 16, 1, true, 1);
  Inputs() : q(B * H * S * D), k(q.size()), v(q.size()) {
    std::mt19937 gen(7);
    std::normal_distribution<float> nd;
    for (auto* x : {&q, &k, &v})
      for (float& e : *x) e = nd(gen);
  }
  attnkit::TensorRef t(std::vector<float>& x) const {
    return attnkit::make_tensor(x.data(), attnkit::DType::Float32, {B, H, S, D});
  }
};

/// One round of every mechanism into out[0..4].
void round(Inputs& in, std::vector<std::vector<float>>& out) {
  out.assign(4, std::vector<float>(B * H * S * D));
  attnkit::AttentionParams a;
  a.q = in.t(in.q), a.k = in.t(in.k), a.v = in.t(in.v), a.out = in.t(out[0]);
  a.causal = true;
  attnkit::attention(a);
  attnkit::BlockSparseParams s;
  s.q = a.q, s.k = a.k, s.v = a.v, s.out = in.t(out[1]), s.layout = in.layout.ref(), s.causal = true;
  attnkit::block_sparse_attention(s);
  attnkit::LshAttentionParams l;
  l.q = a.q, l.k = a.k, l.v = a.v, l.out = in.t(out[2]), l.num_buckets = 4, l.num_hashes = 2, l.seed = 3;
  attnkit::lsh_attention(l);
  attnkit::LinearAttentionParams n;
  n.q = a.q, n.k = a.k, n.v = a.v, n.out = in.t(out[3]);
  attnkit::linear_attention(n);
}

}  // namespace

int main() {
  Inputs in;
  std::vector<std::vector<float>> want;
  round(in, want);
  constexpr int kThreads = 6, kRounds = 4;
  std::vector<int> bad(kThreads, 0);
  std::vector<std::thread> pool;
  for (int t = 0; t < kThreads; ++t)
    pool.emplace_back([&, t] {
      std::vector<std::vector<float>> got;
      for (int r = 0; r < kRounds; ++r) {
        round(in, got);
        for (size_t m = 0; m < want.size(); ++m)
          if (std::memcmp(got[m].data(), want[m].data(), want[m].size() * sizeof(float)) != 0) ++bad[t];
      }
    });
  for (auto& th : pool) th.join();
  int failures = 0;
  for (int t = 0; t < kThreads; ++t) failures += bad[t];
  if (failures) std::fprintf(stderr, "concurrent calls: %d results differ from a lone call\n", failures);
  return failures;
}
