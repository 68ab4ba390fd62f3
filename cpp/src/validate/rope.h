#pragma once
// The validator of rope(): every backend receives the problem built here.

#include "attnkit/positional.h"
#include "validate/common.h"

namespace attnkit {
namespace detail {

/// A validated rope problem, x and out brought to [B, H, S, D].
struct RopeProblem {
  Device device = Device::CPU;
  int32_t device_index = 0;
  void* stream = nullptr;
  DType dtype = DType::Float32;  ///< of x and out
  int64_t B = 0, H = 0, S = 0, D = 0;
  int64_t rotary_dim = 0;        ///< r, even, 2 <= r <= D
  ViewN<4> x;
  void* out = nullptr;
  int64_t out_stride[4] = {};
  ViewN<2> positions;            ///< [B, S] (batch stride 0 when shared); absent: arange(S)
  double base = 10000.0;
  bool interleaved = false;
};
RopeProblem validate_rope(const RopeParams& p, OutputSpecs* infer = nullptr);

}  // namespace detail
}  // namespace attnkit
