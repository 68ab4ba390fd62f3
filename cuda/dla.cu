// Dynamic linear attention on the GPU: the entry point. The decode step (T = 1) runs dla_decode_v3.cu's
// kernel (or dla_decode_v2.cu's two) and everything else a chunked form (DLA prefill v4, dla_prefill_v4.cuh,
// or dla_prefill.cu), in exactly the cases where the CPU takes its decode path (cpu/dla_decode.h) and its
// chunked form (cpu/dla_prefill.h).
//
// Work mapping. One block of 256 threads per (batch, head) item, grid-stride over the items (a few blocks
// per SM, fewer when the per-block scratch would pass 1 GiB): the cache makes each item sequential over its
// tokens, as on the CPU. Inside a block the independent work is spread over the threads (Gram entries,
// output elements, state elements); the boundary / merge scan of each chunk is one thread's loop.
//
// Agreement with the CPU. The decisions (boundary, merge pair) come from math/dla.h on the same
// quantities, combined in the same order and precision where the CPU fixes them: per chunk of the same
// length, A = ||S_open||^2 recomputed from the stored state at the chunk start and carried through the
// chunk in double by dla_joined_sq_norm, p_r as the carried term e^{G_r} k_r^T S v_r plus the in-chunk
// pairs e^{G_r - G_j} KK_rj VV_rj summed in j order in double, the decays from the same cumulative sums
// and exps (factored below 600 nats), scores rounded to the state type before the tau test and summed into
// info in the state type, merges over the same entry list. What cannot agree bit for bit: the inner sums
// of those quantities (the Gram entries K K^T and V V^T, k^T S v, ||S||^2, the states themselves, exp) are
// ordered differently, and the GPU forms the Gram entries, k^T S v and ||S||^2 in double where the CPU
// forms them in the state type (float32 for every input but float64). A score within a few float32
// rounding errors of tau, or a merge between two pairs whose ratios agree to that precision, can
// therefore go the other way on the two backends (the same already holds between the CPU's instruction
// sets); from that token on the caches differ. Outputs and states otherwise agree up to rounding.

#include <cstdlib>
#include <cstring>

#include "cpp/src/backend.h"
#include "cuda/dla_common.cuh"
#include "tuning.h"

namespace attnkit {
namespace detail {
namespace cuda {

namespace dla {

unsigned grid_for(int64_t items, std::size_t per_block, int device) {
  int sms = 0;
  ATTNKIT_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device));
  int64_t g = static_cast<int64_t>(sms > 0 ? sms : 1) * 4;
  if (per_block > 0) {
    const int64_t fit = static_cast<int64_t>(kScratchBudget / per_block);
    if (g > fit) g = fit;
  }
  if (g > items) g = items;
  if (g < 1) g = 1;
  if (g > 0x7fffffff) g = 0x7fffffff;
  return static_cast<unsigned>(g);
}

}  // namespace dla

void dynamic_linear_attention(const DLAProblem& p) {
  require_device(p.device_index);
  DeviceGuard guard(p.device_index);
  const cudaStream_t stream = as_stream(p.stream);
  if (p.B * p.H == 0) return;  // nothing to write
  const bool decode = dla::takes_decode_path(p);
  // DLA prefill v4 (dla_prefill_v4.cuh in dla_prefill_v2.cu; gate "dla_prefill_v4", verified on an H200 in
  // session 27): the only fast prefill (v2 and v3 were removed in session 27). ATTNKIT_DLA_V4=0 (read once)
  // turns it off, tuning dla_split = -1 takes the first kernel beside it (dla_prefill.cu, which also runs where
  // v4 declines: a chunk layout past the device's shared memory, or one item's score tables past the scratch
  // budget).
  static const bool v4_enabled = has_kernel("dla_prefill_v4") && [] {
    const char* e = std::getenv("ATTNKIT_DLA_V4");
    return !(e && std::strcmp(e, "0") == 0);
  }();
  // The decode step: v3 (dla_decode_v3.cu: one kernel, the decisions per column tile, L2 hints for the
  // states; gate "dla_decode_v3", verified on an H200 in session 27) where enabled, else v2
  // (dla_decode_v2.cu: decisions, then the states over many blocks; capacities past v3's shared buffers).
  // ATTNKIT_DLA_DECODE_V3=0 (read once) turns v3 off; tuning dla_decode = 2 takes v2 (side by side). The
  // first decode kernel (dla_decode.cu) is gone since session 27: slower than both (H200 device time per
  // step, B = 4, H = 16, D = 64, C = 16: v1 132 us, v2 93, v3 74), and v2 takes every case v3 does not.
  static const bool dec3_enabled = has_kernel("dla_decode_v3") && [] {
    const char* e = std::getenv("ATTNKIT_DLA_DECODE_V3");
    return !(e && std::strcmp(e, "0") == 0);
  }();
  const bool dec3 = dec3_enabled && tuning().dla_decode.load() == 0;
  const int64_t split = tuning().dla_split.load();
  const bool v4 = v4_enabled && (split >= 0 || split == -2);  // -2: v4 without v5 (dla_prefill_v5.cuh)
  dispatch_float(p.dtype, [&](auto tag) {
    using St = decltype(tag);
    if (decode && dec3 && dla::launch_decode_v3<St>(p, stream))
      return;
    if (decode)
      dla::launch_decode_v2<St>(p, stream);
    else if (!(v4 && dla::launch_prefill_v4<St>(p, stream)))
      dla::launch_prefill<St>(p, stream);
  });
}

}  // namespace cuda
}  // namespace detail
}  // namespace attnkit
