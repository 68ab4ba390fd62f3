#include "validate/linear.h"

#include "validate/attention_backward.h"

#include <cmath>
#include <string>

namespace attnkit {
namespace detail {
namespace {

/// t (rank <= N) as a ViewN<N> over `full`: missing leading dims have size 1 in t and stride 0 here.
template <int N>
ViewN<N> lead_view(const TensorRef& t, const int64_t (&full)[N]) {
  ViewN<N> v;
  v.present = true;
  v.data = t.data;
  v.dtype = t.dtype;
  for (int d = 0; d < N; ++d) v.shape[d] = full[d];
  lead_strides(t, v.stride);
  return v;
}

void require_eps(double eps) {
  if (!std::isfinite(eps) || eps < 0) value_error("eps must be finite and >= 0, got " + std::to_string(eps));
}

/// The parts shared by linear_attention and performer_attention: operands, output, key lengths.
LinearProblem common_problem(const TensorRef& q, const TensorRef& k, const TensorRef& v, const TensorRef& out,
                             const TensorRef& key_lengths, bool causal, double eps, void* stream, Outputs& outs) {
  LinearProblem r;
  const QkvViews qkv = qkv_views(q, k, &v);
  copy_geometry(r, qkv, q, stream, &LinearProblem::S);
  r.state_dtype = accumulator_dtype(q.dtype);
  if (causal && r.S != r.Sk)
    value_error("causal linear attention pairs query t with key t, so k must have q's length " + std::to_string(r.S) +
                ", got " + std::to_string(r.Sk) + " keys");
  int64_t shape[4];
  for (int d = 0; d < q.ndim; ++d) shape[d] = q.shape[d];
  shape[q.ndim - 1] = r.Dv;
  if (const TensorRef* o = outs.bind("out", out, shape, q.ndim, r.dtype, "(the dtype of q)")) {
    r.out = o->data;
    lead_strides(*o, r.out_stride);
  }
  r.key_lengths = key_lengths_view(key_lengths, q, r.B, r.Sk, stream);
  r.causal = causal;
  require_eps(eps);
  r.eps = eps;
  r.chunk = tuning().linear_chunk.load();
  return r;
}

/// The shape of a state argument (S: rank of q, [.., Hkv, F, Dv]; z: one less, [.., Hkv, F]).
const int64_t* state_shape(const LinearProblem& r, int rank, bool is_z, int64_t (&full)[4], int* n) {
  full[0] = r.B;
  full[1] = r.Hkv;
  full[2] = r.F;
  full[3] = r.Dv;
  *n = is_z ? rank - 1 : rank;
  return full + (4 - rank);
}

constexpr const char* kStateWhy = "(float64 for float64 inputs, else float32)";

void require_state_in(const TensorRef& t, const TensorRef& q, const LinearProblem& r, bool is_z, const char* name) {
  int64_t full[4];
  int n = 0;
  const int64_t* shape = state_shape(r, q.ndim, is_z, full, &n);
  require_sane(t, name);
  require_shape(t, shape, n, name);
  require_dtype(t, r.state_dtype, name, kStateWhy);
  require_same_device(t, q, name, "q");
}

}  // namespace

LinearProblem validate_linear_attention(const LinearAttentionParams& p, OutputSpecs* infer) {
  Outputs outs(infer, p.q, "q");
  LinearProblem r = common_problem(p.q, p.k, p.v, p.out, p.key_lengths, p.causal, p.eps, p.stream, outs);
  switch (p.feature_map) {
    case FeatureMap::Elu1: r.map = LinearMap::Elu1; break;
    case FeatureMap::Relu: r.map = LinearMap::Relu; break;
    case FeatureMap::Identity: r.map = LinearMap::Identity; break;
    default:
      value_error("feature_map must be elu1, relu or identity, got code " +
                  std::to_string(static_cast<int>(p.feature_map)));
  }
  r.F = r.D;
  r.normalize = p.normalize;

  if (p.initial_state.defined() != p.initial_normalizer.defined())
    value_error(p.initial_state.defined() ? "initial_normalizer is required with initial_state (the state is (S, z))"
                                          : "initial_state is required with initial_normalizer (the state is (S, z))");
  if (p.initial_state.defined()) {
    require_state_in(p.initial_state, p.q, r, false, "initial_state");
    require_state_in(p.initial_normalizer, p.q, r, true, "initial_normalizer (z of initial_state)");
    const int64_t s_full[4] = {r.B, r.Hkv, r.F, r.Dv};
    const int64_t z_full[3] = {r.B, r.Hkv, r.F};
    r.state_in = lead_view(p.initial_state, s_full);
    r.z_in = lead_view(p.initial_normalizer, z_full);
  }
  if (!outs.inferring() && p.final_state.defined() != p.final_normalizer.defined())
    value_error(p.final_state.defined() ? "final_normalizer is required with final_state (the state is (S, z))"
                                        : "final_state is required with final_normalizer (the state is (S, z))");
  int64_t full[4];
  int n = 0;
  const int64_t* sshape = state_shape(r, p.q.ndim, false, full, &n);
  if (const TensorRef* s = outs.bind("final_state", p.final_state, sshape, n, r.state_dtype, kStateWhy, false)) {
    r.state_out = s->data;
    lead_strides(*s, r.state_out_stride);
  }
  const int64_t* zshape = state_shape(r, p.q.ndim, true, full, &n);
  if (const TensorRef* z = outs.bind("final_normalizer", p.final_normalizer, zshape, n, r.state_dtype, kStateWhy,
                                     false)) {
    r.z_out = z->data;
    lead_strides(*z, r.z_out_stride);
  }
  return r;
}

LinearProblem validate_performer(const PerformerParams& p, OutputSpecs* infer) {
  Outputs outs(infer, p.q, "q");
  LinearProblem r = common_problem(p.q, p.k, p.v, p.out, p.key_lengths, p.causal, p.eps, p.stream, outs);
  switch (p.kernel) {
    case PerformerKernel::Softmax: r.map = LinearMap::FavorSoftmax; break;
    case PerformerKernel::Relu: r.map = LinearMap::FavorRelu; break;
    default:
      value_error("kernel must be softmax or relu, got code " + std::to_string(static_cast<int>(p.kernel)));
  }
  r.normalize = true;
  const TensorRef& w = p.features;
  require_defined(w, "features");
  require_sane(w, "features");
  require_floating(w, "features");
  require_same_device(w, p.q, "features", "q");
  if (w.ndim != 2 || w.shape[1] != r.D)
    value_error("features must have shape (m, D) with D = " + std::to_string(r.D) + " (the head dim of q), got " +
                shape_str(w));
  if (w.shape[0] < 1) value_error("features must have at least one row (m >= 1), got shape " + shape_str(w));
  r.F = w.shape[0];
  const int64_t md[2] = {r.F, r.D};
  r.features = lead_view(w, md);
  const double scale = resolve_scale(p.scale, r.D, r.dtype);
  if (scale < 0) value_error("scale must be >= 0 (x' = sqrt(scale) x), got " + std::to_string(scale));
  r.feature_scale = std::sqrt(scale);
  return r;
}

namespace {

/// The gradient outputs dq, dk, dv (shaped like q, k, v) and dout, shared by both backward validators.
LinearBwdProblem with_grads(const LinearProblem& f, const TensorRef& dout, const TensorRef& q, const TensorRef& k,
                            const TensorRef& v, const TensorRef& dq, const TensorRef& dk, const TensorRef& dv,
                            Outputs& outs) {
  LinearBwdProblem r;
  r.fwd = f;
  r.fwd.out = nullptr;
  r.fwd.state_out = r.fwd.z_out = nullptr;
  r.dout = dout_view(dout, q, f.Dv, f.dtype);
  const char* why = "(the dtype of q)";
  if (const TensorRef* t = outs.bind("dq", dq, q.shape, q.ndim, f.dtype, why)) {
    r.dq = t->data;
    lead_strides(*t, r.dq_stride);
  }
  if (const TensorRef* t = outs.bind("dk", dk, k.shape, k.ndim, f.dtype, why)) {
    r.dk = t->data;
    lead_strides(*t, r.dk_stride);
  }
  if (const TensorRef* t = outs.bind("dv", dv, v.shape, v.ndim, f.dtype, why)) {
    r.dv = t->data;
    lead_strides(*t, r.dv_stride);
  }
  return r;
}

}  // namespace

LinearBwdProblem validate_linear_attention_backward(const LinearAttentionBackwardParams& p, OutputSpecs* infer) {
  OutputSpecs forward_outputs;  // the forward's outputs are not needed: validate its inputs only
  const LinearProblem f = validate_linear_attention(p.fwd, &forward_outputs);
  Outputs outs(infer, p.fwd.q, "q");
  LinearBwdProblem r = with_grads(f, p.dout, p.fwd.q, p.fwd.k, p.fwd.v, p.dq, p.dk, p.dv, outs);
  if (p.dfinal_state.defined() != p.dfinal_normalizer.defined())
    value_error(p.dfinal_state.defined() ? "dfinal_normalizer is required with dfinal_state (the state is (S, z))"
                                         : "dfinal_state is required with dfinal_normalizer (the state is (S, z))");
  const int64_t s_full[4] = {f.B, f.Hkv, f.F, f.Dv};
  const int64_t z_full[3] = {f.B, f.Hkv, f.F};
  if (p.dfinal_state.defined()) {
    require_state_in(p.dfinal_state, p.fwd.q, f, false, "dfinal_state");
    require_state_in(p.dfinal_normalizer, p.fwd.q, f, true, "dfinal_normalizer (dz of dfinal_state)");
    r.dstate_out = lead_view(p.dfinal_state, s_full);
    r.dz_out = lead_view(p.dfinal_normalizer, z_full);
  }
  if (!f.state_in.present) {
    if (p.dinitial_state.defined() || p.dinitial_normalizer.defined())
      value_error("dinitial_state can only be computed for a call with an initial_state (initial_state is absent)");
    return r;
  }
  int64_t full[4];
  int n = 0;
  const int64_t* sshape = state_shape(f, p.fwd.q.ndim, false, full, &n);
  if (const TensorRef* t = outs.bind("dinitial_state", p.dinitial_state, sshape, n, f.state_dtype, kStateWhy)) {
    r.dstate_in = t->data;
    lead_strides(*t, r.dstate_in_stride);
  }
  const int64_t* zshape = state_shape(f, p.fwd.q.ndim, true, full, &n);
  if (const TensorRef* t = outs.bind("dinitial_normalizer", p.dinitial_normalizer, zshape, n, f.state_dtype,
                                     kStateWhy)) {
    r.dz_in = t->data;
    lead_strides(*t, r.dz_in_stride);
  }
  return r;
}

LinearBwdProblem validate_performer_backward(const PerformerBackwardParams& p, OutputSpecs* infer) {
  OutputSpecs forward_outputs;
  const LinearProblem f = validate_performer(p.fwd, &forward_outputs);
  Outputs outs(infer, p.fwd.q, "q");
  return with_grads(f, p.dout, p.fwd.q, p.fwd.k, p.fwd.v, p.dq, p.dk, p.dv, outs);
}

RandomFeaturesProblem validate_random_features(const RandomFeaturesParams& p, OutputSpecs* infer) {
  RandomFeaturesProblem r;
  if (p.num_features < 1) value_error("num_features must be >= 1, got " + std::to_string(p.num_features));
  if (p.head_dim < 1) value_error("head_dim must be >= 1, got " + std::to_string(p.head_dim));
  if (p.scaling != FeatureScaling::Chi && p.scaling != FeatureScaling::SqrtD)
    value_error("scaling must be chi or sqrt_d, got code " + std::to_string(static_cast<int>(p.scaling)));
  require_floating_code(p.dtype, "dtype");
  const int64_t shape[2] = {p.num_features, p.head_dim};
  Outputs outs(infer, host_ref(), "host memory (it is generated on the CPU)");
  if (const TensorRef* o = outs.bind("out", p.out, shape, 2, p.dtype, "(the dtype argument)")) {
    r.out = o->data;
    lead_strides(*o, r.out_stride);
  }
  r.m = p.num_features;
  r.D = p.head_dim;
  r.seed = p.seed;
  r.orthogonal = p.orthogonal;
  r.scaling = p.scaling;
  r.out_dtype = p.dtype;
  return r;
}

LinformerProjectionProblem validate_linformer_projection(const LinformerProjectionParams& p, OutputSpecs* infer) {
  LinformerProjectionProblem r;
  if (p.proj_len < 1) value_error("proj_len must be >= 1, got " + std::to_string(p.proj_len));
  if (p.seq_len < 0) value_error("seq_len must be >= 0, got " + std::to_string(p.seq_len));
  if (p.num_heads < 0)
    value_error("num_heads must be >= 1 (or 0 for a shared projection), got " + std::to_string(p.num_heads));
  require_floating_code(p.dtype, "dtype");
  const int64_t shape[3] = {p.num_heads, p.proj_len, p.seq_len};
  const bool shared = p.num_heads == 0;
  Outputs outs(infer, host_ref(), "host memory (it is generated on the CPU)");
  if (const TensorRef* o = outs.bind("out", p.out, shape + shared, 3 - shared, p.dtype, "(the dtype argument)")) {
    r.out = o->data;
    lead_strides(*o, r.out_stride);
  }
  r.H = shared ? 1 : p.num_heads;
  r.P = p.proj_len;
  r.Sk = p.seq_len;
  r.seed = p.seed;
  r.out_dtype = p.dtype;
  return r;
}

namespace {

/// E or F: [P, Sk] (shared) or [Hkv, P, Sk], any floating dtype, on q's device.
ViewN<3> projection_view(const TensorRef& t, const TensorRef& q, int64_t Hkv, int64_t Sk, const char* name) {
  require_sane(t, name);
  require_floating(t, name);
  require_same_device(t, q, name, "q");
  if ((t.ndim != 2 && t.ndim != 3) || t.shape[t.ndim - 1] != Sk || (t.ndim == 3 && t.shape[0] != Hkv))
    value_error(std::string(name) + " must have shape (P, Sk) or (Hkv, P, Sk) with Sk = " + std::to_string(Sk) +
                " (the length of k) and Hkv = " + std::to_string(Hkv) + ", got " + shape_str(t));
  if (t.shape[t.ndim - 2] < 1)
    value_error(std::string(name) + " must project onto at least one position (P >= 1), got shape " + shape_str(t));
  const int64_t full[3] = {Hkv, t.shape[t.ndim - 2], Sk};
  return lead_view(t, full);
}

}  // namespace

LinformerProblem validate_linformer(const LinformerParams& p, OutputSpecs* infer) {
  if (p.causal)
    value_error("causal is not defined for Linformer: every projected key mixes all positions, so no projected "
                "key is in any query's past; use attention(..., causal=True) or linear_attention / "
                "performer_attention for causal models");
  LinformerProblem r;
  const QkvViews qkv = qkv_views(p.q, p.k, &p.v);
  r.k = qkv.k;
  r.v = qkv.v;
  r.Sk = qkv.Sk;
  require_defined(p.E, "E");
  r.E = projection_view(p.E, p.q, qkv.Hkv, qkv.Sk, "E");
  r.P = r.E.shape[1];
  if (p.F.defined()) {
    r.F = projection_view(p.F, p.q, qkv.Hkv, qkv.Sk, "F");
    if (r.F.shape[1] != r.P)
      value_error("F must project onto E's P = " + std::to_string(r.P) + " positions, got shape " + shape_str(p.F));
  } else {
    r.F = r.E;
  }
  AttnProblem& a = r.attn;
  copy_geometry(a, qkv, p.q, p.stream, &AttnProblem::Sq);
  a.Sk = r.P;  // the exact kernel attends over the P projected keys (k and v set by the backend)
  int64_t shape[4];
  for (int d = 0; d < p.q.ndim; ++d) shape[d] = p.q.shape[d];
  shape[p.q.ndim - 1] = qkv.Dv;
  Outputs outs(infer, p.q, "q");
  if (const TensorRef* o = outs.bind("out", p.out, shape, p.q.ndim, a.dtype, "(the dtype of q)")) {
    a.out = o->data;
    lead_strides(*o, a.out_stride);
  }
  if (const TensorRef* l = outs.bind("lse", p.lse, p.q.shape, p.q.ndim - 1, accumulator_dtype(a.dtype),
                                     "(float64 for float64 inputs, else float32)", false)) {
    a.lse = l->data;
    lead_strides(*l, a.lse_stride);
  }
  a.scale = resolve_score_scale(p.scale, a.D, a.dtype);
  r.key_lengths = key_lengths_view(p.key_lengths, p.q, qkv.B, qkv.Sk, p.stream);
  return r;
}

}  // namespace detail
}  // namespace attnkit
