#pragma once
// The one validator of dynamic_linear_attention. Every backend receives the problem built here and never
// re-checks user input.

#include "attnkit/dla.h"
#include "validate/common.h"

namespace attnkit {
namespace detail {

/// A writable strided output brought to a fixed rank N (lifted leading dims get stride 0).
template <int N>
struct OutN {
  void* data = nullptr;
  int64_t stride[N] = {};
  bool present = false;  ///< false for an optional output that was not requested
};

/// The cache arrays, at full rank: states [B, H, C, Dk, Dv], counts/info/starts [B, H, C], size [B, H].
struct DLACacheViews {
  bool present = false;
  ViewN<5> states;
  ViewN<3> counts, info, starts;
  ViewN<2> size;
};

struct DLACacheOut {
  OutN<5> states;
  OutN<3> counts, info, starts;
  OutN<2> size;
};

/// A validated DLA problem, per-token operands brought to rank 4 ([B, H, T, *]) or 3 ([B, H, T]).
struct DLAProblem {
  Device device = Device::CPU;
  int32_t device_index = 0;
  void* stream = nullptr;
  DType dtype = DType::Float32;        ///< of q, k, v, lam and out
  DType state_dtype = DType::Float32;  ///< of states, info and scores: Float64 for Float64 inputs, else Float32
  int64_t B = 0, H = 0, T = 0, Dk = 0, Dv = 0, C = 0;
  ViewN<4> q, k, v, lam;
  ViewN<3> log_decay;  ///< optional, any floating dtype; values finite and <= 0 (checked on the CPU)
  OutN<4> out;         ///< [B, H, T, Dv], dtype
  double tau = 0.6;
  bool state_drift = false;
  int64_t position = 0;
  int64_t chunk_size = 0;  ///< 0 automatic, -1 recurrent, L >= 1 chunked
  DLACacheViews cache_in;  ///< absent: an empty cache
  DLACacheOut cache_out;
  OutN<3> scores;      ///< optional, state_dtype
  OutN<3> boundaries;  ///< optional, Bool
  OutN<3> merged;      ///< optional, Int64
};

DLAProblem validate_dla(const DLAParams& p, OutputSpecs* infer = nullptr);

}  // namespace detail
}  // namespace attnkit
