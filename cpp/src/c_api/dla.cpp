// C ABI of dynamic linear attention: an owning cache handle (two buffers: each call reads one and writes
// the other, then swaps on success, so a failed call leaves the cache as it was) and the attention call.
#include <algorithm>
#include <vector>

#include "c_api/common.h"

using namespace attnkit;
using attnkit::capi::guard;

namespace {

/// The five arrays of one cache buffer, in CPU memory.
struct CacheBuffer {
  std::vector<unsigned char> states, info;  // state dtype
  std::vector<int64_t> counts, starts, size;
};

}  // namespace

struct attnkit_dla_cache {
  int64_t B, H, C, Dk, Dv;
  DType dtype;  // of states and info
  int64_t position = 0;
  CacheBuffer buf[2];
  int current = 0;

  void allocate() {
    const size_t es = dtype_size(dtype);
    for (CacheBuffer& b : buf) {
      b.states.assign(static_cast<size_t>(B * H * C * Dk * Dv) * es, 0);
      b.info.assign(static_cast<size_t>(B * H * C) * es, 0);
      b.counts.assign(static_cast<size_t>(B * H * C), 0);
      b.starts.assign(static_cast<size_t>(B * H * C), 0);
      b.size.assign(static_cast<size_t>(B * H), 0);
    }
  }

  DLACacheTensors view(int which) {
    CacheBuffer& b = buf[which];
    DLACacheTensors t;
    t.states = make_tensor(b.states.data(), dtype, {B, H, C, Dk, Dv});
    t.counts = make_tensor(b.counts.data(), DType::Int64, {B, H, C});
    t.info = make_tensor(b.info.data(), dtype, {B, H, C});
    t.starts = make_tensor(b.starts.data(), DType::Int64, {B, H, C});
    t.size = make_tensor(b.size.data(), DType::Int64, {B, H});
    return t;
  }
};

namespace {

capi::Registry& caches() {
  static capi::Registry r("dla_cache");
  return r;
}

attnkit_dla_cache& live_cache(const attnkit_dla_cache* h, const char* name) {
  caches().check(h, name);
  return *const_cast<attnkit_dla_cache*>(h);
}

attnkit_tensor c_view(const TensorRef& t, int64_t* shape) {
  std::copy(t.shape, t.shape + t.ndim, shape);
  attnkit_tensor c = attnkit_tensor_cpu(t.data, static_cast<int32_t>(t.dtype), t.ndim, shape);
  return c;
}

}  // namespace

extern "C" {

attnkit_status attnkit_dla_cache_create(int64_t batch, int64_t heads, int64_t capacity, int64_t dk, int64_t dv,
                                        int32_t state_dtype, attnkit_dla_cache** cache) {
  return guard([&] {
    const std::pair<const char*, int64_t> dims[] = {{"batch", batch}, {"heads", heads}, {"capacity", capacity},
                                                    {"dk", dk}, {"dv", dv}};
    for (const auto& d : dims)
      if (d.second < 1) capi::fail(ErrorKind::Value, std::string(d.first) + " must be >= 1, got " +
                                                         std::to_string(d.second));
    if (state_dtype != ATTNKIT_FLOAT32 && state_dtype != ATTNKIT_FLOAT64)
      capi::fail(ErrorKind::Type, "state_dtype must be ATTNKIT_FLOAT32 (0) or ATTNKIT_FLOAT64 (1), got " +
                                      std::to_string(state_dtype));
    auto* c = new attnkit_dla_cache;
    c->B = batch, c->H = heads, c->C = capacity, c->Dk = dk, c->Dv = dv;
    c->dtype = static_cast<DType>(state_dtype);
    try {
      c->allocate();
    } catch (...) {
      delete c;
      throw;
    }
    capi::publish(c, cache, caches(), "cache");
  });
}

attnkit_status attnkit_dla_cache_destroy(attnkit_dla_cache* cache) {
  return guard([&] {
    if (cache == nullptr) return;
    caches().remove(cache, "cache");
    delete cache;
  });
}

attnkit_status attnkit_dla_cache_reset(attnkit_dla_cache* cache) {
  return guard([&] {
    live_cache(cache, "cache").allocate();
    cache->position = 0;
  });
}

attnkit_status attnkit_dla_cache_position(const attnkit_dla_cache* cache, int64_t* position) {
  return guard([&] {
    const attnkit_dla_cache& c = live_cache(cache, "cache");
    if (position == nullptr) capi::fail(ErrorKind::Value, "position is NULL");
    *position = c.position;
  });
}

attnkit_status attnkit_dla_cache_size(const attnkit_dla_cache* cache, int64_t b, int64_t h, int64_t* size) {
  return guard([&] {
    const attnkit_dla_cache& c = live_cache(cache, "cache");
    if (b < 0 || b >= c.B) capi::fail(ErrorKind::Value, "b must be in [0, " + std::to_string(c.B) + "), got " +
                                                            std::to_string(b));
    if (h < 0 || h >= c.H) capi::fail(ErrorKind::Value, "h must be in [0, " + std::to_string(c.H) + "), got " +
                                                            std::to_string(h));
    if (size == nullptr) capi::fail(ErrorKind::Value, "size is NULL");
    *size = c.buf[c.current].size[static_cast<size_t>(b * c.H + h)];
  });
}

attnkit_status attnkit_dla_cache_tensors(const attnkit_dla_cache* cache, int64_t* shape_storage,
                                         attnkit_tensor* states, attnkit_tensor* counts, attnkit_tensor* info,
                                         attnkit_tensor* starts, attnkit_tensor* size) {
  return guard([&] {
    attnkit_dla_cache& c = live_cache(cache, "cache");
    if (shape_storage == nullptr) capi::fail(ErrorKind::Value, "shape_storage is NULL");
    const DLACacheTensors t = c.view(c.current);
    const std::pair<attnkit_tensor*, const TensorRef*> outs[] = {
        {states, &t.states}, {counts, &t.counts}, {info, &t.info}, {starts, &t.starts}, {size, &t.size}};
    for (int i = 0; i < 5; ++i)
      if (outs[i].first != nullptr) *outs[i].first = c_view(*outs[i].second, shape_storage + i * ATTNKIT_MAX_RANK);
  });
}

attnkit_status attnkit_dynamic_linear_attention(const attnkit_tensor* q, const attnkit_tensor* k,
                                                const attnkit_tensor* v, const attnkit_tensor* lam,
                                                attnkit_dla_cache* cache, const attnkit_tensor* out,
                                                const attnkit_dla_options* opts) {
  return guard([&] {
    const auto o = capi::options(opts, attnkit_dla_options_default(), "opts");
    attnkit_dla_cache& c = live_cache(cache, "cache");
    DLAParams p;
    capi::set_qkv_out(p, q, k, v, out);
    p.lam = capi::tensor(lam, "lam");
    p.log_decay = capi::optional_tensor(o.log_decay, "opts.log_decay");
    p.scores = capi::optional_tensor(o.scores, "opts.scores");
    p.boundaries = capi::optional_tensor(o.boundaries, "opts.boundaries");
    p.merged = capi::optional_tensor(o.merged, "opts.merged");
    if (o.score != ATTNKIT_DLA_TOKEN_VS_STATE && o.score != ATTNKIT_DLA_STATE_DRIFT)
      capi::fail(ErrorKind::Value, "opts.score must be ATTNKIT_DLA_TOKEN_VS_STATE (0) or _STATE_DRIFT (1), got " +
                                       std::to_string(o.score));
    p.score = static_cast<DLAScore>(o.score);
    p.tau = o.tau;
    p.stream = o.stream;
    p.capacity = c.C;
    p.position = c.position;
    if (c.position > 0) p.cache_in = c.view(c.current);
    p.cache_out = c.view(1 - c.current);
    dynamic_linear_attention(p);
    c.position += p.q.ndim >= 2 ? p.q.shape[p.q.ndim - 2] : 0;
    c.current = 1 - c.current;
  });
}

}  // extern "C"
