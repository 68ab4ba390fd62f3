#pragma once
// Host emulation shim of cuda/linear_pool.cuh: the pooled workspace is the shim's Workspace.
#include <cstddef>
#include "cuda/workspace.cuh"
namespace attnkit { namespace detail { namespace cuda {
class LinearWorkspace : public Workspace {
 public:
  LinearWorkspace(std::size_t bytes, cudaStream_t stream, bool) : Workspace(bytes, stream) {}
};
}}}
