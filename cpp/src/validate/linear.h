#pragma once
// The one validator of the linear-attention family: linear_attention and performer_attention (one core
// behind feature maps), random_features, linformer_projection and linformer_attention. Every backend
// receives the problems built here and never re-checks user input.

#include "attnkit/backward.h"
#include "attnkit/linear.h"
#include "validate/attention.h"
#include "tuning.h"
#include "validate/common.h"

namespace attnkit {
namespace detail {

/// The feature map in front of the linear-attention core.
enum class LinearMap : int32_t {
  Elu1 = 0,          ///< elu(x) + 1, F = D
  Relu = 1,          ///< max(x, 0), F = D
  Identity = 2,      ///< x, F = D
  FavorSoftmax = 3,  ///< Performer positive softmax features, F = m (stabilized: math/feature_maps.h)
  FavorRelu = 4,     ///< Performer ReLU features, F = m
};

/// A validated linear-attention problem, operands brought to rank 4 / 3.
struct LinearProblem {
  Device device = Device::CPU;
  int32_t device_index = 0;
  void* stream = nullptr;
  DType dtype = DType::Float32;  ///< of q, k, v and out
  DType state_dtype = DType::Float32;  ///< of the states: Float64 for Float64 problems, else Float32
  int64_t B = 0, Hq = 0, Hkv = 0, S = 0, Sk = 0, D = 0, Dv = 0;
  int64_t F = 0;                 ///< features per row: D, or m for Performer
  ViewN<4> q, k, v;
  void* out = nullptr;           ///< [B, Hq, S, Dv], dtype
  int64_t out_stride[4] = {};
  LinearMap map = LinearMap::Elu1;
  ViewN<2> features;             ///< Performer W [m, D] (any floating dtype)
  double feature_scale = 1.0;    ///< Performer: sqrt(scale), so W x' = (sqrt(scale) W) x
  bool causal = true;
  bool normalize = true;
  double eps = 1e-6;
  ViewN<1> key_lengths;          ///< Int32/Int64 [B]
  ViewN<4> state_in;             ///< optional S_0 [B, Hkv, F, Dv], state_dtype
  ViewN<3> z_in;                 ///< optional z_0 [B, Hkv, F] (present with state_in)
  void* state_out = nullptr;     ///< optional [B, Hkv, F, Dv], state_dtype
  int64_t state_out_stride[4] = {};
  void* z_out = nullptr;         ///< optional [B, Hkv, F] (present with state_out)
  int64_t z_out_stride[3] = {};
  int64_t chunk = 0;             ///< chunk length >= 1, or 0 for the backend's default (from tuning())

  int64_t group() const { return Hkv ? Hq / Hkv : 1; }
  bool stabilized() const { return map == LinearMap::FavorSoftmax; }
  bool projected() const { return map == LinearMap::FavorSoftmax || map == LinearMap::FavorRelu; }
};

/// Copies a LinearProblem's q, k, v pointers and the element strides of q, k, v, the output, the states and
/// their normalizers into a backend's kernel-argument struct that names them q, k, v, qs, ks, vs, os, sis,
/// sos, zis, zos (the CUDA backend's LinArgs and the tensor-core causal path's Args).
template <class A>
void copy_linear_operands(A& a, const LinearProblem& p) {
  a.q = p.q.data;
  a.k = p.k.data;
  a.v = p.v.data;
  for (int i = 0; i < 4; ++i) {
    a.qs[i] = p.q.stride[i];
    a.ks[i] = p.k.stride[i];
    a.vs[i] = p.v.stride[i];
    a.os[i] = p.out_stride[i];
    a.sis[i] = p.state_in.stride[i];
    a.sos[i] = p.state_out_stride[i];
  }
  for (int i = 0; i < 3; ++i) {
    a.zis[i] = p.z_in.stride[i];
    a.zos[i] = p.z_out_stride[i];
  }
}

LinearProblem validate_linear_attention(const LinearAttentionParams& p, OutputSpecs* infer = nullptr);
LinearProblem validate_performer(const PerformerParams& p, OutputSpecs* infer = nullptr);

/// A validated linear_attention_backward / performer_attention_backward problem.
struct LinearBwdProblem {
  LinearProblem fwd;              ///< the forward problem (its outputs unset: the backward writes none of them)
  ViewN<4> dout;                  ///< [B, Hq, S, Dv], fwd.dtype
  ViewN<4> dstate_out;            ///< optional dL/dS_final [B, Hkv, F, Dv], state dtype
  ViewN<3> dz_out;                ///< optional dL/dz_final [B, Hkv, F] (present with dstate_out)
  void* dq = nullptr;             ///< [B, Hq, S, D], fwd.dtype
  int64_t dq_stride[4] = {};
  void* dk = nullptr;             ///< [B, Hkv, Sk, D]
  int64_t dk_stride[4] = {};
  void* dv = nullptr;             ///< [B, Hkv, Sk, Dv]
  int64_t dv_stride[4] = {};
  void* dstate_in = nullptr;      ///< [B, Hkv, F, Dv], state dtype; set exactly when fwd.state_in is present
  int64_t dstate_in_stride[4] = {};
  void* dz_in = nullptr;          ///< [B, Hkv, F]
  int64_t dz_in_stride[3] = {};
};

/// In inference mode (`infer` given) the gradient outputs are recorded, not checked (output queries).
LinearBwdProblem validate_linear_attention_backward(const LinearAttentionBackwardParams& p,
                                                    OutputSpecs* infer = nullptr);
LinearBwdProblem validate_performer_backward(const PerformerBackwardParams& p, OutputSpecs* infer = nullptr);

/// A validated random_features problem.
struct RandomFeaturesProblem {
  int64_t m = 0, D = 0;
  uint64_t seed = 0;
  bool orthogonal = true;
  FeatureScaling scaling = FeatureScaling::Chi;
  void* out = nullptr;  ///< [m, D] of out_dtype
  DType out_dtype = DType::Float32;
  int64_t out_stride[2] = {};
};

RandomFeaturesProblem validate_random_features(const RandomFeaturesParams& p, OutputSpecs* infer = nullptr);

/// A validated linformer_projection problem.
struct LinformerProjectionProblem {
  int64_t H = 0, P = 0, Sk = 0;  ///< H = 1 for a shared projection
  uint64_t seed = 0;
  void* out = nullptr;           ///< [H, P, Sk] of out_dtype (stride 0 on dim 0 when shared)
  DType out_dtype = DType::Float32;
  int64_t out_stride[3] = {};
};

LinformerProjectionProblem validate_linformer_projection(const LinformerProjectionParams& p,
                                                         OutputSpecs* infer = nullptr);

/// A validated Linformer problem: the projections of k and v, then an exact-attention problem whose k and v
/// the backend points at the projected keys and values.
struct LinformerProblem {
  AttnProblem attn;   ///< q, out, lse, scale and sizes (Sk = P); k, v, key_lengths left for the backend
  ViewN<4> k, v;      ///< the original keys and values [B, Hkv, Sk, D / Dv]
  int64_t Sk = 0;     ///< original key length
  int64_t P = 0;      ///< projected length
  ViewN<3> E, F;      ///< [Hkv, P, Sk], stride 0 on dim 0 when shared; any floating dtype
  ViewN<1> key_lengths;
};

LinformerProblem validate_linformer(const LinformerParams& p, OutputSpecs* infer = nullptr);

}  // namespace detail
}  // namespace attnkit
