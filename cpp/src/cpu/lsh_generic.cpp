// LSH hashing, baseline (128-bit vectors).
#define ATTNKIT_ISA_NAMESPACE isa_generic
#include "cpu/lsh_kernel.h"

namespace attnkit {
namespace detail {
namespace cpu {

void lsh_hash_generic(const LshHashJob& job) { lsh_hash<4, 4, 2>(job); }

}  // namespace cpu
}  // namespace detail
}  // namespace attnkit
