#pragma once
#include <cstdlib>
#include <cstring>
#include "cuda/common.cuh"
namespace attnkit { namespace detail { namespace cuda {
class Workspace {
 public:
  Workspace(std::size_t bytes, cudaStream_t) { if (bytes) { ptr_ = std::malloc(bytes); std::memset(ptr_, 0xFF, bytes); } }
  ~Workspace() { std::free(ptr_); }
  template <class T> T* as() const { return static_cast<T*>(ptr_); }
 private:
  void* ptr_ = nullptr;
};
}}}
