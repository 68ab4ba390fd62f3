// BlockLayout: CSR construction, the documented layout rules, union, and the device copies of ref_on (its
// structural validation is validate_layout, in validate/block_sparse.cpp).
#include <algorithm>
#include <mutex>
#include <string>
#include <unordered_map>
#include <utility>

#include "attnkit/block_sparse.h"
#include "attnkit/math/random.h"
#include "backend.h"
#include "validate/checked.h"
#include "validate/common.h"

namespace attnkit {
namespace {

using detail::value_error;

int64_t ceil_div(int64_t a, int64_t b) { return detail::ceil_div_safe(a, b); }

using detail::require_nonnegative;
using detail::require_positive;

/// Number of blocks per side, after checking that a square layout of num_heads * n rows with at most
/// per_row allowed blocks each (plus `extra`) stays within kMaxLayoutBlocks: absurd sizes are a
/// ValueError before anything is allocated.
int64_t square_blocks(int64_t seq_len, int64_t block_size, int64_t num_heads, int64_t per_row, int64_t extra = 0) {
  require_nonnegative(seq_len, "seq_len");
  require_positive(block_size, "block_size");
  require_positive(num_heads, "num_heads");
  const int64_t n = ceil_div(seq_len, block_size);
  const int64_t rows = detail::sat_mul(num_heads, n);
  const int64_t bound = detail::sat_add(detail::sat_mul(rows, std::min(per_row, n)), detail::sat_mul(num_heads, extra));
  if (n > INT32_MAX || rows > detail::kMaxLayoutBlocks || bound > detail::kMaxLayoutBlocks)
    value_error("seq_len = " + std::to_string(seq_len) + ", block_size = " + std::to_string(block_size) +
                " and num_heads = " + std::to_string(num_heads) + " give a layout of " + std::to_string(rows) +
                " block rows and up to " + std::to_string(bound) + " allowed blocks; the limit is 2^27 of each " +
                "(use a larger block_size, fewer heads or a narrower pattern)");
  return n;
}

/// Builds a square layout of n x n blocks row by row: row(h, i, cols) appends the allowed key blocks of
/// query block i of head h (any order, duplicates allowed); they are sorted and deduplicated here.
template <class RowFn>
BlockLayout build_square(int64_t n, int64_t block_size, int64_t num_heads, RowFn&& row) {
  BlockLayout L;
  L.block_q = L.block_k = block_size;
  L.num_heads = num_heads;
  L.num_q_blocks = L.num_k_blocks = n;
  L.row_ptr.reserve(static_cast<size_t>(num_heads * n + 1));
  L.row_ptr.assign(1, 0);
  std::vector<int64_t> cols;
  for (int64_t h = 0; h < num_heads; ++h)
    for (int64_t i = 0; i < L.num_q_blocks; ++i) {
      cols.clear();
      row(h, i, cols);
      std::sort(cols.begin(), cols.end());
      cols.erase(std::unique(cols.begin(), cols.end()), cols.end());
      for (int64_t j : cols)
        if (j >= 0 && j < L.num_k_blocks) L.col_idx.push_back(static_cast<int32_t>(j));
      L.row_ptr.push_back(static_cast<int64_t>(L.col_idx.size()));
    }
  return L;
}

/// Band j = i + t * dilation, -left <= t <= right, 0 <= j < n: only the in-range t are visited, so the
/// cost follows the result whatever the (huge) window or dilation, and no product can overflow.
void band(int64_t i, int64_t n, int64_t left, int64_t right, int64_t dilation, std::vector<int64_t>& cols) {
  const int64_t t_lo = -std::min(left, i / dilation), t_hi = std::min(right, (n - 1 - i) / dilation);
  for (int64_t t = t_lo; t <= t_hi; ++t) cols.push_back(i + t * dilation);
}

/// Allowed blocks per row of a band of `window` blocks per side (the upper bound square_blocks checks).
int64_t band_width(int64_t window, bool causal) {
  return detail::sat_add(causal ? window : detail::sat_mul(window, 2), 1);
}

}  // namespace

BlockLayout BlockLayout::from_dense(const uint8_t* blocks, int64_t num_heads, int64_t nqb, int64_t nkb,
                                    int64_t block_q, int64_t block_k) {
  require_positive(num_heads, "num_heads");
  require_nonnegative(nqb, "num_q_blocks");
  require_nonnegative(nkb, "num_k_blocks");
  require_positive(block_q, "block_size[0]");
  require_positive(block_k, "block_size[1]");
  if (nkb > INT32_MAX) value_error("more than 2^31 key blocks are not supported");
  detail::checked_mul(detail::checked_mul(num_heads, nqb, "num_heads * num_q_blocks"), nkb,
                      "num_heads * num_q_blocks * num_k_blocks");
  BlockLayout L;
  L.block_q = block_q;
  L.block_k = block_k;
  L.num_heads = num_heads;
  L.num_q_blocks = nqb;
  L.num_k_blocks = nkb;
  L.row_ptr.assign(1, 0);
  for (int64_t r = 0; r < num_heads * nqb; ++r) {
    for (int64_t j = 0; j < nkb; ++j)
      if (blocks[r * nkb + j]) L.col_idx.push_back(static_cast<int32_t>(j));
    L.row_ptr.push_back(static_cast<int64_t>(L.col_idx.size()));
  }
  return L;
}

BlockLayout BlockLayout::sliding_window(int64_t seq_len, int64_t block_size, int64_t window_blocks, bool causal,
                                        int64_t num_heads) {
  require_nonnegative(window_blocks, "window_blocks");
  const int64_t n = square_blocks(seq_len, block_size, num_heads, band_width(window_blocks, causal));
  return build_square(n, block_size, num_heads, [&](int64_t, int64_t i, std::vector<int64_t>& cols) {
    band(i, n, window_blocks, causal ? 0 : window_blocks, 1, cols);
  });
}

BlockLayout BlockLayout::longformer(int64_t seq_len, int64_t block_size, int64_t window_blocks,
                                    const std::vector<int64_t>& global_tokens, int64_t dilation, bool causal,
                                    int64_t num_heads) {
  require_nonnegative(window_blocks, "window_blocks");
  require_positive(dilation, "dilation");
  require_positive(block_size, "block_size");
  require_nonnegative(seq_len, "seq_len");
  const int64_t ng = static_cast<int64_t>(global_tokens.size());
  const int64_t n = square_blocks(seq_len, block_size, num_heads, detail::sat_add(band_width(window_blocks, causal), ng),
                                  detail::sat_mul(ng, ceil_div(seq_len, block_size)));
  std::vector<uint8_t> is_global(static_cast<size_t>(n), 0);
  std::vector<int64_t> globals;
  for (int64_t g : global_tokens) {
    if (g < 0 || g >= seq_len)
      value_error("global_tokens: token " + std::to_string(g) + " is outside [0, seq_len) = [0, " +
                  std::to_string(seq_len) + ")");
    if (!is_global[g / block_size]) globals.push_back(g / block_size);
    is_global[g / block_size] = 1;
  }
  return build_square(n, block_size, num_heads, [&](int64_t, int64_t i, std::vector<int64_t>& cols) {
    const int64_t last = causal ? i : n - 1;  // causal: nothing after the query block
    if (is_global[i]) {
      for (int64_t j = 0; j <= last; ++j) cols.push_back(j);
      return;
    }
    band(i, n, window_blocks, causal ? 0 : window_blocks, dilation, cols);
    for (int64_t g : globals)
      if (g <= last) cols.push_back(g);
  });
}

BlockLayout BlockLayout::bigbird(int64_t seq_len, int64_t block_size, int64_t window_blocks, int64_t global_blocks,
                                 int64_t random_blocks, uint64_t seed, bool causal, int64_t num_heads) {
  require_nonnegative(window_blocks, "window_blocks");
  require_nonnegative(global_blocks, "global_blocks");
  require_nonnegative(random_blocks, "random_blocks");
  require_positive(block_size, "block_size");
  require_nonnegative(seq_len, "seq_len");
  const int64_t per_row = detail::sat_add(detail::sat_add(band_width(window_blocks, causal), global_blocks), random_blocks);
  const int64_t n = square_blocks(seq_len, block_size, num_heads, per_row,
                                  detail::sat_mul(std::min(global_blocks, ceil_div(seq_len, block_size)),
                                                  ceil_div(seq_len, block_size)));
  std::vector<int64_t> taken, listed;
  std::unordered_map<int64_t, int64_t> moved;  // Fisher-Yates positions whose candidate was swapped
  return build_square(n, block_size, num_heads, [&](int64_t h, int64_t i, std::vector<int64_t>& cols) {
    const int64_t last = causal ? i : n - 1;
    if (i < global_blocks) {  // global rows see everything (causal: the past)
      for (int64_t j = 0; j <= last; ++j) cols.push_back(j);
      return;
    }
    band(i, n, window_blocks, causal ? 0 : window_blocks, 1, cols);
    for (int64_t j = 0; j < std::min(global_blocks, last + 1); ++j) cols.push_back(j);
    if (random_blocks == 0) return;
    // Random blocks: uniform without replacement among the blocks <= last not allowed yet. Draw t of row
    // i uses Philox word (i << 32) + t of stream kStreamBigBird + h (shared layouts: h = 0).
    // The candidates are 0 .. last without `taken`, ascending. When the row draws a good share of them
    // they are listed; otherwise candidate p is computed from the sorted taken blocks and the partial
    // Fisher-Yates keeps only the positions it swapped. Either way a row costs O(result), not O(n), and
    // draws the same blocks.
    taken.assign(cols.begin(), cols.end());
    std::sort(taken.begin(), taken.end());
    taken.erase(std::unique(taken.begin(), taken.end()), taken.end());
    const int64_t ncand = last + 1 - static_cast<int64_t>(taken.size());
    const bool list = std::min<int64_t>(random_blocks, ncand) * 4 >= ncand;
    listed.clear();
    if (list)
      for (int64_t j = 0, t = 0; j <= last; ++j) {
        if (t < static_cast<int64_t>(taken.size()) && taken[t] == j) {
          ++t;
          continue;
        }
        listed.push_back(j);
      }
    moved.clear();
    auto cand = [&](int64_t pos) {
      if (list) return listed[pos];
      const auto it = moved.find(pos);
      if (it != moved.end()) return it->second;
      int64_t j = pos;
      for (int64_t c : taken) {
        if (c > j) break;
        ++j;
      }
      return j;
    };
    auto put = [&](int64_t pos, int64_t j) {
      if (list)
        listed[pos] = j;
      else
        moved[pos] = j;
    };
    const uint64_t stream = math::kStreamBigBird + static_cast<uint64_t>(h);
    const int64_t picks = std::min<int64_t>(random_blocks, ncand);
    for (int64_t t = 0; t < picks; ++t) {  // partial Fisher-Yates over the candidates
      const int64_t remaining = ncand - t;
      const int64_t r = t + math::uniform_below(seed, stream, (static_cast<uint64_t>(i) << 32) + t,
                                                static_cast<uint32_t>(remaining));
      const int64_t a = cand(t), b = cand(r);
      put(r, a);
      put(t, b);
      cols.push_back(b);
    }
  });
}

BlockLayout BlockLayout::fixed(int64_t seq_len, int64_t block_size, int64_t local_blocks, int64_t global_blocks,
                               bool causal, int64_t num_heads) {
  require_positive(local_blocks, "local_blocks");
  require_nonnegative(global_blocks, "global_blocks");
  if (global_blocks > local_blocks)
    value_error("global_blocks (" + std::to_string(global_blocks) + ") must not exceed local_blocks (" +
                std::to_string(local_blocks) + ")");
  require_positive(block_size, "block_size");
  require_nonnegative(seq_len, "seq_len");
  const int64_t nb = ceil_div(seq_len, block_size);
  const int64_t n = square_blocks(seq_len, block_size, num_heads,
                                  detail::sat_add(local_blocks, detail::sat_mul(ceil_div(nb, local_blocks), global_blocks)));
  return build_square(n, block_size, num_heads, [&](int64_t, int64_t i, std::vector<int64_t>& cols) {
    const int64_t last = causal ? i : n - 1;
    const int64_t seg = i / local_blocks, seg0 = seg * local_blocks;  // seg0 <= i: no overflow
    for (int64_t j = seg0; j <= last && j - seg0 < local_blocks; ++j) cols.push_back(j);
    // The last global_blocks blocks of every segment up to `last`, visited segment by segment (the cost
    // follows the result; the guards keep every sum below last + local_blocks without overflow).
    if (global_blocks > 0)
      for (int64_t s0 = 0;; s0 += local_blocks) {
        if (local_blocks - global_blocks <= last - s0)
          for (int64_t j = s0 + (local_blocks - global_blocks); j <= last && j - s0 < local_blocks; ++j)
            cols.push_back(j);
        if (last - s0 < local_blocks) break;
      }
  });
}

BlockLayout BlockLayout::unite(const std::vector<const BlockLayout*>& layouts) {
  if (layouts.empty()) value_error("union needs at least one layout");
  const BlockLayout& a = *layouts[0];
  int64_t heads = 1;
  for (size_t k = 0; k < layouts.size(); ++k) {
    const BlockLayout& b = *layouts[k];
    if (b.block_q != a.block_q || b.block_k != a.block_k || b.num_q_blocks != a.num_q_blocks ||
        b.num_k_blocks != a.num_k_blocks)
      value_error("union: layout " + std::to_string(k) + " has block size (" + std::to_string(b.block_q) + ", " +
                  std::to_string(b.block_k) + ") and " + std::to_string(b.num_q_blocks) + " x " +
                  std::to_string(b.num_k_blocks) + " blocks, layout 0 has (" + std::to_string(a.block_q) + ", " +
                  std::to_string(a.block_k) + ") and " + std::to_string(a.num_q_blocks) + " x " +
                  std::to_string(a.num_k_blocks) + "; only layouts of one geometry can be united");
    if (b.num_heads != 1) {
      if (heads != 1 && heads != b.num_heads)
        value_error("union: layouts have " + std::to_string(heads) + " and " + std::to_string(b.num_heads) +
                    " heads; head counts must match (or be 1, which broadcasts)");
      heads = b.num_heads;
    }
  }
  BlockLayout L;
  L.block_q = a.block_q;
  L.block_k = a.block_k;
  L.num_heads = heads;
  L.num_q_blocks = a.num_q_blocks;
  L.num_k_blocks = a.num_k_blocks;
  L.row_ptr.assign(1, 0);
  std::vector<int32_t> cols;
  for (int64_t h = 0; h < heads; ++h)
    for (int64_t i = 0; i < L.num_q_blocks; ++i) {
      cols.clear();
      for (const BlockLayout* b : layouts) {
        const int64_t r = (b->num_heads == 1 ? 0 : h) * b->num_q_blocks + i;
        cols.insert(cols.end(), b->col_idx.begin() + b->row_ptr[r], b->col_idx.begin() + b->row_ptr[r + 1]);
      }
      std::sort(cols.begin(), cols.end());
      cols.erase(std::unique(cols.begin(), cols.end()), cols.end());
      L.col_idx.insert(L.col_idx.end(), cols.begin(), cols.end());
      L.row_ptr.push_back(static_cast<int64_t>(L.col_idx.size()));
    }
  return L;
}

std::vector<uint8_t> BlockLayout::to_dense() const {
  std::vector<uint8_t> d(static_cast<size_t>(num_heads * num_q_blocks * num_k_blocks), 0);
  for (int64_t r = 0; r < num_heads * num_q_blocks; ++r)
    for (int64_t e = row_ptr[r]; e < row_ptr[r + 1]; ++e) d[r * num_k_blocks + col_idx[e]] = 1;
  return d;
}

double BlockLayout::density() const {
  const double all = static_cast<double>(num_heads) * num_q_blocks * num_k_blocks;
  return all > 0 ? static_cast<double>(col_idx.size()) / all : 0.0;
}

/// The device copies of one layout's CSR, one entry per device (and per CSR buffer, so a modified layout is
/// copied again).
struct BlockLayoutDeviceCache {
  struct Entry {
    int32_t device;
    const void* row_ptr_src;
    std::size_t row_ptr_n;
    const void* col_idx_src;
    std::size_t col_idx_n;
    std::shared_ptr<void> row_ptr, col_idx;
  };
  std::mutex mu;
  std::vector<Entry> entries;
};

BlockLayoutRef BlockLayout::ref_on(int32_t device_index, void* stream) const {
  BlockLayoutRef r = ref();
  static std::mutex create_mu;
  {
    std::lock_guard<std::mutex> lock(create_mu);
    if (!device_cache) device_cache = std::make_shared<BlockLayoutDeviceCache>();
  }
  BlockLayoutDeviceCache& c = *device_cache;
  std::lock_guard<std::mutex> lock(c.mu);
  const BlockLayoutDeviceCache::Entry* hit = nullptr;
  for (const auto& e : c.entries)
    if (e.device == device_index && e.row_ptr_src == row_ptr.data() && e.row_ptr_n == row_ptr.size() &&
        e.col_idx_src == col_idx.data() && e.col_idx_n == col_idx.size())
      hit = &e;
  if (!hit) {
    BlockLayoutDeviceCache::Entry e{device_index, row_ptr.data(), row_ptr.size(), col_idx.data(), col_idx.size(),
                                    nullptr, nullptr};
    e.row_ptr = detail::cuda::upload(row_ptr.data(), row_ptr.size() * sizeof(int64_t), device_index, stream);
    e.col_idx = detail::cuda::upload(col_idx.data(), col_idx.size() * sizeof(int32_t), device_index, stream);
    c.entries.push_back(std::move(e));
    hit = &c.entries.back();
  }
  r.device_row_ptr = static_cast<const int64_t*>(hit->row_ptr.get());
  r.device_col_idx = static_cast<const int32_t*>(hit->col_idx.get());
  r.device_index = device_index;
  return r;
}

BlockLayoutRef BlockLayout::ref() const {
  BlockLayoutRef r;
  r.row_ptr = make_tensor(const_cast<int64_t*>(row_ptr.data()), DType::Int64, {static_cast<int64_t>(row_ptr.size())});
  r.col_idx = make_tensor(const_cast<int32_t*>(col_idx.data()), DType::Int32, {static_cast<int64_t>(col_idx.size())});
  r.block_q = block_q;
  r.block_k = block_k;
  r.num_heads = num_heads;
  r.num_q_blocks = num_q_blocks;
  r.num_k_blocks = num_k_blocks;
  return r;
}

}  // namespace attnkit
