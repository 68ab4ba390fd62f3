// What the emulated DLA tests (test_dla_v2.cpp, test_dla_decode.cpp) share after their kernel includes: the
// link stubs the CPU backend's generic DLA kernel needs, a seeded LCG (urand; the seed is the test's rs),
// the failure count and the per-kernel result buffers.
#pragma once
#include <cstdint>
#include <stdexcept>
#include <vector>

using namespace attnkit;
using namespace attnkit::detail;
namespace attnkit { namespace detail {
void assert_failed(const char*, const char*, const char*, int) { throw std::runtime_error("assert"); }
namespace cpu { [[noreturn]] void out_of_memory(const char*, std::size_t) { throw std::runtime_error("oom"); }
void dla_generic(const DLAProblem& p); }
}}
static uint64_t rs = DLA_HARNESS_SEED;
static double urand() { rs = rs * 6364136223846793005ULL + 1442695040888963407ULL; return ((rs >> 11) * (1.0 / 9007199254740992.0)); }
static int fails = 0;

template <class T> struct Buf {
  std::vector<T> out, states, info, scores; std::vector<int64_t> counts, starts, size, merged; std::vector<uint8_t> bnd;
};
