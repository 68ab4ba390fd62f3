#include "validate/dla.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <optional>
#include <string>
#include <utility>

#include "attnkit/math/dtypes.h"
#include "tuning.h"

namespace attnkit {
namespace detail {
namespace {

std::string str(int64_t x) { return std::to_string(x); }

std::string num(double x) {
  if (std::isnan(x)) return "nan";
  if (std::isinf(x)) return x > 0 ? "inf" : "-inf";
  return std::to_string(x);
}

/// Checks that t has rank N - lead and the shape full[lead:], and returns it as a rank-N view whose lead
/// dims (of size 1) have stride 0.
template <int N>
void lifted_shape(const TensorRef& t, const int64_t (&full)[N], int lead, const char* name, int64_t* strides) {
  require_sane(t, name);
  require_shape(t, full + lead, N - lead, name);
  for (int d = 0; d < N; ++d) strides[d] = d < lead ? 0 : t.strides[d - lead];
}

template <int N>
ViewN<N> input_view(const TensorRef& t, const int64_t (&full)[N], int lead, const char* name) {
  ViewN<N> v;
  lifted_shape(t, full, lead, name, v.stride);
  v.present = true;
  v.data = t.data;
  v.dtype = t.dtype;
  for (int d = 0; d < N; ++d) v.shape[d] = full[d];
  return v;
}

/// Records or checks output `name` (shape full[lead:]) and returns it as a rank-N view whose lead dims have
/// stride 0; absent when inferring or when an optional output was not passed.
template <int N>
OutN<N> bind_out(Outputs& outs, const char* name, const TensorRef& t, const int64_t (&full)[N], int lead, DType want,
                 const char* why, bool required = true) {
  OutN<N> o;
  if (const TensorRef* x = outs.bind(name, t, full + lead, N - lead, want, why, required)) {
    o.present = true;
    o.data = x->data;
    lead_strides(*x, o.stride);
  }
  return o;
}

/// Everything but the value checks (check_values, validate_dla below).
DLAProblem validate_shapes(const DLAParams& p, OutputSpecs* infer) {
  DLAProblem r;
  r.q = bhsd_view(p.q, "q");
  require_floating(p.q, "q");
  const int rank = p.q.ndim, lead = 4 - rank;
  const char* qdesc = rank == 4 ? "[B, H, T, *]" : rank == 3 ? "[H, T, *]" : "[T, *]";
  for (const auto& x : {std::make_pair(&p.k, "k"), std::make_pair(&p.v, "v"), std::make_pair(&p.lam, "lam")}) {
    require_defined(*x.first, x.second);
    require_sane(*x.first, x.second);
    if (x.first->ndim != rank)
      value_error(std::string(x.second) + " must have the rank of q (" + str(rank) + "-D " + qdesc + "), got shape " +
                  shape_str(*x.first));
    require_dtype(*x.first, p.q.dtype, x.second, "(the dtype of q)");
    require_same_device(*x.first, p.q, x.second, "q");
  }
  r.device = p.q.device;
  r.device_index = p.q.device_index;
  r.stream = p.stream;
  r.dtype = p.q.dtype;
  r.state_dtype = r.dtype == DType::Float64 ? DType::Float64 : DType::Float32;
  r.B = r.q.shape[0];
  r.H = r.q.shape[1];
  r.T = r.q.shape[2];
  r.Dk = r.q.shape[3];
  r.Dv = p.v.shape[rank - 1];

  // Scalars first: lam's shape depends on the capacity.
  if (p.capacity < 1) value_error("capacity must be >= 1, got " + str(p.capacity));
  r.C = p.capacity;
  if (std::isnan(p.tau)) value_error("tau must not be NaN (+inf never opens a state, <= 0 always does)");
  r.tau = p.tau;
  if (p.score != DLAScore::TokenVsState && p.score != DLAScore::StateDrift)
    value_error("score must be token_vs_state or state_drift, got code " + str(static_cast<int>(p.score)));
  r.state_drift = p.score == DLAScore::StateDrift;
  if (p.position < 0) value_error("position (cache.position) must be >= 0, got " + str(p.position));
  r.position = p.position;
  // The tuned chunk length; one longer than the call is one chunk of the call (the kernels size scratch
  // by it).
  const int64_t chunk = tuning().dla_chunk.load();
  r.chunk_size = chunk > 0 ? std::min<int64_t>(chunk, std::max<int64_t>(r.T, 1)) : chunk;
  if (r.T > std::numeric_limits<int64_t>::max() - r.position)
    value_error("position (cache.position) = " + str(r.position) + " + T = " + str(r.T) + " overflows int64");

  if (r.Dk < 1 || r.Dv < 1)
    value_error("q, k and v need head dims of at least 1 (the states are Dk x Dv), got Dk = " + str(r.Dk) +
                ", Dv = " + str(r.Dv));
  const int64_t qkshape[4] = {r.B, r.H, r.T, r.Dk};
  r.k = input_view(p.k, qkshape, lead, "k");
  const int64_t vshape[4] = {r.B, r.H, r.T, r.Dv};
  r.v = input_view(p.v, vshape, lead, "v");
  if (p.lam.shape[rank - 1] != r.C)
    value_error("lam must have capacity = " + str(r.C) + " weights per token (last dim), got shape " +
                shape_str(p.lam));
  const int64_t lshape[4] = {r.B, r.H, r.T, r.C};
  r.lam = input_view(p.lam, lshape, lead, "lam");
  const int64_t tshape[3] = {r.B, r.H, r.T};
  if (p.log_decay.defined()) {
    require_floating(p.log_decay, "log_decay");
    require_same_device(p.log_decay, p.q, "log_decay", "q");
    if (p.log_decay.ndim != rank - 1)
      value_error("log_decay must have one dim less than q (" + str(rank - 1) + "-D, one value per token), got shape " +
                  shape_str(p.log_decay));
    r.log_decay = input_view(p.log_decay, tshape, lead, "log_decay");
  }

  // Cache in: all five arrays or none.
  const DLACacheTensors& ci = p.cache_in;
  const bool any_in = ci.states.defined() || ci.counts.defined() || ci.info.defined() || ci.starts.defined() ||
                      ci.size.defined();
  const int64_t sshape[5] = {r.B, r.H, r.C, r.Dk, r.Dv};
  const int64_t cshape[3] = {r.B, r.H, r.C};
  const int64_t bhshape[2] = {r.B, r.H};
  const char* sdt = "(float64 for float64 inputs, else float32)";
  if (any_in) {
    const std::pair<const TensorRef*, const char*> parts[] = {{&ci.states, "cache.states"},
                                                              {&ci.counts, "cache.counts"},
                                                              {&ci.info, "cache.info"},
                                                              {&ci.starts, "cache.starts"},
                                                              {&ci.size, "cache.size"}};
    for (const auto& x : parts) {
      if (!x.first->defined())
        value_error(std::string(x.second) + " is required: a cache passes all of states, counts, info, starts and size");
      require_sane(*x.first, x.second);
      require_same_device(*x.first, p.q, x.second, "q");
    }
    auto cache_shape = [&](const TensorRef& t, const int64_t* want, int n, const char* name) {
      bool ok = t.ndim == n;
      for (int d = 0; ok && d < n; ++d) ok = t.shape[d] == want[d];
      if (!ok)
        value_error(std::string(name) + " must have shape " + shape_str(want, n) +
                    " (B, H, capacity, ...) to match the inputs and capacity, got " + shape_str(t));
    };
    cache_shape(ci.states, sshape, 5, "cache.states");
    cache_shape(ci.counts, cshape, 3, "cache.counts");
    cache_shape(ci.info, cshape, 3, "cache.info");
    cache_shape(ci.starts, cshape, 3, "cache.starts");
    cache_shape(ci.size, bhshape, 2, "cache.size");
    require_dtype(ci.states, r.state_dtype, "cache.states", sdt);
    require_dtype(ci.info, r.state_dtype, "cache.info", sdt);
    require_dtype(ci.counts, DType::Int64, "cache.counts");
    require_dtype(ci.starts, DType::Int64, "cache.starts");
    require_dtype(ci.size, DType::Int64, "cache.size");
    r.cache_in.present = true;
    r.cache_in.states = input_view(ci.states, sshape, 0, "cache.states");
    r.cache_in.counts = input_view(ci.counts, cshape, 0, "cache.counts");
    r.cache_in.info = input_view(ci.info, cshape, 0, "cache.info");
    r.cache_in.starts = input_view(ci.starts, cshape, 0, "cache.starts");
    r.cache_in.size = input_view(ci.size, bhshape, 0, "cache.size");
  } else if (p.position != 0) {
    value_error("position must be 0 without a cache (an empty cache has seen no token), got " + str(p.position));
  }

  // Outputs.
  Outputs outs(infer, p.q, "q");
  const int64_t oshape[4] = {r.B, r.H, r.T, r.Dv};
  r.out = bind_out(outs, "out", p.out, oshape, lead, r.dtype, "(the dtype of q)");
  const DLACacheTensors& co = p.cache_out;
  r.cache_out.states = bind_out(outs, "cache_out.states", co.states, sshape, 0, r.state_dtype, sdt);
  r.cache_out.counts = bind_out(outs, "cache_out.counts", co.counts, cshape, 0, DType::Int64, nullptr);
  r.cache_out.info = bind_out(outs, "cache_out.info", co.info, cshape, 0, r.state_dtype, sdt);
  r.cache_out.starts = bind_out(outs, "cache_out.starts", co.starts, cshape, 0, DType::Int64, nullptr);
  r.cache_out.size = bind_out(outs, "cache_out.size", co.size, bhshape, 0, DType::Int64, nullptr);
  r.scores = bind_out(outs, "scores", p.scores, tshape, lead, r.state_dtype, sdt, false);
  r.boundaries = bind_out(outs, "boundaries", p.boundaries, tshape, lead, DType::Bool, nullptr, false);
  r.merged = bind_out(outs, "merged", p.merged, tshape, lead, DType::Int64, nullptr, false);

  return r;
}

/// The value checks on host copies (or host arrays): log_decay (strides gs) finite and <= 0; each item's
/// cache size in [0, C], its counts >= 1 and its spans contiguous from 0 covering position.
void check_values(int64_t B, int64_t H, int64_t T, int64_t C, int64_t position, const HostValues* decay,
                  const int64_t* gs, const HostValues* size_vals, const int64_t* ss, const HostValues* count_vals,
                  const int64_t* cs, const HostValues* start_vals, const int64_t* ts) {
  if (decay) {
    const HostValues& all = *decay;
    for (int64_t b = 0; b < B; ++b)
      for (int64_t h = 0; h < H; ++h)
        for (int64_t t = 0; t < T; ++t) {
          const double x = all.real(b * gs[0] + h * gs[1] + t * gs[2]);
          if (!(std::isfinite(x) && x <= 0))
            value_error("log_decay must be finite and <= 0 (a decay factor exp(g) in (0, 1]; a positive value "
                        "would grow the states), got " + num(x) + " at [" + str(b) + ", " + str(h) + ", " +
                        str(t) + "]");
        }
  }
  if (size_vals) {
    const HostValues &sizes = *size_vals, &counts = *count_vals, &starts = *start_vals;
    for (int64_t b = 0; b < B; ++b)
      for (int64_t h = 0; h < H; ++h) {
        // The item's index for a message, made only when one is raised: a decode step checks every item's
        // entries after the wait, while the device idles, so the loop stays free of string work.
        const auto at = [b, h] { return "[" + str(b) + ", " + str(h); };
        const int64_t m = sizes.integer(b * ss[0] + h * ss[1]);
        if (m < 0 || m > C)
          value_error("cache.size" + at() + "] = " + str(m) + " is outside [0, capacity] = [0, " + str(C) + "]");
        int64_t next = 0;
        for (int64_t i = 0; i < m; ++i) {
          const int64_t n = counts.integer(b * cs[0] + h * cs[1] + i * cs[2]);
          const int64_t s = starts.integer(b * ts[0] + h * ts[1] + i * ts[2]);
          if (n < 1)
            value_error("cache.counts" + at() + ", " + str(i) + "] = " + str(n) + ": a used entry summarises >= 1 token");
          if (s != next)
            value_error("cache.starts" + at() + ", " + str(i) + "] = " + str(s) + " but the spans are contiguous from 0, so " +
                        str(next) + " was expected");
          if (n > position - next)  // next <= position, so this cannot wrap; next + n could
            value_error("cache.counts" + at() + ", " + str(i) + "] = " + str(n) + " takes the spans past cache.position = " +
                        str(position) + " (the counts must sum to the position)");
          next += n;
        }
        if (next != position)
          value_error("cache.position = " + str(position) + " but cache.counts" + at() + "] sum to " + str(next) +
                      " (the spans cover every token seen)");
      }
  }
}

}  // namespace

DLAProblem validate_dla(const DLAParams& p, OutputSpecs* infer) {
  DLAProblem r = validate_shapes(p, infer);
  // Values (read on the host, each array in one transfer: HostValues in validate/common.h), when the call
  // runs and not in the output query before it: on a device a read waits for the stream, and twice the
  // waits would double a decode step's host time. The (up to four) arrays are read with ONE wait
  // (read_host_values): each wait is a round trip to the device, the larger part of a decode step's host
  // time. A bad value then raises after the outputs were allocated.
  if (infer) return r;
  std::optional<HostValues> decay_vals, size_vals, count_vals, start_vals;
  if (r.log_decay.present) decay_vals.emplace(deferred_host_values(r.log_decay, p.q));
  if (r.cache_in.present) {
    size_vals.emplace(deferred_host_values(r.cache_in.size, p.q));
    count_vals.emplace(deferred_host_values(r.cache_in.counts, p.q));
    start_vals.emplace(deferred_host_values(r.cache_in.starts, p.q));
  }
  {
    HostValues* const all[] = {decay_vals ? &*decay_vals : nullptr, size_vals ? &*size_vals : nullptr,
                               count_vals ? &*count_vals : nullptr, start_vals ? &*start_vals : nullptr};
    read_host_values(all, 4, p.q, p.stream);
  }
  const DLACacheViews& c = r.cache_in;
  check_values(r.B, r.H, r.T, r.C, r.position, decay_vals ? &*decay_vals : nullptr, r.log_decay.stride,
               size_vals ? &*size_vals : nullptr, c.size.stride, count_vals ? &*count_vals : nullptr, c.counts.stride,
               start_vals ? &*start_vals : nullptr, c.starts.stride);
  return r;
}

}  // namespace detail
}  // namespace attnkit
