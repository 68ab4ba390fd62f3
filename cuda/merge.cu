// merge_attention on the GPU: the CPU's one pass over the parts per row (math/softmax.h merge_step), with
// one thread per output element (row, d). Every thread of a row replays the row's merge_step sequence
// itself (the same parts in the same order), so no thread waits for another and nothing is reduced across
// threads: the result does not depend on the launch configuration.
//
// The parts' descriptors (pointers and strides) travel by value in the kernel's parameters, kPartsPerLaunch
// at a time. With more parts, the launches run one after the other on the stream and carry each element's
// state (running max, sum and accumulator) through a workspace, so the parts are still merged in order
// 0, 1, 2, ... exactly as on the CPU.
#include "attnkit/math/softmax.h"
#include "cpp/src/backend.h"
#include "cuda/common.cuh"
#include "cuda/workspace.cuh"

namespace attnkit {
namespace detail {
namespace cuda {
namespace {

/// Parts per launch: 16 descriptors of 144 bytes keep the parameter block well under the 4 KiB limit.
constexpr int kPartsPerLaunch = 16;
constexpr int kThreads = 256;

struct PartDesc {
  const void* out = nullptr;
  const void* lse = nullptr;
  int64_t out_stride[kMaxDims] = {};  ///< nd + 1 used
  int64_t lse_stride[kMaxDims] = {};  ///< nd used
};

struct MergeArgs {
  int nd = 0;
  int parts = 0;               ///< parts in this launch
  bool first = true, last = true;
  int64_t rows = 0, Dv = 0, Dw = 1;  ///< Dw = max(Dv, 1): the lse of a row is written even when Dv = 0
  int64_t shape[kMaxDims] = {};
  void* out = nullptr;
  int64_t out_stride[kMaxDims] = {};
  void* lse = nullptr;         ///< may be null
  int64_t lse_stride[kMaxDims] = {};
  void* state = nullptr;       ///< [3][rows * Dw] of A (mx, sum, acc) between launches; null with one launch
  PartDesc part[kPartsPerLaunch];
};


/// T: storage type of the outs and out; A: the lse type (the CPU's accumulator: float, or double for float64
/// lses).
template <class T, class A>
__global__ void merge_kernel(const MergeArgs a) {
  const int64_t n = a.rows * a.Dw;
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x;
  A* st_mx = static_cast<A*>(a.state);
  A* st_sum = st_mx ? st_mx + n : nullptr;
  A* st_acc = st_mx ? st_mx + 2 * n : nullptr;
  for (int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; e < n; e += step) {
    const int64_t r = e / a.Dw, d = e % a.Dw;
    const bool has_d = d < a.Dv;
    A mx = math::neg_inf<A>(), sum = A(0), acc = A(0);
    if (!a.first) {
      mx = st_mx[e];
      sum = st_sum[e];
      acc = st_acc[e];
    }
    for (int k = 0; k < a.parts; ++k) {
      const PartDesc& pd = a.part[k];
      const A lse = static_cast<const A*>(pd.lse)[merge_row_offset(r, a.shape, pd.lse_stride, a.nd)];
      A w_part;
      const A w_old = math::merge_step(mx, sum, lse, &w_part);
      if (w_part == A(0) && w_old == A(1)) continue;  // as the CPU: an empty part's output is never read
      if (has_d) {
        const int64_t oo = merge_row_offset(r, a.shape, pd.out_stride, a.nd) + d * pd.out_stride[a.nd];
        acc = acc * w_old + w_part * to_acc<A>(static_cast<const T*>(pd.out)[oo]);
      }
    }
    if (!a.last) {
      st_mx[e] = mx;
      st_sum[e] = sum;
      st_acc[e] = acc;
      continue;
    }
    if (has_d) {
      const int64_t oo = merge_row_offset(r, a.shape, a.out_stride, a.nd) + d * a.out_stride[a.nd];
      static_cast<T*>(a.out)[oo] = from_acc<T, acc_t<T>>(static_cast<acc_t<T>>(acc * math::merge_scale(mx, sum)));
    }
    if (d == 0 && a.lse)
      static_cast<A*>(a.lse)[merge_row_offset(r, a.shape, a.lse_stride, a.nd)] = math::merge_lse(mx, sum);
  }
}

template <class T, class A>
void run_merge(const MergeProblem& p, cudaStream_t stream) {
  MergeArgs a;
  a.nd = p.nd;
  a.rows = p.rows;
  a.Dv = p.Dv;
  a.Dw = p.Dv > 0 ? p.Dv : 1;
  for (int i = 0; i < kMaxDims; ++i) {
    a.shape[i] = p.shape[i];
    a.out_stride[i] = p.out.strides[i];
    a.lse_stride[i] = p.lse.defined() ? p.lse.strides[i] : 0;
  }
  a.out = p.out.data;
  a.lse = p.lse.defined() ? p.lse.data : nullptr;
  const int64_t n = a.rows * a.Dw;
  const int64_t launches = p.parts > kPartsPerLaunch ? (p.parts + kPartsPerLaunch - 1) / kPartsPerLaunch : 1;
  Workspace ws(launches > 1 ? sizeof(A) * 3 * static_cast<std::size_t>(n) : 0, stream);
  a.state = launches > 1 ? ws.as<A>() : nullptr;
  for (int64_t l = 0; l < launches; ++l) {
    const int64_t k0 = l * kPartsPerLaunch;
    const int64_t kn = p.parts - k0 < kPartsPerLaunch ? p.parts - k0 : kPartsPerLaunch;
    a.parts = static_cast<int>(kn < 0 ? 0 : kn);
    a.first = l == 0;
    a.last = l == launches - 1;
    for (int k = 0; k < a.parts; ++k) {
      const TensorRef& o = p.outs[k0 + k];
      const TensorRef& s = p.lses[k0 + k];
      a.part[k].out = o.data;
      a.part[k].lse = s.data;
      for (int i = 0; i < kMaxDims; ++i) {
        a.part[k].out_stride[i] = o.strides[i];
        a.part[k].lse_stride[i] = s.strides[i];
      }
    }
    merge_kernel<T, A><<<blocks_for(n, kThreads), kThreads, 0, stream>>>(a);
    ATTNKIT_CUDA_CHECK_LAUNCH();
  }
}

}  // namespace

void merge_attention(const MergeProblem& p) {
  require_device(p.device_index);
  if (p.rows == 0) return;
  DeviceGuard g(p.device_index);
  const cudaStream_t stream = as_stream(p.stream);
  dispatch_float(p.dtype, [&](auto tag) {
    using T = decltype(tag);
    if (p.lse_dtype == DType::Float64)
      run_merge<T, double>(p, stream);
    else
      run_merge<T, float>(p, stream);
  });
}

}  // namespace cuda
}  // namespace detail
}  // namespace attnkit
