#include "tuning.h"

#include "attnkit/types.h"

namespace attnkit {
namespace detail {
namespace {

std::atomic<int64_t>* find(Tuning& t, const std::string& name) {
  if (name == "linear_chunk") return &t.linear_chunk;
  if (name == "dla_chunk") return &t.dla_chunk;
  throw Error(ErrorKind::Value, "unknown tuning option '" + name + "' (known: linear_chunk, dla_chunk)");
}

}  // namespace

Tuning& tuning() {
  static Tuning t;
  return t;
}

void set_tuning(const std::string& name, int64_t value) {
  std::atomic<int64_t>* opt = find(tuning(), name);
  const bool linear = opt == &tuning().linear_chunk;
  if (linear ? value < 0 || value > kMaxLinearChunk : value < 0)
    throw Error(ErrorKind::Value, name + " must be " +
                                      (linear ? "in [1, " + std::to_string(kMaxLinearChunk) + "] or 0 (the default)"
                                              : std::string("a chunk length >= 1 or 0 (automatic)")) +
                                      ", got " + std::to_string(value));
  opt->store(value);
}

int64_t get_tuning(const std::string& name) { return find(tuning(), name)->load(); }

}  // namespace detail
}  // namespace attnkit
