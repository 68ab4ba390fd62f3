// LSH hashing, x86-64-v4 (AVX-512).
#define ATTNKIT_ISA_NAMESPACE isa_avx512
#include "cpu/lsh_kernel.h"

namespace attnkit {
namespace detail {
namespace cpu {

void lsh_hash_avx512(const LshHashJob& job) { lsh_hash<16, 6, 4>(job); }

}  // namespace cpu
}  // namespace detail
}  // namespace attnkit
