#include "tuning.h"

#include "attnkit/types.h"

namespace attnkit {
namespace detail {
namespace {

std::atomic<int64_t>* find(Tuning& t, const std::string& name) {
  if (name == "linear_chunk") return &t.linear_chunk;
  if (name == "dla_chunk") return &t.dla_chunk;
  if (name == "dla_split") return &t.dla_split;
  throw Error(ErrorKind::Value, "unknown tuning option '" + name + "' (known: linear_chunk, dla_chunk, dla_split)");
}

}  // namespace

Tuning& tuning() {
  static Tuning t;
  return t;
}

void set_tuning(const std::string& name, int64_t value) {
  std::atomic<int64_t>* opt = find(tuning(), name);
  if (opt == &tuning().dla_split) {
    if (value < -1 || value > kMaxDlaSplit)
      throw Error(ErrorKind::Value, name + " must be in [1, " + std::to_string(kMaxDlaSplit) +
                                        "], 0 (automatic) or -1 (the first kernel), got " + std::to_string(value));
    opt->store(value);
    return;
  }
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
