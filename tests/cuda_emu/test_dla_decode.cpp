// Emulated CUDA DLA decode steps (cuda/dla_decode_v2.cu and cuda/dla_decode_v3.cu, whole files with their
// host sides, see run.sh; the first kernel, cuda/dla_decode.cu, is gone since session 27) vs the CPU backend's generic kernel (cpu/dla_decode.h) on the same
// DLAProblem (T = 1), and v3 vs v2 bit for bit (v3 is v2 in one kernel, each column tile's block deciding):
// outputs, scores, boundaries, merges and the output cache, for caches that are empty, partly full and full
// (joins, opens, merges), capacity 1, decay, both scores, odd sizes (v2's scalar fallback), 16-byte rows
// (v2's packs) and an input cache at a 4-byte offset (the fallback again), with blocks of kThreads = 256
// emulated threads (the kernels' block sums assume exactly that many) and a grid smaller than the items.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <vector>
#include "cuda/common.cuh"
#define __launch_bounds__(...)
template <class X>
X __shfl_down_sync(unsigned, X x, int) { return x; }  // dla_common.cuh's warp_sum (unused here)
struct dim3 {
  unsigned x, y, z;
  dim3(unsigned x_, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
template <class F>
void emu_launch(const dim3& grid, F&& f) {  // a 2-D grid: blocks (x, y) one after another
  for (unsigned by = 0; by < grid.y; ++by) {
    gridDim.y = grid.y;
    blockIdx.y = by;
    emu_launch(grid.x, f);  // sets gridDim.x / blockIdx.x
  }
  gridDim.y = 1;
  blockIdx.y = 0;
}
#include "cuda/dla_common.cuh"
#include "cuda/workspace.cuh"
#include "cuda/dla_decode_states.cuh"
namespace attnkit { namespace detail { namespace cuda { namespace dla {
unsigned grid_for(int64_t items, std::size_t, int) { return static_cast<unsigned>(std::min<int64_t>(items, 3)); }
}
}}}
#include "dla_decode_v2.emu.inc"
#include "dla_decode_v3.emu.inc"
#define DLA_HARNESS_SEED 7
#include "dla_harness.h"

// One decode step: B = 2, H = 2 items whose caches hold m = mcache[item] entries; kernel 0 = CPU, 2 = v2, 3 = v3
// (1 was the first kernel, gone since session 27: its buffers stay unused).
template <class T>
void run(const char* name, int64_t Dk, int64_t Dv, int64_t C, double tau, bool decay, bool drift,
         std::vector<int64_t> mcache, int64_t offset) {
  const int64_t B = 2, H = 2, SS = Dk * Dv;
  std::vector<T> q(B * H * Dk), k(B * H * Dk), v(B * H * Dv), lam(B * H * C), g(B * H);
  for (auto& x : q) x = T(urand() * 2 - 1);
  for (auto& x : k) x = T(urand() * 2 - 1);
  for (auto& x : v) x = T(urand() * 2 - 1);
  for (auto& x : lam) x = T(urand() * 2.0 / C);
  for (auto& x : g) x = T(-0.3 * urand());
  const bool with_cache = std::any_of(mcache.begin(), mcache.end(), [](int64_t m) { return m > 0; });
  std::vector<T> csbuf(B * H * C * SS + offset, T(0)), cinfo(B * H * C, T(0));
  T* cs = csbuf.data() + offset;
  std::vector<int64_t> ccount(B * H * C, 0), cstart(B * H * C, 0), csize(B * H, 0);
  int64_t position = 0;
  for (int64_t bh = 0; bh < B * H; ++bh) {  // every item at the same position: counts summing to it
    const int64_t m = mcache[bh];
    csize[bh] = m;
    int64_t next = 0;
    for (int64_t i = 0; i < m; ++i) {
      for (int64_t x = 0; x < SS; ++x) cs[(bh * C + i) * SS + x] = T(urand() * 2 - 1);
      ccount[bh * C + i] = i + 1 < m ? 1 + static_cast<int64_t>(urand() * 4) : 0;
      cinfo[bh * C + i] = T(3 * urand());
      cstart[bh * C + i] = next;
      next += ccount[bh * C + i];
    }
    if (m > 0) ccount[bh * C + m - 1] = 40 - next;  // the open entry: up to position 40
    if (m > 0) position = 40;
  }
  DLAProblem p;
  p.dtype = p.state_dtype = sizeof(T) == 8 ? DType::Float64 : DType::Float32;
  p.B = B; p.H = H; p.T = 1; p.Dk = Dk; p.Dv = Dv; p.C = C;
  auto v4 = [&](ViewN<4>& x, const void* d, int64_t E) {
    x.data = d; x.present = true; x.dtype = p.dtype;
    x.stride[0] = H * E; x.stride[1] = E; x.stride[2] = E; x.stride[3] = 1;
  };
  v4(p.q, q.data(), Dk); v4(p.k, k.data(), Dk); v4(p.v, v.data(), Dv); v4(p.lam, lam.data(), C);
  if (decay) {
    p.log_decay.data = g.data(); p.log_decay.present = true; p.log_decay.dtype = p.dtype;
    p.log_decay.stride[0] = H; p.log_decay.stride[1] = 1; p.log_decay.stride[2] = 1;
  }
  p.tau = tau; p.state_drift = drift; p.position = with_cache ? position : 0; p.chunk_size = 0;
  auto v3 = [&](ViewN<3>& x, const void* d, int64_t E, DType dt) {
    x.data = d; x.present = true; x.dtype = dt;
    x.stride[0] = H * E; x.stride[1] = E; x.stride[2] = 1;
  };
  auto o3 = [&](OutN<3>& x, void* d, int64_t E) {
    x.data = d; x.present = true;
    x.stride[0] = H * E; x.stride[1] = E; x.stride[2] = 1;
  };
  if (with_cache) {
    auto& ci = p.cache_in;
    ci.present = true;
    ci.states.data = cs; ci.states.present = true; ci.states.dtype = p.dtype;
    ci.states.stride[0] = H * C * SS; ci.states.stride[1] = C * SS; ci.states.stride[2] = SS; ci.states.stride[3] = Dv; ci.states.stride[4] = 1;
    v3(ci.counts, ccount.data(), C, DType::Int64); v3(ci.info, cinfo.data(), C, p.dtype); v3(ci.starts, cstart.data(), C, DType::Int64);
    ci.size.data = csize.data(); ci.size.present = true; ci.size.dtype = DType::Int64; ci.size.stride[0] = H; ci.size.stride[1] = 1;
  }
  Buf<T> bb[4];
  DLAProblem pp[4] = {p, p, p, p};
  for (int r = 0; r < 4; ++r) {
    Buf<T>& o = bb[r];
    o.out.assign(B * H * Dv, T(-7)); o.states.assign(B * H * C * SS, T(-7)); o.info.assign(B * H * C, T(-7));
    o.scores.assign(B * H, T(-7)); o.counts.assign(B * H * C, -7); o.starts.assign(B * H * C, -7);
    o.size.assign(B * H, -7); o.merged.assign(B * H, -7); o.bnd.assign(B * H, 7);
    DLAProblem& x = pp[r];
    x.out.data = o.out.data(); x.out.present = true;
    x.out.stride[0] = H * Dv; x.out.stride[1] = Dv; x.out.stride[2] = Dv; x.out.stride[3] = 1;
    auto& co = x.cache_out;
    co.states.data = o.states.data(); co.states.present = true;
    co.states.stride[0] = H * C * SS; co.states.stride[1] = C * SS; co.states.stride[2] = SS; co.states.stride[3] = Dv; co.states.stride[4] = 1;
    o3(co.counts, o.counts.data(), C); o3(co.info, o.info.data(), C); o3(co.starts, o.starts.data(), C);
    co.size.data = o.size.data(); co.size.present = true; co.size.stride[0] = H; co.size.stride[1] = 1;
    o3(x.scores, o.scores.data(), 1); o3(x.boundaries, o.bnd.data(), 1); o3(x.merged, o.merged.data(), 1);
  }
  if (!cuda::dla::takes_decode_path(pp[1])) throw std::runtime_error("not the decode path");
  cpu::dla_generic(pp[0]);
  cuda::dla::launch_decode_v2<T>(pp[2], nullptr);
  if (!cuda::dla::launch_decode_v3<T>(pp[3], nullptr)) throw std::runtime_error("v3 refused the problem");
  auto cmp = [](const std::vector<T>& a, const std::vector<T>& b) -> double {
    double m = 0;
    for (size_t i = 0; i < a.size(); ++i) {
      if (std::isnan((double)a[i]) != std::isnan((double)b[i])) return (double)INFINITY;
      if (!std::isnan((double)a[i])) m = std::max(m, std::fabs((double)a[i] - (double)b[i]) / (1 + std::fabs((double)b[i])));
    }
    return m;
  };
  const double tol = sizeof(T) == 8 ? 1e-10 : 1e-4;
  bool ok = true;
  double emax = 0;
  for (int r = 2; r < 4; ++r) {  // 1: the first kernel (cuda/dla_decode.cu), gone since session 27
    const Buf<T>&a = bb[r], &c = bb[0];
    const double e = std::max({cmp(a.out, c.out), cmp(a.states, c.states), cmp(a.info, c.info), cmp(a.scores, c.scores)});
    const bool same = a.counts == c.counts && a.starts == c.starts && a.size == c.size && a.merged == c.merged && a.bnd == c.bnd;
    emax = std::max(emax, e);
    if (!(e <= tol && same)) {
      ok = false;
      std::printf("  kernel v%d: err %.3g%s\n", r, e, same ? "" : " DECISIONS / ENTRIES DIFFER");
    }
  }
  // v3 runs v2's decisions and v2's state pass: every output bit for bit (the poisoned -7 / 7 entries too:
  // both write every element)
  {
    const Buf<T>&a = bb[3], &c = bb[2];
    if (!(a.out == c.out && a.states == c.states && a.info == c.info && a.scores == c.scores && a.counts == c.counts &&
          a.starts == c.starts && a.size == c.size && a.merged == c.merged && a.bnd == c.bnd)) {
      ok = false;
      std::printf("  v3 and v2 differ\n");
    }
  }
  int64_t nb = 0, nm = 0;
  for (auto x : bb[0].bnd) nb += x;
  for (auto x : bb[0].merged) nm += x >= 0;
  fails += !ok;
  std::printf("%-34s Dk=%2lld Dv=%2lld C=%2lld %s off %lld bnd %lld mrg %lld err %.3g %s\n", name, (long long)Dk,
              (long long)Dv, (long long)C, sizeof(T) == 8 ? "f64" : "f32", (long long)offset, (long long)nb,
              (long long)nm, emax, ok ? "ok" : "FAIL");
}

template <class T> void all() {
  const double inf = INFINITY;
  run<T>("empty caches", 8, 8, 3, 0.6, false, false, {0, 0, 0, 0}, 0);
  run<T>("partly full, tau -1 (opens)", 8, 16, 4, -1.0, true, false, {1, 2, 3, 2}, 0);
  run<T>("partly full, tau inf (joins)", 16, 16, 4, inf, true, true, {1, 2, 3, 4}, 0);
  run<T>("full, tau -1 (merges)", 8, 16, 5, -1.0, false, false, {5, 5, 5, 5}, 0);
  run<T>("full, decay, drift (merges)", 12, 8, 4, -1.0, true, true, {4, 4, 4, 4}, 0);
  run<T>("full, unaligned cache (fallback)", 8, 16, 4, -1.0, true, false, {4, 4, 4, 4}, 1);
  run<T>("odd sizes (fallback), mixed m", 7, 13, 5, -1.0, true, false, {5, 1, 3, 5}, 0);
  run<T>("Dv 36: 2 column tiles", 5, 36, 3, -1.0, false, false, {3, 3, 2, 3}, 0);
  run<T>("Dk 40 > 32 rows, C 16", 40, 8, 16, -1.0, true, false, {16, 16, 9, 16}, 0);
  run<T>("C=1", 8, 8, 1, 0.3, true, false, {1, 1, 1, 1}, 0);
  run<T>("Dk 72 Dv 60: v3's 2 decision batches", 72, 60, 3, -1.0, true, false, {3, 2, 3, 1}, 0);
  run<T>("Dv=1", 9, 1, 3, -1.0, true, false, {3, 2, 3, 3}, 0);
  if (sizeof(T) == 8)
    for (double tau : {0.5, 1.0, 1.5}) run<T>("mixed tau", 8, 8, 4, tau, true, false, {4, 3, 4, 2}, 0);
}
int main() {
  g_emu_threads = attnkit::detail::cuda::dla::kThreads;
  all<double>();
  all<float>();
  {  // a capacity past v3's shared buffers: v3 launches nothing and says so (dla.cu then takes v2)
    DLAProblem p;
    p.B = p.H = 1; p.T = 1; p.Dk = p.Dv = 4; p.C = 257;
    const bool took = cuda::dla::launch_decode_v3<float>(p, nullptr);
    std::printf("v3 with capacity 257: %s\n", took ? "launched (FAIL)" : "refused, ok");
    fails += took;
  }
  std::printf("%d failures\n", fails);
  return fails != 0;
}
