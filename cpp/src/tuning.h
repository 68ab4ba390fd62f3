#pragma once
// Backend tuning options: algorithm switches that change speed, never a result beyond rounding (chunk
// lengths, the DLA form). They are not part of the public params structs; tests and benchmarks set them
// process-wide through attnkit._core.set_tuning / get_tuning (attnkit._tuning in Python).

#include <atomic>
#include <cstdint>
#include <string>

namespace attnkit {
namespace detail {

/// Longest linear-attention chunk (the chunk's C x C score tile lives in per-thread scratch).
constexpr int64_t kMaxLinearChunk = 1024;

struct Tuning {
  /// Linear attention / Performer: chunk length of the causal form and block length of the bidirectional
  /// one; 0 = the tuned default, else [1, kMaxLinearChunk].
  std::atomic<int64_t> linear_chunk{0};
  /// DLA: 0 = automatic (decode path for T = 1, else chunks of 64), L >= 1 = chunks of L tokens.
  std::atomic<int64_t> dla_chunk{0};
  /// CUDA decode kernel (cuda/attention_decode2.cuh; speed only, never a result beyond rounding):
  /// cuda_decode: 0 = automatic (v3, else v2, where enabled and taking the problem), 1 = the v1 kernel,
  /// 2 = v2 (never v3);
  /// cuda_decode_keys: keys per lane group and step of v2 (0 = default, else 1, 2 or 4, clamped to what the
  /// head dim allows); cuda_decode_blocks: v2's target grid size, from which the split count follows
  /// (0 = default, else 64..65536). The defaults come from ATTNKIT_CUDA_DECODE (cuda/attention_decode2.cuh).
  std::atomic<int64_t> cuda_decode{0};
  std::atomic<int64_t> cuda_decode_keys{0};
  std::atomic<int64_t> cuda_decode_blocks{0};
  /// CUDA decode kernel v3 (cuda/attention_decode3.cuh, tensor cores): cuda_decode = 2 skips it (v2 where
  /// it applies); cuda_decode_stages: cp.async stages per warp (0 = default, else 2, 3 or 4);
  /// cuda_decode3_blocks: v3's target grid size (0 = default, else 64..65536). The defaults come from
  /// ATTNKIT_CUDA_DECODE3.
  std::atomic<int64_t> cuda_decode_stages{0};
  std::atomic<int64_t> cuda_decode3_blocks{0};
  /// CUDA decode v3's split merge by programmatic dependent launch (sm_90+): 0 = default (on), 1 = on, 2 = off.
  std::atomic<int64_t> cuda_decode3_pdl{0};
  /// Every CUDA kernel's scratch (cuda/workspace.cuh): 0 = attnkit's stream-ordered pool per device, which
  /// keeps its memory between calls; 1 = cudaMallocAsync on the device's default pool (for measurements).
  std::atomic<int64_t> cuda_scratch{0};
  /// DLA prefill on CUDA (v4, cuda/dla_prefill_v4.cuh): blocks per (batch, head) of its state pass C1, each
  /// owning a slice of the output columns; 0 = automatic, else [1, kMaxDlaSplit]; -1 = the first kernel
  /// (cuda/dla_prefill.cu, for side-by-side measurements); -2 = v4's passes C1 + C2 instead of v5's fused pass
  /// (dla_prefill_v5.cuh, where its gate is open; it also takes splits > 0 for its column slices), split
  /// automatic. No effect on the CPU; results equal up to rounding (v4's and v5's are the same bits for every
  /// split).
  std::atomic<int64_t> dla_split{0};
  /// DLA decode step on CUDA: 0 = automatic (cuda/dla_decode_v3.cu where enabled, else cuda/dla_decode_v2.cu),
  /// 2 = cuda/dla_decode_v2.cu (for side-by-side measurements; 1, the first kernel, is gone since session 27).
  /// Results equal up to rounding.
  std::atomic<int64_t> dla_decode{0};
};

/// Largest dla_split.
constexpr int64_t kMaxDlaSplit = 8;

Tuning& tuning();
/// Sets option `name` ("linear_chunk", "dla_chunk", "dla_split", "cuda_decode", "cuda_decode_keys",
/// "cuda_decode_blocks", "cuda_decode_stages", "cuda_decode3_blocks", "cuda_decode3_pdl",
/// "cuda_scratch", "dla_decode"); Error(Value) naming it for an unknown name or a value
/// out of range.
void set_tuning(const std::string& name, int64_t value);
int64_t get_tuning(const std::string& name);

}  // namespace detail
}  // namespace attnkit
