// Exact attention and attention_weights on the GPU: the tensor-core kernel for the float16 / bfloat16
// problems it supports (attention_mma2.cuh where enabled and it applies, else attention_mma.cuh), the
// flash-decoding kernel for few query rows per kv head (attention_decode.cuh; its v2 in
// attention_decode2.cuh and its tensor-core v3 in attention_decode3.cuh where enabled), the SIMT kernel
// for everything else (attention_simt.cuh).
#include <cstdlib>
#include <cstring>

#include "cpp/src/backend.h"
#include "cuda/common.cuh"
#include "cuda/attention_decode.cuh"
#include "cuda/attention_decode2.cuh"
#include "cuda/attention_decode3.cuh"
#include "cuda/attention_terms.cuh"

namespace attnkit {
namespace detail {
namespace cuda {

/// The SIMT kernel (attention_simt.cuh), instantiated once per dtype in attention_simt_<dtype>.cu.
template <class T>
void run_simt(const AttnProblem& p, bool weights);
/// The tensor-core kernel, instantiated per (dtype, head dim) in attention_mma_<dtype>_d<D>.cu.
template <class T, int D>
void run_mma(const AttnProblem& p);
/// The tensor-core kernel, version 2 (attention_mma2.cuh), instantiated per (dtype, head dim 64 / 128) in
/// attention_mma2_<dtype>_d<D>.cu; variant selects its tile shape.
template <class T, int D>
void run_mma2(const AttnProblem& p, int variant);
// The decode kernel (attention_decode.cuh), instantiated once per dtype in attention_decode_<dtype>.cu.
extern template void run_decode<float>(const AttnProblem&);
extern template void run_decode<double>(const AttnProblem&);
extern template void run_decode<half_t>(const AttnProblem&);
extern template void run_decode<bf16_t>(const AttnProblem&);
// The decode kernel v2 (attention_decode2.cuh), float16 / bfloat16, in attention_decode2_<dtype>.cu.
extern template void run_decode2<half_t>(const AttnProblem&);
extern template void run_decode2<bf16_t>(const AttnProblem&);
// The decode kernel v3 (attention_decode3.cuh, tensor cores), float16 / bfloat16, in attention_decode3_<dtype>.cu.
extern template void run_decode3<half_t>(const AttnProblem&);
extern template void run_decode3<bf16_t>(const AttnProblem&);

namespace {
/// Whether the tensor-core kernel takes problem p.
bool mma_supported(const AttnProblem& p) {
  if (p.dtype != DType::Float16 && p.dtype != DType::BFloat16) return false;
  if (p.D != p.Dv || !(p.D == 32 || p.D == 64 || p.D == 96 || p.D == 128 || p.D == 256)) return false;
  if (p.Sq < 16) return false;  // decoding: the decode / SIMT split-KV paths
  if (p.sparse && p.layout.bq % kMmaRows != 0) return false;
  const ViewN<4>* ops[3] = {&p.q, &p.k, &p.v};
  for (const ViewN<4>* v : ops) {
    if (v->stride[3] != 1) return false;
    if (reinterpret_cast<uintptr_t>(v->data) % 16 != 0) return false;
    for (int d = 0; d < 3; ++d)
      if (v->stride[d] % 8 != 0 && v->shape[d] > 1) return false;
  }
  return true;
}

/// ATTNKIT_MMA_VARIANT (internal, for benchmarking; read once per process): the tile shape of the v2
/// tensor-core kernel, "0" .. "4" (attention_mma2.cuh, run_mma2), or "v1": the previous kernel
/// (attention_mma.cuh) for every problem. Anything else (unset) means kMmaAuto: variant 0.
constexpr int kMmaV1 = -1, kMmaAuto = -2;
int mma_variant() {
  static const int variant = [] {
    const char* e = std::getenv("ATTNKIT_MMA_VARIANT");
    if (e && std::strcmp(e, "v1") == 0) return kMmaV1;
    if (e && e[0] >= '0' && e[0] <= '4' && e[1] == '\0') return e[0] - '0';
    return kMmaAuto;
  }();
  return variant;
}

/// The v2 kernel's tile shape: ATTNKIT_MMA_VARIANT's, else 0. Variants 3 and 4 (64-row blocks, twice the
/// blocks) need "attention_mma_v2_small" (runtime.cu), else they run 0. Measured side by side on an H200
/// (bench/results/gpu_h200.json, exact_variant rows, device time vs torch flash, B=4 H=16): 0 is the best
/// at S = 1024 and 4096 for every dtype, head dim and mask but S = 1024 causal, where 3/4 gain ~5%, so no
/// shape picks them by default.
int mma2_variant() {
  const int variant = mma_variant();
  if (variant == kMmaAuto) return 0;
  if ((variant == 3 || variant == 4) && !has_kernel("attention_mma_v2_small")) return 0;
  return variant;
}

/// Whether the v2 tensor-core kernel takes problem p (which mma_supported takes): head dims 64 and 128,
/// the plain score with scale > 0 and the key ranges; masks, bias, soft cap, ALiBi and block-sparse
/// layouts stay with attention_mma.cuh. Gated by "attention_mma_v2" (runtime.cu) until verified on a GPU.
bool mma2_supported(const AttnProblem& p) {
  if (p.D != 64 && p.D != 128) return false;
  if (p.sparse || p.mask.present || p.bias.present || p.alibi.present || p.softcap > 0) return false;
  if (!(p.scale > 0)) return false;
  if (p.Sq >= (int64_t(1) << 30) || p.Sk >= (int64_t(1) << 30)) return false;  // int row / key indices
  if (mma_variant() == kMmaV1) return false;
  return has_kernel("attention_mma_v2");
}

template <class F>
void for_dtype(const AttnProblem& p, F&& f) {
  require_device(p.device_index);
  DeviceGuard guard(p.device_index);
  dispatch_float(p.dtype, f);
}
}  // namespace

template <class T>
void run_mma_dim(const AttnProblem& p) {
  if (mma2_supported(p)) {
    const int variant = mma2_variant();
    if (p.D == 64) return run_mma2<T, 64>(p, variant);
    return run_mma2<T, 128>(p, variant);
  }
  switch (p.D) {
    case 32: return run_mma<T, 32>(p);
    case 64: return run_mma<T, 64>(p);
    case 96: return run_mma<T, 96>(p);
    case 128: return run_mma<T, 128>(p);
    default: return run_mma<T, 256>(p);
  }
}

void attention(const AttnProblem& p) {
  for_dtype(p, [&](auto tag) {
    using T = decltype(tag);
    if constexpr (sizeof(T) == 2) {
      if (mma_supported(p)) return run_mma_dim<T>(p);
    }
    if (decode_supported(p)) {
      if constexpr (sizeof(T) == 2) {
        // v3 (tensor cores: D = Dv in {64, 128}, <= 16 rows per kv head) where enabled
        // ("attention_decode_v3", verified on an H200) and not switched off by the tuning option
        // cuda_decode (1: v1, 2: v2); then v2 where enabled and not switched off (cuda_decode = 1);
        // everything else (float32 / float64, > 8 rows per kv head) v1.
        const int64_t which = tuning().cuda_decode.load();
        if (which == 0 && decode3_supported(p) && has_kernel("attention_decode_v3")) return run_decode3<T>(p);
        if (decode2_supported(p) && which != 1 && has_kernel("attention_decode_v2")) return run_decode2<T>(p);
      }
      return run_decode<T>(p);
    }
    run_simt<T>(p, false);
  });
}

void attention_weights(const AttnProblem& p) {
  for_dtype(p, [&](auto tag) { run_simt<decltype(tag)>(p, true); });
}

}  // namespace cuda
}  // namespace detail
}  // namespace attnkit
