// XLA FFI handlers of attnkit's functions for attnkit.jax: the typed FFI (custom-call API version 4),
// compiled against the XLA FFI headers that jaxlib ships (a stable, versioned C ABI: nothing here links
// jaxlib; XLA passes its API table in every call frame). Compiled into attnkit._core when CMake finds the
// headers (ATTNKIT_JAX), where bind_jax_ffi() hands the handlers out as PyCapsules for
// jax.ffi.register_ffi_target.
//
// Calling convention (attnkit/jax/_ffi.py builds it): every handler takes its buffers as remaining
// arguments and results, named by the string attributes "args" and "rets" (comma-separated, in order), so
// optional inputs are simply left out; scalars are attributes. The attribute "rank" is the rank of the
// first argument as the caller wrote it. vmap (vmap_method="expand_dims") prepends the same number L of
// leading dims to every buffer, each either the batch size or 1; the handler loops over those leading
// indices and calls the C++ entry point once per slice (a dim of 1 is read with stride 0), so batching
// never has to fold into the kernels' own batch dim (which parameters such as Linformer's E, Performer's
// features or a block layout do not have).
#include <pybind11/pybind11.h>

#include <cmath>
#include <cstring>
#include <string>
#include <string_view>
#include <vector>

#include "attnkit/attnkit.h"
#include "xla/ffi/api/ffi.h"

namespace py = pybind11;
namespace ffi = xla::ffi;
using namespace attnkit;

namespace {

struct Buf {
  std::string_view name;
  char* data = nullptr;
  DType dtype = DType::Float32;
  std::size_t item = 4;
  ffi::Span<const int64_t> dims;
};

DType to_dtype(ffi::DataType t, std::string_view name) {
  switch (t) {
    case ffi::DataType::F32: return DType::Float32;
    case ffi::DataType::F64: return DType::Float64;
    case ffi::DataType::F16: return DType::Float16;
    case ffi::DataType::BF16: return DType::BFloat16;
    case ffi::DataType::PRED: return DType::Bool;
    case ffi::DataType::S32: return DType::Int32;
    case ffi::DataType::S64: return DType::Int64;
    default: throw Error(ErrorKind::Type, std::string(name) + " has a dtype attnkit does not support");
  }
}

std::vector<std::string_view> split_names(std::string_view s) {
  std::vector<std::string_view> r;
  while (!s.empty()) {
    const std::size_t c = s.find(',');
    r.push_back(s.substr(0, c));
    s = c == std::string_view::npos ? std::string_view() : s.substr(c + 1);
  }
  return r;
}

template <class T>
T unwrap(ffi::ErrorOr<T> v, std::string_view what) {
  if (!v.has_value()) throw Error(ErrorKind::Value, "attnkit FFI call: bad " + std::string(what) + ": " + v.error().message());
  return std::move(v.value());
}

/// One FFI call: its named buffers, its attributes, and the slices of its leading (vmapped) dims.
class Frame {
 public:
  Frame(const ffi::RemainingArgs& args, const ffi::RemainingRets& rets, const ffi::Dictionary& attrs, Device device,
        int32_t device_index, void* stream)
      : attrs_(attrs), device_(device), device_index_(device_index), stream_(stream) {
    const auto arg_names = split_names(attr<std::string_view>("args"));
    const auto ret_names = split_names(attr<std::string_view>("rets"));
    if (arg_names.size() != args.size() || ret_names.size() != rets.size())
      throw Error(ErrorKind::Value, "attnkit FFI call: the names in args/rets do not match the buffers");
    for (std::size_t i = 0; i < args.size(); ++i) {
      ffi::AnyBuffer b = unwrap(args.get<ffi::AnyBuffer>(i), "argument");
      args_.push_back(make_buf(arg_names[i], b));
    }
    for (std::size_t i = 0; i < rets.size(); ++i) {
      ffi::AnyBuffer b = *unwrap(rets.get<ffi::AnyBuffer>(i), "result");
      rets_.push_back(make_buf(ret_names[i], b));
    }
    const int64_t rank = attr<int64_t>("rank");
    lead_ = static_cast<int>(args_.at(0).dims.size()) - static_cast<int>(rank);
    if (lead_ < 0) throw Error(ErrorKind::Value, "attnkit FFI call: rank attribute above the first argument's rank");
    extent_.assign(lead_, 1);
    for (const auto* list : {&args_, &rets_})
      for (const Buf& b : *list) {
        if (static_cast<int>(b.dims.size()) < lead_)
          throw Error(ErrorKind::Value, "attnkit FFI call: " + std::string(b.name) + " lacks the batch dims");
        for (int d = 0; d < lead_; ++d) extent_[d] = std::max(extent_[d], b.dims[d]);
      }
    count_ = 1;
    for (int64_t e : extent_) count_ *= e;
  }

  /// Number of slices (the product of the leading dims; 1 outside vmap).
  int64_t count() const { return count_; }
  Device device() const { return device_; }
  void* stream() const { return stream_; }

  /// Slice `n` of the argument / result `name`; an absent TensorRef when the call did not pass it.
  TensorRef arg(std::string_view name, int64_t n) const { return find(args_, name, n); }
  TensorRef ret(std::string_view name, int64_t n) const { return find(rets_, name, n); }

  template <class T>
  T attr(std::string_view name) const {
    return unwrap(attrs_.get<T>(name), "attribute " + std::string(name));
  }
  /// A scale attribute: NaN means "the default" (absent).
  std::optional<double> optional_scale(std::string_view name = "scale") const {
    const double s = attr<double>(name);
    return std::isnan(s) ? std::nullopt : std::optional<double>(s);
  }

 private:
  Buf make_buf(std::string_view name, const ffi::AnyBuffer& b) const {
    Buf r;
    r.name = name;
    r.data = static_cast<char*>(b.untyped_data());
    r.dtype = to_dtype(b.element_type(), name);
    r.item = dtype_size(r.dtype);
    r.dims = b.dimensions();
    return r;
  }

  TensorRef find(const std::vector<Buf>& list, std::string_view name, int64_t n) const {
    for (const Buf& b : list)
      if (b.name == name) return slice(b, n);
    return TensorRef();
  }

  TensorRef slice(const Buf& b, int64_t n) const {
    const int core = static_cast<int>(b.dims.size()) - lead_;
    if (core > kMaxDims) throw Error(ErrorKind::Value, std::string(b.name) + " has rank above " + std::to_string(kMaxDims));
    TensorRef t;
    t.dtype = b.dtype;
    t.ndim = core;
    t.device = device_;
    t.device_index = device_index_;
    int64_t stride = 1;
    for (int d = core - 1; d >= 0; --d) {
      t.shape[d] = b.dims[lead_ + d];
      t.strides[d] = stride;
      stride *= t.shape[d];
    }
    // Leading index of slice n (row-major over extent_), read with stride 0 along dims of size 1.
    int64_t offset = 0;
    for (int d = lead_ - 1; d >= 0; --d) {
      const int64_t i = n % extent_[d];
      n /= extent_[d];
      if (b.dims[d] != 1) offset += i * stride;
      stride *= b.dims[d];
    }
    t.data = b.data ? b.data + offset * static_cast<int64_t>(b.item) : nullptr;
    return t;
  }

  const ffi::Dictionary& attrs_;
  Device device_;
  int32_t device_index_;
  void* stream_;
  std::vector<Buf> args_, rets_;
  int lead_ = 0;
  std::vector<int64_t> extent_;
  int64_t count_ = 1;
};

// ------------------------------------------------------------------------------------- the handlers
// A target is (params type P, fill, entry point): run<P, fill, entry> fills the params of each slice from the
// frame and calls the C++ entry point once per slice (kTargets below lists them). The entry point validates
// everything (the Python layer has already run the same validator at trace time, so only run-time values
// such as key_lengths can fail here).

void attention_masking(const Frame& f, int64_t n, AttentionParams& p) {
  p.q = f.arg("q", n);
  p.k = f.arg("k", n);
  p.v = f.arg("v", n);
  p.mask = f.arg("mask", n);
  p.bias = f.arg("bias", n);
  p.key_lengths = f.arg("key_lengths", n);
  p.alibi_slopes = f.arg("alibi_slopes", n);
  p.scale = f.optional_scale();
  p.softcap = f.attr<double>("softcap");
  p.causal = f.attr<bool>("causal");
  p.window_left = f.attr<int64_t>("window_left");
  p.window_right = f.attr<int64_t>("window_right");
  p.stream = f.stream();
}

void fill_attention(const Frame& f, int64_t n, AttentionParams& p) {
  attention_masking(f, n, p);
  p.out = f.ret("out", n);
  p.lse = f.ret("lse", n);
}

AttentionGrads grads(const Frame& f, int64_t n) {
  AttentionGrads g;
  g.dout = f.arg("dout", n);
  g.dq = f.ret("dq", n);
  g.dk = f.ret("dk", n);
  g.dv = f.ret("dv", n);
  g.dbias = f.ret("dbias", n);
  return g;
}

void fill_attention_backward(const Frame& f, int64_t n, AttentionBackwardParams& p) {
  attention_masking(f, n, p.fwd);
  p.fwd.out = f.arg("out", n);
  p.fwd.lse = f.arg("lse", n);
  p.grad = grads(f, n);
}

/// The layout of a block-sparse call: the CSR as attributes (host memory, which the validator reads) and,
/// for CUDA, as the buffers "row_ptr" / "col_idx" (device memory, which the kernels read).
void block_sparse_common(const Frame& f, int64_t n, BlockSparseParams& p) {
  p.q = f.arg("q", n);
  p.k = f.arg("k", n);
  p.v = f.arg("v", n);
  p.key_lengths = f.arg("key_lengths", n);
  p.scale = f.optional_scale();
  p.causal = f.attr<bool>("causal");
  p.stream = f.stream();
  const auto rp = f.attr<ffi::Span<const int64_t>>("layout_row_ptr");
  const auto ci = f.attr<ffi::Span<const int32_t>>("layout_col_idx");
  BlockLayoutRef& L = p.layout;
  L.row_ptr = make_tensor(const_cast<int64_t*>(rp.begin()), DType::Int64, {static_cast<int64_t>(rp.size())});
  L.col_idx = make_tensor(const_cast<int32_t*>(ci.begin()), DType::Int32, {static_cast<int64_t>(ci.size())});
  L.block_q = f.attr<int64_t>("block_q");
  L.block_k = f.attr<int64_t>("block_k");
  L.num_heads = f.attr<int64_t>("num_heads");
  L.num_q_blocks = f.attr<int64_t>("num_q_blocks");
  L.num_k_blocks = f.attr<int64_t>("num_k_blocks");
  if (f.device() == Device::CUDA) {
    const TensorRef drp = f.arg("row_ptr", n), dci = f.arg("col_idx", n);
    L.device_row_ptr = static_cast<const int64_t*>(drp.data);
    L.device_col_idx = static_cast<const int32_t*>(dci.data);
    L.device_index = drp.device_index;
  }
}

void fill_block_sparse(const Frame& f, int64_t n, BlockSparseParams& p) {
  block_sparse_common(f, n, p);
  p.out = f.ret("out", n);
  p.lse = f.ret("lse", n);
}

void fill_block_sparse_backward(const Frame& f, int64_t n, BlockSparseBackwardParams& p) {
  block_sparse_common(f, n, p.fwd);
  p.fwd.out = f.arg("out", n);
  p.fwd.lse = f.arg("lse", n);
  p.grad = grads(f, n);
}

void linear_inputs(const Frame& f, int64_t n, LinearAttentionParams& p) {
  p.q = f.arg("q", n);
  p.k = f.arg("k", n);
  p.v = f.arg("v", n);
  p.key_lengths = f.arg("key_lengths", n);
  p.initial_state = f.arg("initial_state", n);
  p.initial_normalizer = f.arg("initial_normalizer", n);
  p.feature_map = static_cast<FeatureMap>(f.attr<int64_t>("feature_map"));
  p.causal = f.attr<bool>("causal");
  p.normalize = f.attr<bool>("normalize");
  p.eps = f.attr<double>("eps");
  p.stream = f.stream();
}

void fill_linear(const Frame& f, int64_t n, LinearAttentionParams& p) {
  linear_inputs(f, n, p);
  p.out = f.ret("out", n);
  p.final_state = f.ret("final_state", n);
  p.final_normalizer = f.ret("final_normalizer", n);
}

void fill_linear_backward(const Frame& f, int64_t n, LinearAttentionBackwardParams& p) {
  linear_inputs(f, n, p.fwd);
  p.dout = f.arg("dout", n);
  p.dfinal_state = f.arg("dfinal_state", n);
  p.dfinal_normalizer = f.arg("dfinal_normalizer", n);
  p.dq = f.ret("dq", n);
  p.dk = f.ret("dk", n);
  p.dv = f.ret("dv", n);
  p.dinitial_state = f.ret("dinitial_state", n);
  p.dinitial_normalizer = f.ret("dinitial_normalizer", n);
}

void performer_inputs(const Frame& f, int64_t n, PerformerParams& p) {
  p.q = f.arg("q", n);
  p.k = f.arg("k", n);
  p.v = f.arg("v", n);
  p.features = f.arg("features", n);
  p.key_lengths = f.arg("key_lengths", n);
  p.kernel = static_cast<PerformerKernel>(f.attr<int64_t>("kernel"));
  p.causal = f.attr<bool>("causal");
  p.scale = f.optional_scale();
  p.eps = f.attr<double>("eps");
  p.stream = f.stream();
}

void fill_performer(const Frame& f, int64_t n, PerformerParams& p) {
  performer_inputs(f, n, p);
  p.out = f.ret("out", n);
}

void fill_performer_backward(const Frame& f, int64_t n, PerformerBackwardParams& p) {
  performer_inputs(f, n, p.fwd);
  p.dout = f.arg("dout", n);
  p.dq = f.ret("dq", n);
  p.dk = f.ret("dk", n);
  p.dv = f.ret("dv", n);
}

void fill_linformer(const Frame& f, int64_t n, LinformerParams& p) {
  p.q = f.arg("q", n);
  p.k = f.arg("k", n);
  p.v = f.arg("v", n);
  p.E = f.arg("E", n);
  p.F = f.arg("F", n);
  p.key_lengths = f.arg("key_lengths", n);
  p.scale = f.optional_scale();
  p.stream = f.stream();
  p.out = f.ret("out", n);
  p.lse = f.ret("lse", n);
}

/// One target's work: entry(p) once per slice n, p filled by fill(f, n, p).
template <class P, void (*fill)(const Frame&, int64_t, P&), void (*entry)(const P&)>
void run(const Frame& f) {
  for (int64_t n = 0; n < f.count(); ++n) {
    P p;
    fill(f, n, p);
    entry(p);
  }
}

// ------------------------------------------------------------------------------------- FFI plumbing

using Run = void (*)(const Frame&);

/// Runs one call, turning attnkit errors into FFI errors (XLA raises them in Python with the message).
template <Run run_frame>
ffi::Error call(const ffi::RemainingArgs& args, const ffi::RemainingRets& rets, const ffi::Dictionary& attrs,
                Device device, int32_t device_index, void* stream) {
  try {
    run_frame(Frame(args, rets, attrs, device, device_index, stream));
    return ffi::Error::Success();
  } catch (const Error& e) {
    const bool user = e.kind() == ErrorKind::Value || e.kind() == ErrorKind::Type;
    return ffi::Error(user ? ffi::ErrorCode::kInvalidArgument : ffi::ErrorCode::kInternal, e.what());
  } catch (const std::exception& e) {
    return ffi::Error(ffi::ErrorCode::kInternal, e.what());
  }
}

template <Run run_frame>
XLA_FFI_Error* cpu_handler(XLA_FFI_CallFrame* frame) {
  static auto* handler = ffi::Ffi::Bind()
                             .RemainingArgs()
                             .RemainingRets()
                             .Attrs()
                             .To([](ffi::RemainingArgs a, ffi::RemainingRets r, ffi::Dictionary d) {
                               return call<run_frame>(a, r, d, Device::CPU, 0, nullptr);
                             })
                             .release();
  return handler->Call(frame);
}

/// The CUDA handler: the same entry points on XLA's stream for this call and its device ordinal.
template <Run run_frame>
XLA_FFI_Error* cuda_handler(XLA_FFI_CallFrame* frame) {
  static auto* handler =
      ffi::Ffi::Bind()
          .Ctx<ffi::PlatformStream<void*>>()
          .Ctx<ffi::DeviceOrdinal>()
          .RemainingArgs()
          .RemainingRets()
          .Attrs()
          .To([](void* stream, int32_t device, ffi::RemainingArgs a, ffi::RemainingRets r, ffi::Dictionary d) {
            return call<run_frame>(a, r, d, Device::CUDA, device, stream);
          })
          .release();
  return handler->Call(frame);
}

struct Target {
  const char* name;
  XLA_FFI_Handler* cpu;
  XLA_FFI_Handler* cuda;
};

/// The target `name`: its CPU and CUDA handlers, both running run<P, fill, entry>.
template <class P, void (*fill)(const Frame&, int64_t, P&), void (*entry)(const P&)>
constexpr Target target(const char* name) {
  return {name, &cpu_handler<run<P, fill, entry>>, &cuda_handler<run<P, fill, entry>>};
}

// The registered names (attnkit/jax/_ffi.py calls them) and what each runs.
const Target kTargets[] = {
    target<AttentionParams, fill_attention, attention>("attnkit_attention"),
    target<AttentionBackwardParams, fill_attention_backward, attention_backward>("attnkit_attention_backward"),
    target<BlockSparseParams, fill_block_sparse, block_sparse_attention>("attnkit_block_sparse_attention"),
    target<BlockSparseBackwardParams, fill_block_sparse_backward, block_sparse_attention_backward>(
        "attnkit_block_sparse_attention_backward"),
    target<LinearAttentionParams, fill_linear, linear_attention>("attnkit_linear_attention"),
    target<LinearAttentionBackwardParams, fill_linear_backward, linear_attention_backward>(
        "attnkit_linear_attention_backward"),
    target<PerformerParams, fill_performer, performer_attention>("attnkit_performer_attention"),
    target<PerformerBackwardParams, fill_performer_backward, performer_attention_backward>(
        "attnkit_performer_attention_backward"),
    target<LinformerParams, fill_linformer, linformer_attention>("attnkit_linformer_attention"),
};

}  // namespace

void bind_jax_ffi(py::module_& m) {
  // {target name: {"cpu": capsule, "CUDA": capsule}}: the CUDA handlers only in builds with the CUDA backend.
  m.def("jax_ffi_targets", []() {
    py::dict r;
    for (const Target& t : kTargets) {
      py::dict per_platform;
      per_platform["cpu"] = py::capsule(reinterpret_cast<void*>(t.cpu));
      if (built_with_cuda()) per_platform["CUDA"] = py::capsule(reinterpret_cast<void*>(t.cuda));
      r[t.name] = per_platform;
    }
    return r;
  });
  // The XLA FFI API version of the headers compiled against, and the jaxlib that shipped them.
  m.attr("jax_ffi_api_version") = py::make_tuple(XLA_FFI_API_MAJOR, XLA_FFI_API_MINOR);
  m.attr("jax_ffi_jaxlib_version") = ATTNKIT_JAXLIB_VERSION;
}
