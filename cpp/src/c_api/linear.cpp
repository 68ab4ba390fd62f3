// C ABI of kernelized linear attention, random features, Performer and Linformer.
#include "c_api/common.h"

using namespace attnkit;
using attnkit::capi::guard;

extern "C" {

attnkit_status attnkit_linear_attention(const attnkit_tensor* q, const attnkit_tensor* k, const attnkit_tensor* v,
                                        const attnkit_tensor* out, const attnkit_linear_options* opts) {
  return guard([&] {
    const auto o = capi::options(opts, attnkit_linear_options_default(), "opts");
    LinearAttentionParams p;
    capi::set_qkv_out(p, q, k, v, out);
    if (o.feature_map < ATTNKIT_FEATURE_ELU1 || o.feature_map > ATTNKIT_FEATURE_IDENTITY)
      capi::fail(ErrorKind::Value, "opts.feature_map must be ATTNKIT_FEATURE_ELU1, _RELU or _IDENTITY (0..2), got " +
                                       std::to_string(o.feature_map));
    p.feature_map = static_cast<FeatureMap>(o.feature_map);
    p.causal = capi::flag(o.causal, "opts.causal");
    p.normalize = capi::flag(o.normalize, "opts.normalize");
    p.eps = o.eps;
    p.key_lengths = capi::optional_tensor(o.key_lengths, "opts.key_lengths");
    p.initial_state = capi::optional_tensor(o.initial_state, "opts.initial_state");
    p.initial_normalizer = capi::optional_tensor(o.initial_normalizer, "opts.initial_normalizer");
    p.final_state = capi::optional_tensor(o.final_state, "opts.final_state");
    p.final_normalizer = capi::optional_tensor(o.final_normalizer, "opts.final_normalizer");
    p.stream = o.stream;
    linear_attention(p);
  });
}

attnkit_status attnkit_random_features(const attnkit_tensor* out, uint64_t seed, int32_t orthogonal,
                                       int32_t scaling) {
  return guard([&] {
    RandomFeaturesParams p;
    p.out = capi::tensor(out, "out");
    if (p.out.ndim != 2)
      capi::fail(ErrorKind::Value, "out must be 2-D [num_features, head_dim], got rank " + std::to_string(p.out.ndim));
    if (scaling != ATTNKIT_SCALING_CHI && scaling != ATTNKIT_SCALING_SQRT_D)
      capi::fail(ErrorKind::Value, "scaling must be ATTNKIT_SCALING_CHI (0) or ATTNKIT_SCALING_SQRT_D (1), got " +
                                       std::to_string(scaling));
    p.num_features = p.out.shape[0];
    p.head_dim = p.out.shape[1];
    p.dtype = p.out.dtype;
    p.seed = seed;
    p.orthogonal = capi::flag(orthogonal, "orthogonal");
    p.scaling = static_cast<FeatureScaling>(scaling);
    random_features(p);
  });
}

attnkit_status attnkit_performer_attention(const attnkit_tensor* q, const attnkit_tensor* k, const attnkit_tensor* v,
                                           const attnkit_tensor* features, const attnkit_tensor* out,
                                           const attnkit_performer_options* opts) {
  return guard([&] {
    const auto o = capi::options(opts, attnkit_performer_options_default(), "opts");
    PerformerParams p;
    capi::set_qkv_out(p, q, k, v, out);
    p.features = capi::tensor(features, "features");
    if (o.kernel != ATTNKIT_PERFORMER_SOFTMAX && o.kernel != ATTNKIT_PERFORMER_RELU)
      capi::fail(ErrorKind::Value, "opts.kernel must be ATTNKIT_PERFORMER_SOFTMAX (0) or _RELU (1), got " +
                                       std::to_string(o.kernel));
    p.kernel = static_cast<PerformerKernel>(o.kernel);
    p.causal = capi::flag(o.causal, "opts.causal");
    p.scale = capi::scale_of(o.has_scale, o.scale, "opts.has_scale");
    p.eps = o.eps;
    p.key_lengths = capi::optional_tensor(o.key_lengths, "opts.key_lengths");
    p.stream = o.stream;
    performer_attention(p);
  });
}

attnkit_status attnkit_linformer_projection(const attnkit_tensor* out, uint64_t seed) {
  return guard([&] {
    LinformerProjectionParams p;
    p.out = capi::tensor(out, "out");
    if (p.out.ndim != 2 && p.out.ndim != 3)
      capi::fail(ErrorKind::Value, "out must be [P, Sk] or [H, P, Sk], got rank " + std::to_string(p.out.ndim));
    const int lead = p.out.ndim - 2;
    p.num_heads = lead ? p.out.shape[0] : 0;
    p.proj_len = p.out.shape[lead];
    p.seq_len = p.out.shape[lead + 1];
    p.dtype = p.out.dtype;
    p.seed = seed;
    linformer_projection(p);
  });
}

attnkit_status attnkit_linformer_attention(const attnkit_tensor* q, const attnkit_tensor* k, const attnkit_tensor* v,
                                           const attnkit_tensor* E, const attnkit_tensor* F, const attnkit_tensor* out,
                                           const attnkit_tensor* lse, const attnkit_linformer_options* opts) {
  return guard([&] {
    const auto o = capi::options(opts, attnkit_linformer_options_default(), "opts");
    LinformerParams p;
    capi::set_qkv_out(p, q, k, v, out);
    p.E = capi::tensor(E, "E");
    p.F = capi::optional_tensor(F, "F");
    p.lse = capi::optional_tensor(lse, "lse");
    p.scale = capi::scale_of(o.has_scale, o.scale, "opts.has_scale");
    p.key_lengths = capi::optional_tensor(o.key_lengths, "opts.key_lengths");
    p.stream = o.stream;
    linformer_attention(p);
  });
}

}  // extern "C"
