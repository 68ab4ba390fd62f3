// Linformer on the CPU: project keys and values along the sequence (per-ISA micro-kernels,
// cpu/linformer_kernel.h), then run the exact-attention kernel on (q, K', V'): Linformer = projection +
// exact kernel, with no softmax code of its own.

#include "backend.h"
#include "cpu/kernels.h"
#include "workspace.h"

namespace attnkit {
namespace detail {
namespace cpu {
namespace {

/// A C-contiguous [B, H, S, D] view of a buffer.
ViewN<4> contiguous_view(const void* data, DType dtype, int64_t B, int64_t H, int64_t S, int64_t D) {
  ViewN<4> v;
  v.present = true;
  v.data = data;
  v.dtype = dtype;
  const int64_t shape[4] = {B, H, S, D};
  int64_t stride = 1;
  for (int d = 3; d >= 0; --d) {
    v.shape[d] = shape[d];
    v.stride[d] = stride;
    stride *= shape[d];
  }
  return v;
}

}  // namespace

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

}  // namespace cpu
}  // namespace detail
}  // namespace attnkit
