#include "tuning.h"

#include "attnkit/types.h"

namespace attnkit {
namespace detail {
namespace {

std::atomic<int64_t>* find(Tuning& t, const std::string& name) {
  if (name == "linear_chunk") return &t.linear_chunk;
  if (name == "dla_chunk") return &t.dla_chunk;
  if (name == "cuda_decode") return &t.cuda_decode;
  if (name == "cuda_decode_keys") return &t.cuda_decode_keys;
  if (name == "cuda_decode_blocks") return &t.cuda_decode_blocks;
  if (name == "cuda_decode_stages") return &t.cuda_decode_stages;
  if (name == "cuda_decode3_blocks") return &t.cuda_decode3_blocks;
  if (name == "cuda_decode3_pdl") return &t.cuda_decode3_pdl;
  if (name == "cuda_scratch") return &t.cuda_scratch;
  if (name == "dla_split") return &t.dla_split;
  if (name == "dla_decode") return &t.dla_decode;
  throw Error(ErrorKind::Value, "unknown tuning option '" + name +
                                    "' (known: linear_chunk, dla_chunk, dla_split, cuda_decode, cuda_decode_keys, "
                                    "cuda_decode_blocks, cuda_decode_stages, cuda_decode3_blocks, cuda_decode3_pdl, "
                                    "cuda_scratch, dla_decode)");
}

}  // namespace

Tuning& tuning() {
  static Tuning t;
  return t;
}

void set_tuning(const std::string& name, int64_t value) {
  std::atomic<int64_t>* opt = find(tuning(), name);
  const Tuning& t = tuning();
  if (opt == &t.dla_split) {
    if (value < -2 || value > kMaxDlaSplit)
      throw Error(ErrorKind::Value, name + " must be in [1, " + std::to_string(kMaxDlaSplit) +
                                        "], 0 (automatic), -1 (the first kernel) or -2 (v4 without v5), got " +
                                        std::to_string(value));
    opt->store(value);
    return;
  }
  if (opt == &t.cuda_decode || opt == &t.cuda_decode_keys || opt == &t.cuda_decode_blocks ||
      opt == &t.cuda_decode_stages || opt == &t.cuda_decode3_blocks || opt == &t.cuda_decode3_pdl ||
      opt == &t.cuda_scratch || opt == &t.dla_decode) {
    const bool ok = opt == &t.cuda_decode || opt == &t.cuda_decode3_pdl ? value >= 0 && value <= 2
                    : opt == &t.cuda_scratch ? value == 0 || value == 1
                    : opt == &t.dla_decode ? value == 0 || value == 2
                    : opt == &t.cuda_decode_keys ? value == 0 || value == 1 || value == 2 || value == 4
                    : opt == &t.cuda_decode_stages ? value == 0 || (value >= 2 && value <= 4)
                                                   : value == 0 || (value >= 64 && value <= 65536);
    if (!ok)
      throw Error(ErrorKind::Value, name + ": " + std::to_string(value) +
                                        " is out of range (cuda_decode 0|1|2, cuda_decode_keys 0|1|2|4, "
                                        "cuda_decode_blocks / cuda_decode3_blocks 0 or 64..65536, "
                                        "cuda_decode_stages 0|2|3|4, cuda_decode3_pdl 0|1|2, cuda_scratch 0|1, dla_decode 0|2)");
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
