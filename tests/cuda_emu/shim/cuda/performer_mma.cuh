#pragma once
// Host emulation shim of cuda/performer_mma.cuh (Performer's products on tensor cores: inline PTX, float16 /
// bfloat16 only). The emulation runs float32 / float64 problems, which that path never takes, so here its
// gate is always closed and the launchers are never called: linear.cu runs its SIMT kernels as before.
#include <cstdint>
namespace attnkit { namespace detail { namespace cuda { namespace {
constexpr int kPmFeatures = 1, kPmStates = 2, kPmOutputs = 4;
template <class T> int performer_mma_wanted(const LinearProblem&) { return 0; }
template <class T> void pm_features(unsigned, cudaStream_t, const LinArgs&, const RowSet&, void*) {}
template <class T> void pm_state_part(unsigned, cudaStream_t, const LinArgs&, const void*, void*, int64_t, int64_t) {}
template <class T> void pm_out(unsigned, cudaStream_t, const LinArgs&, const void*, const void*) {}
template <class T> void pm_inc(unsigned, cudaStream_t, const LinArgs&, const void*, const void*, void*, int64_t) {}
template <class T>
void pm_scores(bool, unsigned, cudaStream_t, const LinArgs&, const void*, const void*, const void*, void*, int64_t) {}
template <class T>
void pm_causal_out(bool, unsigned, cudaStream_t, const LinArgs&, const void*, const void*, const void*, const void*,
                   const void*, int64_t) {}
}}}}
