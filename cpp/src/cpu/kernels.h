#pragma once
// Entry points of the per-ISA CPU kernel translation units. Each returns false when it could not
// allocate its scratch memory; the (ISA-neutral) caller turns that into an attnkit::Error.

#include "validate/attention.h"
#include "validate/dla.h"

namespace attnkit {
namespace detail {
namespace cpu {

bool exact_attention_generic(const AttnProblem& p, bool weights);
bool exact_attention_avx2(const AttnProblem& p, bool weights);
bool exact_attention_avx512(const AttnProblem& p, bool weights);

bool dla_generic(const DLAProblem& p);
bool dla_avx2(const DLAProblem& p);
bool dla_avx512(const DLAProblem& p);

}  // namespace cpu
}  // namespace detail
}  // namespace attnkit
