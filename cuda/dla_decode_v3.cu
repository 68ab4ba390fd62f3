// Dynamic linear attention on the GPU, the third decode step (T = 1; gated by "dla_decode_v3", chosen in
// dla.cu; ATTNKIT_DLA_DECODE_V3=0 turns it off, tuning dla_decode = 2 takes v2 side by side). v2
// (dla_decode_v2.cu) in ONE kernel: a block per (column tile, item), as v2's state pass, first decides
// for its item (decode_decide, the same block sums in the same order: every tile's block gets the same
// decision, and only tile 0 writes the aux outputs and the output entry list), then runs v2's state pass
// for its tile (dla_decode_states.cuh, the same code). Results equal v2's bit for bit.
//
// What it saves over v2 (estimates, not yet measured; B = 4, H = 16, D = 64, C = 16, float32 states):
// - the decisions' memory round trips, the larger part of v2's first kernel by this estimate: v2 reads the
//   open state one element per round trip (16 per thread, ~0.2-0.5 us each from the L2 or DRAM: the (d, e)
//   stepping's branch between one element's use and the next one's loads keeps them from being hoisted; the
//   PTX shows each element's loads followed by its fmas), here in one batch (decode_decide's kBatch: every
//   load, then the same sums in the same order); and the merge scan's reads of counts and info by one thread
//   (when a token opens a state into a full cache) come from shared memory, not global scratch, one L2 round
//   trip per pair in v2 (~7-16 us for v2's first kernel by this estimate, ~3-5 us for the decisions here);
// - the second launch and the DecodeStep round trip through global memory (a kernel boundary: ~2-4 us of
//   device time between two dependent kernels), and on the host one launch and the stream-ordered
//   workspace (an allocation and a free) after the validator's wait, where the device is idle;
// - the decisions no longer run before every state load: before deciding, each block asks the L2 to fetch
//   its tile of the input states (prefetch.global.L2, a hint: no effect on results), so the DRAM reads of
//   the state pass (16 MiB in) overlap the latency-bound decisions (one 16 KiB open state per block, four
//   block sums in double, the merge scan on one thread), and the state pass then reads from the L2. Only
//   when the input states fit comfortably in the L2 (kPrefetchMax); ATTNKIT_DLA_DECODE_PREFETCH=0 turns the
//   hint off. Each tile's block reads the item's open state for the decision (16 KiB per block; 2 MiB in all
//   for 128 blocks, against 32 MiB of state traffic).
// The capacity's counts and info for the merge scan sit in shared memory (v2: global scratch), so C is
// bounded by kMaxSharedC; a larger capacity takes v2 (launch_decode_v3 returns false).

#include <cstdint>
#include <cstdlib>
#include <cstring>

#include "cuda/dla_common.cuh"
#include "cuda/dla_decode_states.cuh"
#include "cpp/src/backend.h"

namespace attnkit {
namespace detail {
namespace cuda {
namespace dla {
namespace {

constexpr int64_t kMaxSharedC = 256;                      // capacities whose counts / info fit shared memory
constexpr std::size_t kPrefetchMax = std::size_t(24) << 20;  // input states prefetched into the L2 at most
// The decisions' loop over the open state in batches of this many elements per thread, every load of a batch
// before the first use (decode_decide's kBatch; v2: one element's loads per memory round trip): 16 elements
// per thread at Dk * Dv = 4096, so one round trip; no effect on results (each thread's sums keep their order).
constexpr int kDecideBatch = 16;

/// A hint that the line holding *ptr be fetched into the L2 (no effect on results; nothing in emulation).
__device__ __forceinline__ void prefetch_l2(const void* ptr) {
#if defined(__CUDA_ARCH__)
  asm volatile("prefetch.global.L2 [%0];\n" ::"l"(ptr));
#else
  (void)ptr;
#endif
}

/// The L2 hints for the input states that tile `tile` of item (b, h) will read: the row segments of the
/// item's m used entries (first and last column's line of each).
template <class R, int kCols>
__device__ __forceinline__ void prefetch_tile(const DLAProblem& p, int64_t b, int64_t h, int64_t tile) {
  const DLACacheViews& ci = p.cache_in;
  const int64_t e0 = tile * kCols;
  if (e0 >= p.Dv) return;
  const int64_t e1 = (e0 + kCols < p.Dv ? e0 + kCols : p.Dv) - 1;
  int64_t m = static_cast<const int64_t*>(ci.size.data)[b * ci.size.stride[0] + h * ci.size.stride[1]];
  m = m < 0 ? 0 : m > p.C ? p.C : m;  // validated on the host; bounded here all the same
  const R* in = static_cast<const R*>(ci.states.data) + b * ci.states.stride[0] + h * ci.states.stride[1];
  const int64_t is2 = ci.states.stride[2], is3 = ci.states.stride[3], is4 = ci.states.stride[4];
  for (int64_t f = threadIdx.x; f < m * p.Dk; f += kThreads) {
    const int64_t i = f / p.Dk, d = f - i * p.Dk;
    const R* row = in + i * is2 + d * is3;
    const R *first = row + e0 * is4, *last = row + e1 * is4;
    prefetch_l2(first);
    if ((reinterpret_cast<std::uintptr_t>(last) >> 7) != (reinterpret_cast<std::uintptr_t>(first) >> 7))
      prefetch_l2(last);  // the segment's last column on another 128-byte line
  }
}

template <class St, int VEC>
__global__ void __launch_bounds__(kThreads, 1) dla_decode_fused_kernel(const DLAProblem p, bool prefetch) {
  using R = acc_t<St>;
  constexpr int kCols = decode_states::kLanes * VEC;
  __shared__ double red[kThreads];
  __shared__ DecodeStep<R> sh_step;
  __shared__ int64_t cnt_buf[kMaxSharedC];
  __shared__ R info_buf[kMaxSharedC];
  __shared__ R ypart[decode_states::kRows][kCols];
  const int64_t items = p.B * p.H, tile = blockIdx.x;
  for (int64_t it = blockIdx.y; it < items; it += gridDim.y) {
    const int64_t b = it / p.H, h = it % p.H;
    if (prefetch) prefetch_tile<R, kCols>(p, b, h, tile);
    const DecodeStep<R> step = decode_decide<St, 1, kDecideBatch>(p, b, h, red, &sh_step, cnt_buf, info_buf,
                                                                       tile == 0);
    if (tile == 0) decode_write_entries(p, b, h, step);
    decode_states::item<St, VEC>(p, it, step, tile, ypart);
  }
}

template <class St, int VEC>
void launch_fused(const DLAProblem& p, bool prefetch, cudaStream_t stream) {
  constexpr int kCols = decode_states::kLanes * VEC;
  const int64_t items = p.B * p.H;
  const dim3 grid(static_cast<unsigned>((p.Dv + kCols - 1) / kCols),
                  static_cast<unsigned>(items < 65535 ? items : 65535));
  dla_decode_fused_kernel<St, VEC><<<grid, kThreads, 0, stream>>>(p, prefetch);
  ATTNKIT_CUDA_CHECK_LAUNCH();
}

}  // namespace

template <class St>
bool launch_decode_v3(const DLAProblem& p, cudaStream_t stream) {
  using R = acc_t<St>;
  const int64_t items = p.B * p.H;
  if (items == 0) return true;
  if (p.C > kMaxSharedC) return false;
  static const bool prefetch_on = [] {
    const char* e = std::getenv("ATTNKIT_DLA_DECODE_PREFETCH");
    return !(e && std::strcmp(e, "0") == 0);
  }();
  const double in_bytes = static_cast<double>(items) * static_cast<double>(p.C) * static_cast<double>(p.Dk) *
                          static_cast<double>(p.Dv) * static_cast<double>(sizeof(R));
  const bool prefetch = prefetch_on && p.cache_in.present && in_bytes <= static_cast<double>(kPrefetchMax);
  constexpr int kVec = static_cast<int>(16 / sizeof(R));  // 4 floats or 2 doubles
  if (decode_states::packs_ok<R>(p))
    launch_fused<St, kVec>(p, prefetch, stream);
  else
    launch_fused<St, 1>(p, prefetch, stream);
  return true;
}

template bool launch_decode_v3<float>(const DLAProblem&, cudaStream_t);
template bool launch_decode_v3<double>(const DLAProblem&, cudaStream_t);
template bool launch_decode_v3<half_t>(const DLAProblem&, cudaStream_t);
template bool launch_decode_v3<bf16_t>(const DLAProblem&, cudaStream_t);

}  // namespace dla

}  // namespace cuda
}  // namespace detail
}  // namespace attnkit
