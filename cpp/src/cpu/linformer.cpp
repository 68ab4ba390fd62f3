// Linformer on the CPU: project keys and values along the sequence (per-ISA micro-kernels,
// cpu/linformer_kernel.h), then run the exact-attention kernel on (q, K', V'): Linformer = projection +
// exact kernel, with no softmax code of its own. And linformer_projection: the random projection E, in
// double precision from the shared Philox generator, rounded once (threads split it by element, so the
// result does not depend on their number).

#include <cmath>

#include "attnkit/math/random.h"
#include "cpu/kernel_common.h"
#include "backend.h"
#include "cpu/isa_entry_points.h"
#include "workspace.h"

namespace attnkit {
namespace detail {
namespace cpu {

void linformer_attention(const LinformerProblem& p) {
  AttnProblem a = p.attn;
  if (a.empty_output()) return;
  const std::size_t es = dtype_size(a.dtype);
  const std::size_t kn = static_cast<std::size_t>(a.B * a.Hkv * p.P * a.D);
  const std::size_t vn = static_cast<std::size_t>(a.B * a.Hkv * p.P * a.Dv);
  Workspace ws(Workspace::need<char>(kn * es) + Workspace::need<char>(vn * es), "Linformer's projected keys and values");
  void* kproj = ws.take<char>(kn * es);
  void* vproj = ws.take<char>(vn * es);
  linformer_project(p, kproj, vproj);
  a.k = contiguous_view(kproj, a.dtype, a.B, a.Hkv, p.P, a.D);
  a.v = contiguous_view(vproj, a.dtype, a.B, a.Hkv, p.P, a.Dv);
  attention(a);
}

void linformer_projection(const LinformerProjectionProblem& p) {
  const int64_t n = p.P * p.Sk;  // entries per head, normal index j * P + pos
  const int64_t pairs = (n + 1) / 2;
  const double inv_sqrt_p = 1.0 / std::sqrt(static_cast<double>(p.P));
  auto put = [&](int64_t h, int64_t i, double z) {
    const int64_t pos = i % p.P, j = i / p.P;
    store_float(p.out, p.out_dtype, h * p.out_stride[0] + pos * p.out_stride[1] + j * p.out_stride[2], z * inv_sqrt_p);
  };
#if defined(_OPENMP)
#pragma omp parallel for schedule(static) collapse(2) if (p.H * pairs > 4096)
#endif
  for (int64_t h = 0; h < p.H; ++h)
    for (int64_t k = 0; k < pairs; ++k) {
      double z0, z1;
      math::normal_pair(p.seed, math::kStreamLinformer + static_cast<uint64_t>(h), static_cast<uint64_t>(k), &z0, &z1);
      put(h, 2 * k, z0);
      if (2 * k + 1 < n) put(h, 2 * k + 1, z1);
    }
}


}  // namespace cpu
}  // namespace detail
}  // namespace attnkit
