// C ABI of exact attention, attention weights, merge, block layouts (a handle), block-sparse and LSH
// attention: each function converts its arguments and calls the C++ API inside guard().
#include <vector>

#include "c_api/common.h"

using namespace attnkit;
using attnkit::capi::guard;

struct attnkit_layout {
  BlockLayout layout;
};

namespace {

capi::Registry& layouts() {
  static capi::Registry r("layout");
  return r;
}

void fill_attention(AttentionParams& p, const attnkit_attention_options* given) {
  const auto o = capi::options(given, attnkit_attention_options_default(), "opts");
  p.scale = capi::scale_of(o.has_scale, o.scale, "opts.has_scale");
  p.softcap = o.softcap;
  p.causal = capi::flag(o.causal, "opts.causal");
  p.window_left = o.window_left;
  p.window_right = o.window_right;
  p.mask = capi::optional_tensor(o.mask, "opts.mask");
  p.bias = capi::optional_tensor(o.bias, "opts.bias");
  p.key_lengths = capi::optional_tensor(o.key_lengths, "opts.key_lengths");
  p.alibi_slopes = capi::optional_tensor(o.alibi_slopes, "opts.alibi_slopes");
  p.stream = o.stream;
}

const BlockLayout& live_layout(const attnkit_layout* h, const char* name) {
  layouts().check(h, name);
  return h->layout;
}

void publish_layout(BlockLayout&& l, attnkit_layout** out) {
  capi::publish(new attnkit_layout{std::move(l)}, out, layouts(), "layout");
}

}  // namespace

extern "C" {

attnkit_status attnkit_attention(const attnkit_tensor* q, const attnkit_tensor* k, const attnkit_tensor* v,
                                 const attnkit_tensor* out, const attnkit_tensor* lse,
                                 const attnkit_attention_options* opts) {
  return guard([&] {
    AttentionParams p;
    capi::set_qkv_out(p, q, k, v, out);
    p.lse = capi::optional_tensor(lse, "lse");
    fill_attention(p, opts);
    attention(p);
  });
}

attnkit_status attnkit_attention_weights(const attnkit_tensor* q, const attnkit_tensor* k,
                                         const attnkit_tensor* weights, const attnkit_attention_options* opts) {
  return guard([&] {
    AttentionParams p;
    p.q = capi::tensor(q, "q");
    p.k = capi::tensor(k, "k");
    const TensorRef w = capi::tensor(weights, "weights");
    fill_attention(p, opts);
    attention_weights(p, w);
  });
}

attnkit_status attnkit_merge_attention(const attnkit_tensor* outs, const attnkit_tensor* lses, int64_t num_parts,
                                       const attnkit_tensor* out, const attnkit_tensor* lse, void* stream) {
  return guard([&] {
    if (num_parts < 0) capi::fail(ErrorKind::Value, "num_parts must be >= 0, got " + std::to_string(num_parts));
    if (num_parts > 0 && outs == nullptr) capi::fail(ErrorKind::Value, "outs is NULL");
    if (num_parts > 0 && lses == nullptr) capi::fail(ErrorKind::Value, "lses is NULL");
    MergeParams p;
    for (int64_t i = 0; i < num_parts; ++i) {
      p.outs.push_back(capi::tensor(&outs[i], "outs[" + std::to_string(i) + "]"));
      p.lses.push_back(capi::tensor(&lses[i], "lses[" + std::to_string(i) + "]"));
    }
    p.out = capi::tensor(out, "out");
    p.lse = capi::optional_tensor(lse, "lse");
    p.stream = stream;
    merge_attention(p);
  });
}

attnkit_status attnkit_layout_from_dense(const uint8_t* blocks, int64_t num_heads, int64_t num_q_blocks,
                                         int64_t num_k_blocks, int64_t block_q, int64_t block_k,
                                         attnkit_layout** layout) {
  return guard([&] {
    if (blocks == nullptr && num_heads > 0 && num_q_blocks > 0 && num_k_blocks > 0)
      capi::fail(ErrorKind::Value, "blocks is NULL");
    publish_layout(BlockLayout::from_dense(blocks, num_heads, num_q_blocks, num_k_blocks, block_q, block_k), layout);
  });
}

attnkit_status attnkit_layout_sliding_window(int64_t seq_len, int64_t block_size, int64_t window_blocks,
                                             int32_t causal, int64_t num_heads, attnkit_layout** layout) {
  return guard([&] {
    publish_layout(BlockLayout::sliding_window(seq_len, block_size, window_blocks, capi::flag(causal, "causal"),
                                               num_heads),
                   layout);
  });
}

attnkit_status attnkit_layout_longformer(int64_t seq_len, int64_t block_size, int64_t window_blocks,
                                         const int64_t* global_tokens, int64_t num_global_tokens, int64_t dilation,
                                         int32_t causal, int64_t num_heads, attnkit_layout** layout) {
  return guard([&] {
    if (num_global_tokens < 0)
      capi::fail(ErrorKind::Value, "num_global_tokens must be >= 0, got " + std::to_string(num_global_tokens));
    if (num_global_tokens > 0 && global_tokens == nullptr) capi::fail(ErrorKind::Value, "global_tokens is NULL");
    std::vector<int64_t> globals(global_tokens, global_tokens + num_global_tokens);
    publish_layout(BlockLayout::longformer(seq_len, block_size, window_blocks, globals, dilation,
                                           capi::flag(causal, "causal"), num_heads),
                   layout);
  });
}

attnkit_status attnkit_layout_bigbird(int64_t seq_len, int64_t block_size, int64_t window_blocks,
                                      int64_t global_blocks, int64_t random_blocks, uint64_t seed, int32_t causal,
                                      int64_t num_heads, attnkit_layout** layout) {
  return guard([&] {
    publish_layout(BlockLayout::bigbird(seq_len, block_size, window_blocks, global_blocks, random_blocks, seed,
                                        capi::flag(causal, "causal"), num_heads),
                   layout);
  });
}

attnkit_status attnkit_layout_fixed(int64_t seq_len, int64_t block_size, int64_t local_blocks,
                                    int64_t global_blocks, int32_t causal, int64_t num_heads,
                                    attnkit_layout** layout) {
  return guard([&] {
    publish_layout(BlockLayout::fixed(seq_len, block_size, local_blocks, global_blocks,
                                      capi::flag(causal, "causal"), num_heads),
                   layout);
  });
}

attnkit_status attnkit_layout_union(const attnkit_layout* const* parts, int64_t num_layouts,
                                    attnkit_layout** layout) {
  return guard([&] {
    if (num_layouts < 1) capi::fail(ErrorKind::Value, "num_layouts must be >= 1, got " + std::to_string(num_layouts));
    if (parts == nullptr) capi::fail(ErrorKind::Value, "layouts is NULL");
    std::vector<const BlockLayout*> ls;
    for (int64_t i = 0; i < num_layouts; ++i)
      ls.push_back(&live_layout(parts[i], ("layouts[" + std::to_string(i) + "]").c_str()));
    publish_layout(BlockLayout::unite(ls), layout);
  });
}

attnkit_status attnkit_layout_destroy(attnkit_layout* layout) {
  return guard([&] {
    if (layout == nullptr) return;
    layouts().remove(layout, "layout");
    delete layout;
  });
}

attnkit_status attnkit_layout_get_info(const attnkit_layout* layout, attnkit_layout_info* info) {
  return guard([&] {
    const BlockLayout& l = live_layout(layout, "layout");
    if (info == nullptr) capi::fail(ErrorKind::Value, "info is NULL");
    info->block_q = l.block_q;
    info->block_k = l.block_k;
    info->num_heads = l.num_heads;
    info->num_q_blocks = l.num_q_blocks;
    info->num_k_blocks = l.num_k_blocks;
    info->nnz = static_cast<int64_t>(l.col_idx.size());
    info->density = l.density();
  });
}

attnkit_status attnkit_layout_to_dense(const attnkit_layout* layout, uint8_t* blocks, int64_t size) {
  return guard([&] {
    const BlockLayout& l = live_layout(layout, "layout");
    const int64_t n = l.num_heads * l.num_q_blocks * l.num_k_blocks;
    if (size != n)
      capi::fail(ErrorKind::Value, "size must be num_heads * num_q_blocks * num_k_blocks = " + std::to_string(n) +
                                       ", got " + std::to_string(size));
    if (blocks == nullptr && n > 0) capi::fail(ErrorKind::Value, "blocks is NULL");
    const std::vector<uint8_t> dense = l.to_dense();
    std::copy(dense.begin(), dense.end(), blocks);
  });
}

attnkit_status attnkit_block_sparse_attention(const attnkit_tensor* q, const attnkit_tensor* k,
                                              const attnkit_tensor* v, const attnkit_layout* layout,
                                              const attnkit_tensor* out, const attnkit_tensor* lse,
                                              const attnkit_block_sparse_options* opts) {
  return guard([&] {
    const auto o = capi::options(opts, attnkit_block_sparse_options_default(), "opts");
    BlockSparseParams p;
    capi::set_qkv_out(p, q, k, v, out);
    p.layout = live_layout(layout, "layout").ref();
    p.lse = capi::optional_tensor(lse, "lse");
    p.scale = capi::scale_of(o.has_scale, o.scale, "opts.has_scale");
    p.causal = capi::flag(o.causal, "opts.causal");
    p.key_lengths = capi::optional_tensor(o.key_lengths, "opts.key_lengths");
    p.stream = o.stream;
    block_sparse_attention(p);
  });
}

attnkit_status attnkit_lsh_buckets(const attnkit_tensor* x, const attnkit_tensor* out, int64_t num_buckets,
                                   int64_t num_hashes, uint64_t seed, void* stream) {
  return guard([&] {
    LshBucketsParams p;
    p.x = capi::tensor(x, "x");
    p.out = capi::tensor(out, "out");
    p.num_buckets = num_buckets;
    p.num_hashes = num_hashes;
    p.seed = seed;
    p.stream = stream;
    lsh_buckets(p);
  });
}

attnkit_status attnkit_lsh_attention(const attnkit_tensor* q, const attnkit_tensor* k, const attnkit_tensor* v,
                                     const attnkit_tensor* out, const attnkit_tensor* lse,
                                     const attnkit_lsh_options* opts) {
  return guard([&] {
    const auto o = capi::options(opts, attnkit_lsh_options_default(), "opts");
    LshAttentionParams p;
    capi::set_qkv_out(p, q, k, v, out);
    p.lse = capi::optional_tensor(lse, "lse");
    p.num_buckets = o.num_buckets;
    p.num_hashes = o.num_hashes;
    p.seed = o.seed;
    p.causal = capi::flag(o.causal, "opts.causal");
    p.scale = capi::scale_of(o.has_scale, o.scale, "opts.has_scale");
    p.stream = o.stream;
    lsh_attention(p);
  });
}

}  // extern "C"
