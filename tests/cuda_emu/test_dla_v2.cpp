// Emulated CUDA DLA prefill v4 (cuda/dla_prefill_v4.cuh's passes A1, A2, B, C1 (states at every chunk start) and C2
// (readout, every chunk at once), inside cuda/dla_prefill_v2.cu's body, see run.sh) vs the CPU backend's generic
// kernel on the same DLAProblem: outputs, scores, boundaries, merges and the cache, for every column split ns,
// chunk lengths, capacities (1, 2, 3, 5, > T, 32, 33), decay, both scores, a cache carried in, and thresholds that
// give every token a boundary, none, or a mix (float64 there: decisions near tau); and v4 bit-equal to itself
// under other grids, C2 column splits and C1/C2 item groups (launch-configuration independence). Until session 27
// it also ran the v2 kernel body and v3 (its warp scan) and checked v4 == v3 == v2 bit for bit; those kernels
// were removed then. v5 (dla_prefill_v5.cuh: v4 with C1 + C2 fused into one pass, the states of a column slice in
// shared memory) is checked == v4 bit for bit under two column splits and grids.
#include <algorithm>
#include <barrier>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <vector>
#include "cuda/common.cuh"
#define __launch_bounds__(x)
// Warp operations for v3's warp scan, which runs on warp 0 where the block has at least 32 threads: every
// lane of warp 0 posts its value, the 32 meet at a barrier, each reads, all meet again (the other threads of
// a larger block wait at the next __syncthreads meanwhile).
static std::barrier<>& emu_warp_bar() {
  static std::barrier<> b(32);
  return b;
}
static unsigned char g_emu_wbuf[32][8];
static void emu_warp_check() {
  if (blockDim.x < 32 || threadIdx.x >= 32) throw std::runtime_error("emulated warp operation outside warp 0");
}
template <class X>
X emu_exchange(X x, unsigned src) {
  emu_warp_check();
  std::memcpy(g_emu_wbuf[threadIdx.x], &x, sizeof(X));
  emu_warp_bar().arrive_and_wait();
  X r;
  std::memcpy(&r, g_emu_wbuf[src], sizeof(X));
  emu_warp_bar().arrive_and_wait();
  return r;
}
template <class X>
X __shfl_sync(unsigned, X x, int src) { return emu_exchange(x, static_cast<unsigned>(src) & 31u); }
template <class X>
X __shfl_down_sync(unsigned, X x, unsigned d) {
  const unsigned s = threadIdx.x + d;
  return emu_exchange(x, s < 32 ? s : threadIdx.x);  // out of range: the lane's own value, as CUDA
}
/// Every lane's v, in lane order (one exchange round).
static void emu_gather(unsigned v, unsigned (&all)[32]) {
  emu_warp_check();
  std::memcpy(g_emu_wbuf[threadIdx.x], &v, sizeof v);
  emu_warp_bar().arrive_and_wait();
  for (unsigned l = 0; l < 32; ++l) std::memcpy(&all[l], g_emu_wbuf[l], sizeof v);
  emu_warp_bar().arrive_and_wait();
}
static unsigned __ballot_sync(unsigned, bool pred) {
  unsigned all[32], r = 0;
  emu_gather(pred ? 1u : 0u, all);
  for (unsigned l = 0; l < 32; ++l) r |= all[l] << l;
  return r;
}
static unsigned __reduce_min_sync(unsigned, unsigned v) {
  unsigned all[32], r = ~0u;
  emu_gather(v, all);
  for (unsigned l = 0; l < 32; ++l) r = std::min(r, all[l]);
  return r;
}
static int __ffs(int x) { return x ? __builtin_ctz(static_cast<unsigned>(x)) + 1 : 0; }
static void __syncwarp(unsigned = 0xffffffffu) {
  emu_warp_check();
  emu_warp_bar().arrive_and_wait();
}
static long long __double_as_longlong(double d) {
  long long r;
  std::memcpy(&r, &d, sizeof r);
  return r;
}
struct float4 { float x, y, z, w; };  // the kernel's 16-byte shared-memory loads
#include "dla_v2_body.inc"
#define DLA_HARNESS_SEED 11
#include "dla_harness.h"
static bool g_zero_keys = false;  // every key 0: every score exactly 0, so every merge ratio ties

template <class T>
void run(const char* name, int64_t T_, int64_t Dk, int64_t Dv, int64_t C, int64_t chunk, double tau, bool decay,
         bool drift, bool with_cache, int64_t ns) {
  const int64_t B = 2, H = 2;
  // Piecewise-stationary tokens (segments of 4..9 tokens around a per-segment direction) so that scores
  // under a mid tau stay away from it in most places.
  std::vector<T> q(B * H * T_ * Dk), k(B * H * T_ * Dk), v(B * H * T_ * Dv), lam(B * H * T_ * C), g(B * H * T_);
  for (int64_t bh = 0; bh < B * H; ++bh) {
    std::vector<double> ck(Dk), cv(Dv);
    int64_t left = 0;
    for (int64_t t = 0; t < T_; ++t) {
      if (left == 0) {
        for (auto& x : ck) x = urand() * 2 - 1;
        for (auto& x : cv) x = urand() * 2 - 1;
        left = 4 + static_cast<int64_t>(urand() * 6);
      }
      --left;
      for (int64_t d = 0; d < Dk; ++d) {
        k[(bh * T_ + t) * Dk + d] = g_zero_keys ? T(0) : T(ck[d] + 0.1 * (urand() * 2 - 1));
        q[(bh * T_ + t) * Dk + d] = T(urand() * 2 - 1);
      }
      for (int64_t e = 0; e < Dv; ++e) v[(bh * T_ + t) * Dv + e] = T(cv[e] + 0.1 * (urand() * 2 - 1));
      for (int64_t c = 0; c < C; ++c) lam[(bh * T_ + t) * C + c] = T(urand() * 2.0 / C);
      g[bh * T_ + t] = T(-0.2 * urand());
    }
  }
  // A cache carried in: m entries of random states (m = min(C, 3)).
  const int64_t SS = Dk * Dv;
  std::vector<T> cs(B * H * C * SS, T(0)), cinfo(B * H * C, T(0));
  std::vector<int64_t> ccount(B * H * C, 0), cstart(B * H * C, 0), csize(B * H, 0);
  const int64_t mcache = std::min<int64_t>(C, 3), position = with_cache ? 20 : 0;
  if (with_cache)
    for (int64_t bh = 0; bh < B * H; ++bh) {
      csize[bh] = mcache;
      for (int64_t i = 0; i < mcache; ++i) {
        for (int64_t x = 0; x < SS; ++x) cs[(bh * C + i) * SS + x] = T(urand() * 2 - 1);
        ccount[bh * C + i] = 5 + i;
        cinfo[bh * C + i] = T(3 * urand());
        cstart[bh * C + i] = i == 0 ? 0 : 5 * i;
      }
    }
  DLAProblem p;
  p.dtype = p.state_dtype = sizeof(T) == 8 ? DType::Float64 : DType::Float32;
  p.B = B; p.H = H; p.T = T_; p.Dk = Dk; p.Dv = Dv; p.C = C;
  auto v4 = [&](ViewN<4>& x, const void* d, int64_t E) {
    x.data = d; x.present = true; x.dtype = p.dtype;
    x.stride[0] = H * T_ * E; x.stride[1] = T_ * E; x.stride[2] = E; x.stride[3] = 1;
  };
  v4(p.q, q.data(), Dk); v4(p.k, k.data(), Dk); v4(p.v, v.data(), Dv); v4(p.lam, lam.data(), C);
  if (decay) {
    p.log_decay.data = g.data(); p.log_decay.present = true; p.log_decay.dtype = p.dtype;
    p.log_decay.stride[0] = H * T_; p.log_decay.stride[1] = T_; p.log_decay.stride[2] = 1;
  }
  p.tau = tau; p.state_drift = drift; p.position = position; p.chunk_size = chunk;
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
    ci.states.data = cs.data(); ci.states.present = true; ci.states.dtype = p.dtype;
    ci.states.stride[0] = H * C * SS; ci.states.stride[1] = C * SS; ci.states.stride[2] = SS; ci.states.stride[3] = Dv; ci.states.stride[4] = 1;
    v3(ci.counts, ccount.data(), C, DType::Int64); v3(ci.info, cinfo.data(), C, p.dtype); v3(ci.starts, cstart.data(), C, DType::Int64);
    ci.size.data = csize.data(); ci.size.present = true; ci.size.dtype = DType::Int64; ci.size.stride[0] = H; ci.size.stride[1] = 1;
  }
  Buf<T> b2, b4, b5, b6, b7;
  for (Buf<T>* bb : {&b2, &b4, &b5, &b6, &b7}) {
    bb->out.assign(B * H * T_ * Dv, T(-7)); bb->states.assign(B * H * C * SS, T(-7)); bb->info.assign(B * H * C, T(-7));
    bb->scores.assign(B * H * T_, T(-7)); bb->counts.assign(B * H * C, -7); bb->starts.assign(B * H * C, -7);
    bb->size.assign(B * H, -7); bb->merged.assign(B * H * T_, -7); bb->bnd.assign(B * H * T_, 7);
  }
  auto outs = [&](DLAProblem& pp, Buf<T>& bb) {
    pp.out.data = bb.out.data(); pp.out.present = true;
    pp.out.stride[0] = H * T_ * Dv; pp.out.stride[1] = T_ * Dv; pp.out.stride[2] = Dv; pp.out.stride[3] = 1;
    auto& co = pp.cache_out;
    co.states.data = bb.states.data(); co.states.present = true;
    co.states.stride[0] = H * C * SS; co.states.stride[1] = C * SS; co.states.stride[2] = SS; co.states.stride[3] = Dv; co.states.stride[4] = 1;
    o3(co.counts, bb.counts.data(), C); o3(co.info, bb.info.data(), C); o3(co.starts, bb.starts.data(), C);
    co.size.data = bb.size.data(); co.size.present = true; co.size.stride[0] = H; co.size.stride[1] = 1;
    o3(pp.scores, bb.scores.data(), T_); o3(pp.boundaries, bb.bnd.data(), T_); o3(pp.merged, bb.merged.data(), T_);
  };
  DLAProblem p2 = p, p4 = p, p5 = p, p6 = p, p7 = p;
  outs(p2, b2); outs(p4, b4); outs(p5, b5); outs(p6, b6); outs(p7, b7);
  // v4: passes A and B, then C1 (the states at every chunk start, serial over chunks) and C2 (the readout, every
  // chunk at once) over item groups of `gitems` (launch_prefill_v4's loop), grids smaller than the work
  // (grid-stride loops); ns2 = C2's column split. Run twice with other grids, splits and groups: the same bits.
  // v5 (dla_prefill_v5.cuh): the same A1, A2 and B, then the fused pass C (grid gC2, ns2 column slices) instead of
  // C1 and C2; its bits must be v4's.
  auto run_v4 = [&](DLAProblem& pp, unsigned gA1, unsigned gA, unsigned gB, unsigned gC1, unsigned gC2, int64_t ns2,
                    int64_t gitems, bool v5 = false) {
    using namespace cuda::dla;
    v2::Lay lay = v2::make_lay(pp, sizeof(T), ns);
    const v2::Lay lay1 = v2::make_lay(pp, sizeof(T), ns, 1), lay2 = v2::make_lay(pp, sizeof(T), 1, 2);
    const std::size_t items = static_cast<std::size_t>(B * H), TT = static_cast<std::size_t>(T_);
    const int64_t nch = (T_ + lay.L - 1) / lay.L;
    std::vector<T> slotsA(gA * SS + 1, T(NAN)), Ibuf(items * TT + 1, T(NAN));
    std::vector<T> chs(static_cast<std::size_t>(gitems * (nch + 1) * C * SS) + 1, T(NAN));
    std::vector<int32_t> mc(static_cast<std::size_t>(gitems * (nch + 1)) + 1, -7);
    const std::size_t gch = static_cast<std::size_t>(gitems * nch), LL = static_cast<std::size_t>(lay.L);
    std::vector<T> tab(gch * LL * LL + 1, T(NAN));
    std::vector<double> tsuf(gch * LL + 1, NAN), tbv(gch * LL + 1, NAN);
    std::vector<uint8_t> Obuf(items * TT + 1, 7);
    std::vector<int32_t> Mbuf(items * TT + 1, -7);
    const std::size_t ent = static_cast<std::size_t>(C) * (2 * sizeof(int64_t) + sizeof(T));
    std::vector<double> entb(gB * ent / sizeof(double) + 1, NAN);
    v2::V4Buf buf{};
    buf.I = Ibuf.data(); buf.O = Obuf.data(); buf.M = Mbuf.data();
    buf.ent = reinterpret_cast<char*>(entb.data()); buf.ent_bytes = ent;
    buf.slotsA = reinterpret_cast<char*>(slotsA.data()); buf.slotA_bytes = SS * sizeof(T);
    buf.chs = reinterpret_cast<char*>(chs.data()); buf.mc = mc.data(); buf.nch = nch;
    buf.tab = tab.data(); buf.tsuf = tsuf.data(); buf.tbv = tbv.data();
    buf.ncol2 = (Dv + ns2 - 1) / ns2;
    buf.ns2 = (Dv + buf.ncol2 - 1) / buf.ncol2;
    std::vector<double> smem_d(lay.smem / sizeof(double) + 2);
    char* smem = reinterpret_cast<char*>(smem_d.data());
    auto fresh = [&] { std::memset(smem_d.data(), 0xff, smem_d.size() * sizeof(double)); };
    if (lay1.smem > lay.smem || lay2.smem > lay.smem) throw std::runtime_error("C1 / C2 layout larger than A's");
    for (int64_t i0 = 0; i0 < B * H; i0 += gitems) {  // A1 (every chunk's table), then A2 (the chains)
      buf.item0 = i0;
      buf.nitems = std::min<int64_t>(gitems, B * H - i0);
      std::fill(tab.begin(), tab.end(), T(NAN));  // a group never reads another's tables
      std::fill(tsuf.begin(), tsuf.end(), NAN);
      std::fill(tbv.begin(), tbv.end(), NAN);
      fresh();
      if (nch > 0) emu_launch(gA1, [&] { v2::v4_pass_a1<T>(pp, lay, buf, smem); });
      fresh();
      if (nch > 0) emu_launch(std::min<unsigned>(gA, static_cast<unsigned>(buf.nitems)),
                              [&] { v2::v4_pass_a2<T>(pp, lay, buf, smem); });
    }
    emu_launch(gB, [&] { v2::v4_pass_b<T>(pp, buf); });
    if (v5) {
      const std::size_t st_off = (lay2.smem + 15) / 16 * 16;
      std::vector<double> sm5((st_off + static_cast<std::size_t>(C * Dk * buf.ncol2) * sizeof(T)) / sizeof(double) + 2);
      std::memset(sm5.data(), 0xff, sm5.size() * sizeof(double));
      buf.item0 = 0;
      buf.nitems = B * H;
      emu_launch(gC2, [&] { v2::v5_pass_c<T>(pp, lay2, buf, reinterpret_cast<char*>(sm5.data()), st_off); });
      return;
    }
    for (int64_t i0 = 0; i0 < B * H; i0 += gitems) {
      buf.item0 = i0;
      buf.nitems = std::min<int64_t>(gitems, B * H - i0);
      std::fill(chs.begin(), chs.end(), T(NAN));  // a group never reads another's arrays
      fresh();
      emu_launch(gC1, [&] { v2::v4_pass_c1<T>(pp, lay1, buf, smem); });
      fresh();
      if (nch > 0) emu_launch(gC2, [&] { v2::v4_pass_c2<T>(pp, lay2, buf, smem); });
    }
  };
  run_v4(p4, 5, 2, 3, 3, 5, 1, B * H);
  if (g_emu_threads < 32)  // the launch checks on the cheap block sizes (the 32-thread runs cover the warp paths)
    run_v4(p5, 2, 1, 1, 2, 7, 3, 1);
  else
    b5 = b4;
  run_v4(p6, 5, 2, 3, 3, 3, 1, B * H, true);  // v5: one slice, fewer blocks than work units
  run_v4(p7, 2, 1, 1, 2, 2, ns == 1 ? 2 : ns + 2, B * H, true);  // v5: other slices (ns2 > Dv: clamped), grid
  cpu::dla_generic(p2);
  auto cmp = [](const std::vector<T>& a, const std::vector<T>& b) -> double {
    double m = 0;
    for (size_t i = 0; i < a.size(); ++i) {
      if (std::isnan((double)a[i]) != std::isnan((double)b[i])) return (double)INFINITY;
      if (!std::isnan((double)a[i])) m = std::max(m, std::fabs((double)a[i] - (double)b[i]) / (1 + std::fabs((double)b[i])));
    }
    return m;
  };
  const double tol = sizeof(T) == 8 ? 1e-10 : 1e-4;
  const double e = std::max({cmp(b4.out, b2.out), cmp(b4.states, b2.states), cmp(b4.info, b2.info), cmp(b4.scores, b2.scores)});
  const bool same = b4.counts == b2.counts && b4.starts == b2.starts && b4.size == b2.size && b4.merged == b2.merged &&
                    b4.bnd == b2.bnd;
  int64_t nb = 0, nm = 0;
  for (auto x : b2.bnd) nb += x;
  for (auto x : b2.merged) nm += x >= 0;
  auto bits = [](const auto& a, const auto& b) {
    return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(a[0])) == 0;
  };
  const bool v4launch = bits(b4.out, b5.out) && bits(b4.states, b5.states) && bits(b4.info, b5.info) &&
                        bits(b4.scores, b5.scores) && b4.counts == b5.counts && b4.starts == b5.starts &&
                        b4.size == b5.size && b4.merged == b5.merged && b4.bnd == b5.bnd;
  const bool v5same = bits(b4.out, b6.out) && bits(b4.states, b6.states) && bits(b4.info, b6.info) &&
                      bits(b4.scores, b6.scores) && b4.counts == b6.counts && b4.starts == b6.starts &&
                      b4.size == b6.size && b4.merged == b6.merged && b4.bnd == b6.bnd && bits(b6.out, b7.out) &&
                      bits(b6.states, b7.states) && b6.size == b7.size;
  const bool ok = e <= tol && same && v4launch && v5same;
  fails += !ok;
  std::printf("%-40s T=%3lld Dk=%2lld Dv=%2lld C=%2lld L=%2lld ns=%lld %s bnd %3lld mrg %3lld err %.3g %s%s\n", name,
              (long long)T_, (long long)Dk, (long long)Dv, (long long)C, (long long)chunk, (long long)ns,
              sizeof(T) == 8 ? "f64" : "f32", (long long)nb, (long long)nm, e,
              !same ? "DECISIONS DIFFER " : !v4launch ? "V4 BITS DEPEND ON THE LAUNCH " : !v5same ? "V5 BITS DIFFER FROM V4 " : "",
              ok ? "ok" : "FAIL");
}

/// Cases aimed at pass B's warp merge chain (it runs where the block has 32 threads or more; C > 32: thread 0).
template <class T> void v3_cases() {
  run<T>("C=16 every token a boundary", 200, 8, 8, 16, 0, -1.0, false, false, true, 2);
  run<T>("C=32 every token a boundary cache", 150, 6, 5, 32, 0, -1.0, true, false, true, 1);
  run<T>("C=33 (pass B: thread 0's chain)", 90, 6, 5, 33, 0, -1.0, false, false, true, 1);
  run<T>("Dv=16 Dk=12 chunk 30 drift", 100, 12, 16, 4, 30, -1.0, false, true, true, 1);
  g_zero_keys = true;  // every ratio ties (the oldest pair wins); the carried states tell the merges apart
  run<T>("zero keys, ties, cache", 100, 8, 8, 6, 0, -1.0, false, false, true, 2);
  run<T>("zero keys, ties, cache, chunk 9, decay", 100, 8, 8, 5, 9, -1.0, true, false, true, 1);
  g_zero_keys = false;
}

template <class T> void all() {
  const double inf = INFINITY;
  for (int64_t ns : {1, 2, 3}) {
    run<T>("every token a boundary", 37, 7, 6, 5, 0, -1.0, false, false, false, ns);
    run<T>("no boundary (tau inf)", 37, 7, 6, 5, 8, inf, true, false, true, ns);
    run<T>("C=1", 29, 5, 9, 1, 6, 0.3, true, false, true, ns);
  }
  run<T>("C=2 chunk 5 decay drift cache", 41, 7, 6, 2, 5, -1.0, true, true, true, 2);
  run<T>("C > T", 13, 7, 6, 20, 0, -1.0, false, false, false, 2);
  run<T>("T=0 with cache", 0, 7, 6, 3, 0, 0.6, false, false, true, 2);
  run<T>("T=1 chunk 3 (not the decode path)", 1, 7, 6, 3, 3, 0.6, true, false, true, 2);
  run<T>("odd sizes chunk 7", 45, 9, 13, 3, 7, -1.0, true, false, true, 3);
  run<T>("chunk 1", 23, 7, 6, 3, 1, -1.0, true, false, true, 2);
  run<T>("chunk 1 tau inf", 23, 8, 8, 3, 1, INFINITY, true, true, true, 2);
  run<T>("big tiles default chunk", 150, 20, 19, 4, 0, -1.0, true, false, true, 2);
  v3_cases<T>();
  if (sizeof(T) == 8) {  // mixed decisions: double only (scores near tau may round apart in float)
    for (double tau : {0.4, 0.8, 1.1}) {
      run<T>("mixed tau", 90, 7, 6, 4, 0, tau, false, false, false, 2);
      run<T>("mixed tau decay cache", 90, 7, 6, 4, 11, tau, true, false, true, 1);
      run<T>("mixed tau drift decay cache", 90, 16, 12, 3, 0, tau, true, true, true, 3);
      run<T>("mixed tau big", 150, 20, 19, 5, 0, tau, true, false, true, 2);
      run<T>("mixed tau chunk 1", 40, 7, 6, 3, 1, tau, true, false, true, 1);
    }
  }
}
int main() {
  for (unsigned th : {1u, 5u, 32u}) { g_emu_threads = th; all<double>(); all<float>(); }
  g_emu_threads = 40;  // warp 0 of passes A / C with threads 32..39 beside it
  v3_cases<double>();
  v3_cases<float>();
  std::printf("%d failures\n", fails);
  return fails != 0;
}
