// LSH hashing, x86-64-v3 (AVX2 + FMA).
#define ATTNKIT_ISA_NAMESPACE isa_avx2
#include "cpu/lsh_kernel.h"

namespace attnkit {
namespace detail {
namespace cpu {

void lsh_hash_avx2(const LshHashJob& job) { lsh_hash<8, 4, 2>(job); }

}  // namespace cpu
}  // namespace detail
}  // namespace attnkit
