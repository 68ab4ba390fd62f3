// Dynamic linear attention on the GPU, the second decode step (T = 1; gated by "dla_decode_v2", chosen in
// dla.cu). The same step as the first decode kernel (dla_decode.cu, removed in session 27) with the same
// decisions (decode_decide in dla_common.cuh: the same block sums in the same order), split in two kernels
// so that the state pass, which is the whole cost (it reads C input states and writes C output states:
// 2 * 16 * 64 * 64 * 4 B = 0.5 MiB per head for C = 16, D = 64, 32 MiB for B = 4, H = 16), is spread over
// many blocks with many loads in flight:
//
// 1. dla_decode_decide_kernel: one block per (batch, head) item (grid-stride), steps 1-4 on the input open
//    state, the aux outputs, the output entry list (counts, info, starts, size), and a DecodeStep record per
//    item in scratch.
// 2. dla_decode_states_kernel: a block per (column tile, item) (grid-stride over the items in y), each
//    running the state pass of dla_decode_states.cuh (shared with dla_decode_v3.cu): 8 lanes of VEC
//    consecutive columns (one 16-byte load each where the states allow it, else VEC = 1) times 32 row
//    groups, U = 8 units' loads in flight per thread, the readout's partial sums in a fixed order.
//
// Versus dla_decode.cu, whose 64 blocks (B = 4, H = 16) each read and write 256 KiB with one 4-byte load in
// flight per thread (latency-bound: ~100 us by the H200 run's timings), this runs 2 * 64 blocks, each thread
// with U = 8 16-byte loads in flight: 32 MiB at 3-4 TB/s is 8-11 us, plus the decisions' kernel (one 16 KiB
// open state per block, block sums) and a launch.

#include <cstdint>

#include "cuda/dla_common.cuh"
#include "cuda/dla_decode_states.cuh"
#include "cuda/workspace.cuh"

namespace attnkit {
namespace detail {
namespace cuda {
namespace dla {
namespace {

template <class St>
__global__ void __launch_bounds__(kThreads)
    dla_decode_decide_kernel(const DLAProblem p, DecodeStep<acc_t<St>>* steps, char* scratch) {
  using R = acc_t<St>;
  __shared__ double red[kThreads];
  __shared__ DecodeStep<R> sh_step;
  const int64_t C = p.C, items = p.B * p.H;
  int64_t* cnt_buf = reinterpret_cast<int64_t*>(scratch) + static_cast<int64_t>(blockIdx.x) * C;
  R* info_buf = reinterpret_cast<R*>(scratch + static_cast<std::size_t>(gridDim.x) * C * sizeof(int64_t)) +
                static_cast<int64_t>(blockIdx.x) * C;
  for (int64_t it = blockIdx.x; it < items; it += gridDim.x) {
    const int64_t b = it / p.H, h = it % p.H;
    const DecodeStep<R> step = decode_decide<St, 4>(p, b, h, red, &sh_step, cnt_buf, info_buf);
    decode_write_entries(p, b, h, step);
    if (threadIdx.x == 0) steps[it] = step;
  }
}

/// The state pass (dla_decode_states.cuh) of every item: a block per (column tile, item), grid-stride over
/// the items in y.
template <class St, int VEC>
__global__ void __launch_bounds__(kThreads)
    dla_decode_states_kernel(const DLAProblem p, const DecodeStep<acc_t<St>>* steps) {
  using R = acc_t<St>;
  __shared__ R ypart[decode_states::kRows][decode_states::kLanes * VEC];
  const int64_t items = p.B * p.H;
  for (int64_t it = blockIdx.y; it < items; it += gridDim.y)
    decode_states::item<St, VEC>(p, it, steps[it], blockIdx.x, ypart);
}

template <class St, int VEC>
void launch_states(const DLAProblem& p, const DecodeStep<acc_t<St>>* steps, cudaStream_t stream) {
  constexpr int kCols = decode_states::kLanes * VEC;
  const int64_t items = p.B * p.H;
  const dim3 grid(static_cast<unsigned>((p.Dv + kCols - 1) / kCols),
                  static_cast<unsigned>(items < 65535 ? items : 65535));
  dla_decode_states_kernel<St, VEC><<<grid, kThreads, 0, stream>>>(p, steps);
  ATTNKIT_CUDA_CHECK_LAUNCH();
}

}  // namespace

template <class St>
void launch_decode_v2(const DLAProblem& p, cudaStream_t stream) {
  using R = acc_t<St>;
  using Step = DecodeStep<R>;
  const int64_t items = p.B * p.H;
  if (items == 0) return;
  const std::size_t per_block = static_cast<std::size_t>(p.C) * (sizeof(int64_t) + sizeof(R));
  const unsigned grid = grid_for(items, per_block, p.device_index);
  const std::size_t step_bytes = static_cast<std::size_t>(items) * sizeof(Step);  // a multiple of 8
  Workspace ws(step_bytes + grid * per_block, stream);
  Step* steps = ws.as<Step>();
  dla_decode_decide_kernel<St><<<grid, kThreads, 0, stream>>>(p, steps, ws.as<char>() + step_bytes);
  ATTNKIT_CUDA_CHECK_LAUNCH();
  constexpr int kVec = static_cast<int>(16 / sizeof(R));  // 4 floats or 2 doubles
  if (decode_states::packs_ok<R>(p))
    launch_states<St, kVec>(p, steps, stream);
  else
    launch_states<St, 1>(p, steps, stream);
}

template void launch_decode_v2<float>(const DLAProblem&, cudaStream_t);
template void launch_decode_v2<double>(const DLAProblem&, cudaStream_t);
template void launch_decode_v2<half_t>(const DLAProblem&, cudaStream_t);
template void launch_decode_v2<bf16_t>(const DLAProblem&, cudaStream_t);

}  // namespace dla
}  // namespace cuda
}  // namespace detail
}  // namespace attnkit
