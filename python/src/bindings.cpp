// pybind11 bindings of the C++ API. The Python package (attnkit/_array.py) turns NumPy / CuPy arrays
// into TensorRef views (numpy_ref / device_ref below read a NumPy or CuPy array's header in one call: the
// per-call cost of every function; strided_ref takes a torch tensor's pointer, shape and strides); here we otherwise only mirror the params structs, release the GIL
// around every kernel and map attnkit::Error kinds onto Python exceptions.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "attnkit/attnkit.h"

namespace py = pybind11;
using namespace attnkit;

namespace {

TensorRef make_ref(uintptr_t ptr, int dtype, const std::vector<int64_t>& shape, const std::vector<int64_t>& strides,
                   int device, int device_index) {
  if (shape.size() != strides.size()) throw Error(ErrorKind::Value, "TensorRef: shape and strides differ in length");
  if (shape.size() > static_cast<size_t>(kMaxDims))
    throw Error(ErrorKind::Value, "arrays of rank above " + std::to_string(kMaxDims) + " are not supported");
  if (dtype < 0 || dtype > 6) throw Error(ErrorKind::Type, "TensorRef: unknown dtype code");
  TensorRef t;
  t.data = reinterpret_cast<void*>(ptr);
  t.dtype = static_cast<DType>(dtype);
  t.ndim = static_cast<int32_t>(shape.size());
  for (size_t i = 0; i < shape.size(); ++i) {
    t.shape[i] = shape[i];
    t.strides[i] = strides[i];
  }
  t.device = device ? Device::CUDA : Device::CPU;
  t.device_index = device_index;
  return t;
}

void* as_stream(uintptr_t s) { return reinterpret_cast<void*>(s); }

/// The per-call fast path of attnkit._array: a TensorRef straight from a NumPy array's header (data
/// pointer, shape, byte strides), for the dtype `code` the caller matched. None where the Python path must
/// decide instead: not a NumPy array, a rank the core does not take (make_ref names it), or a byte stride
/// that is not a multiple of the item size (the Python path copies such a view).
py::object numpy_ref(py::handle obj, int code) {
  if (code < 0 || code > 6 || !py::isinstance<py::array>(obj)) return py::none();
  auto* a = py::detail::array_proxy(obj.ptr());
  if (a->nd > kMaxDims) return py::none();
  const auto item = static_cast<int64_t>(dtype_size(static_cast<DType>(code)));
  TensorRef t;
  t.dtype = static_cast<DType>(code);
  t.ndim = a->nd;
  int64_t numel = 1;
  for (int i = 0; i < a->nd; ++i) {
    if (a->strides[i] % item != 0) return py::none();
    t.shape[i] = a->dimensions[i];
    t.strides[i] = a->strides[i] / item;
    numel *= a->dimensions[i];
  }
  t.data = numel ? static_cast<void*>(a->data) : nullptr;  // as before: no address for an empty array
  return py::cast(t);
}

/// The same for a CuPy array, from its attributes (data pointer, shape and byte-stride tuples, device
/// ordinal), giving the TensorRef its __cuda_array_interface__ gives: that interface has no strides for a
/// C-contiguous array (CuPy's rule: dims of size 1 are skipped; an empty array counts as contiguous), which
/// then gets the row-major ones. None where the generic __cuda_array_interface__ path must decide.
py::object device_ref(uintptr_t ptr, int code, py::handle shape, py::handle strides, int device_index) {
  if (code < 0 || code > 6 || !PyTuple_Check(shape.ptr()) || !PyTuple_Check(strides.ptr())) return py::none();
  const Py_ssize_t nd = PyTuple_GET_SIZE(shape.ptr());
  if (nd > kMaxDims || PyTuple_GET_SIZE(strides.ptr()) != nd) return py::none();
  const auto item = static_cast<int64_t>(dtype_size(static_cast<DType>(code)));
  TensorRef t;
  t.dtype = static_cast<DType>(code);
  t.ndim = static_cast<int32_t>(nd);
  bool empty = false, strided = false;
  int64_t expected = item;  // the byte stride of dim i in a C-contiguous array
  for (Py_ssize_t i = nd - 1; i >= 0; --i) {
    const int64_t n = PyLong_AsLongLong(PyTuple_GET_ITEM(shape.ptr(), i));
    const int64_t s = PyLong_AsLongLong(PyTuple_GET_ITEM(strides.ptr(), i));
    if (PyErr_Occurred()) {  // not an int, or past int64: the generic path reports it
      PyErr_Clear();
      return py::none();
    }
    t.shape[i] = n;
    t.strides[i] = s;
    empty = empty || n == 0;
    if (n != 1) {
      strided = strided || s != expected;
      if (__builtin_mul_overflow(expected, n, &expected)) return py::none();
    }
  }
  const bool contiguous = empty || !strided;
  int64_t acc = 1;
  for (Py_ssize_t i = nd - 1; i >= 0; --i) {
    if (contiguous) {
      t.strides[i] = acc;
      acc *= t.shape[i];
    } else if (t.strides[i] % item != 0) {
      return py::none();
    } else {
      t.strides[i] /= item;
    }
  }
  t.data = reinterpret_cast<void*>(ptr);
  t.device = Device::CUDA;
  t.device_index = device_index;
  return py::cast(t);
}

/// A TensorRef from a data pointer, a shape and ELEMENT strides (tuples, or tuple subclasses such as a
/// torch.Tensor's shape and stride(); strides None: row-major), on the CPU (device_index < 0) or on CUDA
/// device device_index: the PyTorch path of attnkit._array. None for a rank the core does not take or
/// values that are not int64 (the caller names the argument).
py::object strided_ref(uintptr_t ptr, int code, py::handle shape, py::handle strides, int device_index) {
  if (code < 0 || code > 6 || !PyTuple_Check(shape.ptr())) return py::none();
  const Py_ssize_t nd = PyTuple_GET_SIZE(shape.ptr());
  const bool row_major = strides.is_none();
  if (nd > kMaxDims || (!row_major && (!PyTuple_Check(strides.ptr()) || PyTuple_GET_SIZE(strides.ptr()) != nd)))
    return py::none();
  TensorRef t;
  t.dtype = static_cast<DType>(code);
  t.ndim = static_cast<int32_t>(nd);
  int64_t acc = 1;
  for (Py_ssize_t i = nd - 1; i >= 0; --i) {
    t.shape[i] = PyLong_AsLongLong(PyTuple_GET_ITEM(shape.ptr(), i));
    t.strides[i] = row_major ? acc : PyLong_AsLongLong(PyTuple_GET_ITEM(strides.ptr(), i));
    if (PyErr_Occurred()) {
      PyErr_Clear();
      return py::none();
    }
    if (row_major) acc *= t.shape[i];  // sizes of an allocated array: no overflow
  }
  t.data = reinterpret_cast<void*>(ptr);
  t.device = device_index < 0 ? Device::CPU : Device::CUDA;
  t.device_index = device_index < 0 ? 0 : device_index;
  return py::cast(t);
}

/// A C++ entry point f(params) as a Python function that releases the GIL around the call.
template <class P>
auto nogil(void (*f)(const P&)) {
  return [f](const P& p) {
    py::gil_scoped_release release;
    f(p);
  };
}

/// The shape of output spec o as a tuple of ints.
py::tuple spec_shape(const OutputSpec& o) {
  py::tuple shape(o.ndim);
  for (int d = 0; d < o.ndim; ++d) shape[d] = py::int_(o.shape[d]);
  return shape;
}

/// An output query f(params) as a Python function: f(params) returns [(name, shape tuple, dtype code), ...]
/// for every output the call can write; f(params, names) (a tuple of output names, as attnkit._array's
/// Call.outputs asks on every call) returns [(shape tuple, dtype code), ...] for those names in their order,
/// KeyError for a name the call has no output of.
template <class P>
auto outputs(OutputSpecs (*f)(const P&)) {
  return [f](const P& p, py::handle names) -> py::list {
    const OutputSpecs specs = f(p);
    if (names.is_none()) {
      py::list r(specs.count);
      for (int i = 0; i < specs.count; ++i) {
        const OutputSpec& o = specs.items[i];
        r[i] = py::make_tuple(o.name, spec_shape(o), static_cast<int>(o.dtype));
      }
      return r;
    }
    const py::tuple want = PyTuple_Check(names.ptr()) ? py::reinterpret_borrow<py::tuple>(names)
                                                      : py::tuple(py::reinterpret_borrow<py::object>(names));
    py::list r(want.size());
    for (size_t j = 0; j < want.size(); ++j) {
      const std::string name = py::cast<std::string>(want[j]);
      int i = 0;
      while (i < specs.count && name != specs.items[i].name) ++i;
      if (i == specs.count) throw py::key_error(name);
      const OutputSpec& o = specs.items[i];
      r[j] = py::make_tuple(spec_shape(o), static_cast<int>(o.dtype));
    }
    return r;
  };
}

/// A read-only NumPy view of a layout's CSR vector, kept alive by the layout object that owns it.
template <class T>
py::array csr_view(const std::vector<T>& v, py::handle owner) {
  py::array a(py::dtype::of<T>(), {static_cast<py::ssize_t>(v.size())}, {static_cast<py::ssize_t>(sizeof(T))},
              v.data(), owner);
  py::detail::array_proxy(a.ptr())->flags &= ~py::detail::npy_api::NPY_ARRAY_WRITEABLE_;
  return a;
}

}  // namespace

#ifdef ATTNKIT_WITH_JAX
void bind_jax_ffi(py::module_& m);  // jax_ffi.cpp: the XLA FFI handlers of attnkit.jax
#endif

PYBIND11_MODULE(_core, m) {
  m.doc() = "attnkit compiled core (internal; use the functions of the attnkit package)";

  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const Error& e) {
      switch (e.kind()) {
        case ErrorKind::Value: PyErr_SetString(PyExc_ValueError, e.what()); break;
        case ErrorKind::Type: PyErr_SetString(PyExc_TypeError, e.what()); break;
        default: PyErr_SetString(PyExc_RuntimeError, e.what()); break;
      }
    }
  });

  // The one table of dtype codes: attnkit._array builds its NumPy mapping from this enum.
  py::enum_<DType>(m, "DType")
      .value("float32", DType::Float32)
      .value("float64", DType::Float64)
      .value("float16", DType::Float16)
      .value("bfloat16", DType::BFloat16)
      .value("bool", DType::Bool)
      .value("int32", DType::Int32)
      .value("int64", DType::Int64);

  // Backend tuning options (tests and benchmarks): cpp/src/tuning.h.
  m.def("set_tuning", &set_tuning, py::arg("name"), py::arg("value"));
  m.def("get_tuning", &get_tuning, py::arg("name"));

  py::class_<TensorRef>(m, "TensorRef")
      .def(py::init(&make_ref), py::arg("ptr"), py::arg("dtype"), py::arg("shape"), py::arg("strides"),
           py::arg("device") = 0, py::arg("device_index") = 0)
      .def(py::init<>())
      .def_property_readonly("ndim", [](const TensorRef& t) { return t.ndim; })
      .def_property_readonly("shape", [](const TensorRef& t) { return std::vector<int64_t>(t.shape, t.shape + std::max(t.ndim, 0)); })
      // read back by tests of the array adapter
      .def_property_readonly("strides", [](const TensorRef& t) { return std::vector<int64_t>(t.strides, t.strides + std::max(t.ndim, 0)); })
      .def_property_readonly("data", [](const TensorRef& t) { return reinterpret_cast<uintptr_t>(t.data); })
      .def_property_readonly("dtype", [](const TensorRef& t) { return static_cast<int>(t.dtype); })
      .def_property_readonly("device", [](const TensorRef& t) { return static_cast<int>(t.device); })
      .def_property_readonly("device_index", [](const TensorRef& t) { return t.device_index; });
  m.def("numpy_ref", &numpy_ref, py::arg("array"), py::arg("dtype"));
  m.def("strided_ref", &strided_ref, py::arg("ptr"), py::arg("dtype"), py::arg("shape"), py::arg("strides"),
        py::arg("device_index"));
  m.def("device_ref", &device_ref, py::arg("ptr"), py::arg("dtype"), py::arg("shape"), py::arg("strides"),
        py::arg("device_index"));

  py::class_<AttentionParams>(m, "AttentionParams")
      .def(py::init<>())
      .def_readwrite("q", &AttentionParams::q)
      .def_readwrite("k", &AttentionParams::k)
      .def_readwrite("v", &AttentionParams::v)
      .def_readwrite("out", &AttentionParams::out)
      .def_readwrite("lse", &AttentionParams::lse)
      .def_readwrite("scale", &AttentionParams::scale)
      .def_readwrite("softcap", &AttentionParams::softcap)
      .def_readwrite("causal", &AttentionParams::causal)
      .def_readwrite("window_left", &AttentionParams::window_left)
      .def_readwrite("window_right", &AttentionParams::window_right)
      .def_readwrite("mask", &AttentionParams::mask)
      .def_readwrite("bias", &AttentionParams::bias)
      .def_readwrite("key_lengths", &AttentionParams::key_lengths)
      .def_readwrite("alibi_slopes", &AttentionParams::alibi_slopes)
      .def_property(
          "stream", [](const AttentionParams& p) { return reinterpret_cast<uintptr_t>(p.stream); },
          [](AttentionParams& p, uintptr_t s) { p.stream = as_stream(s); });

  py::enum_<DLAScore>(m, "DLAScore")
      .value("TokenVsState", DLAScore::TokenVsState)
      .value("StateDrift", DLAScore::StateDrift);

  py::class_<DLACacheTensors>(m, "DLACacheTensors")
      .def(py::init<>())
      .def_readwrite("states", &DLACacheTensors::states)
      .def_readwrite("counts", &DLACacheTensors::counts)
      .def_readwrite("info", &DLACacheTensors::info)
      .def_readwrite("starts", &DLACacheTensors::starts)
      .def_readwrite("size", &DLACacheTensors::size);

  py::class_<DLAParams>(m, "DLAParams")
      .def(py::init<>())
      .def_readwrite("q", &DLAParams::q)
      .def_readwrite("k", &DLAParams::k)
      .def_readwrite("v", &DLAParams::v)
      .def_readwrite("lam", &DLAParams::lam)
      .def_readwrite("log_decay", &DLAParams::log_decay)
      .def_readwrite("out", &DLAParams::out)
      .def_readwrite("capacity", &DLAParams::capacity)
      .def_readwrite("tau", &DLAParams::tau)
      .def_readwrite("score", &DLAParams::score)
      // reference_internal: `p.cache_in.states = ...` writes into p's own member
      .def_property(
          "cache_in", [](DLAParams& p) -> DLACacheTensors& { return p.cache_in; },
          [](DLAParams& p, const DLACacheTensors& c) { p.cache_in = c; }, py::return_value_policy::reference_internal)
      .def_readwrite("position", &DLAParams::position)
      .def_property(
          "cache_out", [](DLAParams& p) -> DLACacheTensors& { return p.cache_out; },
          [](DLAParams& p, const DLACacheTensors& c) { p.cache_out = c; }, py::return_value_policy::reference_internal)
      .def_readwrite("scores", &DLAParams::scores)
      .def_readwrite("boundaries", &DLAParams::boundaries)
      .def_readwrite("merged", &DLAParams::merged)
      .def_property(
          "stream", [](const DLAParams& p) { return reinterpret_cast<uintptr_t>(p.stream); },
          [](DLAParams& p, uintptr_t s) { p.stream = as_stream(s); });

  m.def("dynamic_linear_attention", nogil(&dynamic_linear_attention));
  m.def("dynamic_linear_attention_outputs", outputs(&dynamic_linear_attention_outputs), py::arg("params"), py::arg("names") = py::none());

  py::enum_<FeatureMap>(m, "FeatureMap")
      .value("elu1", FeatureMap::Elu1)
      .value("relu", FeatureMap::Relu)
      .value("identity", FeatureMap::Identity);
  py::enum_<FeatureScaling>(m, "FeatureScaling").value("chi", FeatureScaling::Chi).value("sqrt_d", FeatureScaling::SqrtD);
  py::enum_<PerformerKernel>(m, "PerformerKernel")
      .value("softmax", PerformerKernel::Softmax)
      .value("relu", PerformerKernel::Relu);

  py::class_<LinearAttentionParams>(m, "LinearAttentionParams")
      .def(py::init<>())
      .def_readwrite("q", &LinearAttentionParams::q)
      .def_readwrite("k", &LinearAttentionParams::k)
      .def_readwrite("v", &LinearAttentionParams::v)
      .def_readwrite("out", &LinearAttentionParams::out)
      .def_readwrite("feature_map", &LinearAttentionParams::feature_map)
      .def_readwrite("causal", &LinearAttentionParams::causal)
      .def_readwrite("normalize", &LinearAttentionParams::normalize)
      .def_readwrite("eps", &LinearAttentionParams::eps)
      .def_readwrite("key_lengths", &LinearAttentionParams::key_lengths)
      .def_readwrite("initial_state", &LinearAttentionParams::initial_state)
      .def_readwrite("initial_normalizer", &LinearAttentionParams::initial_normalizer)
      .def_readwrite("final_state", &LinearAttentionParams::final_state)
      .def_readwrite("final_normalizer", &LinearAttentionParams::final_normalizer)
      .def_property(
          "stream", [](const LinearAttentionParams& p) { return reinterpret_cast<uintptr_t>(p.stream); },
          [](LinearAttentionParams& p, uintptr_t s) { p.stream = as_stream(s); });

  py::class_<PerformerParams>(m, "PerformerParams")
      .def(py::init<>())
      .def_readwrite("q", &PerformerParams::q)
      .def_readwrite("k", &PerformerParams::k)
      .def_readwrite("v", &PerformerParams::v)
      .def_readwrite("features", &PerformerParams::features)
      .def_readwrite("out", &PerformerParams::out)
      .def_readwrite("kernel", &PerformerParams::kernel)
      .def_readwrite("causal", &PerformerParams::causal)
      .def_readwrite("scale", &PerformerParams::scale)
      .def_readwrite("eps", &PerformerParams::eps)
      .def_readwrite("key_lengths", &PerformerParams::key_lengths)
      .def_property(
          "stream", [](const PerformerParams& p) { return reinterpret_cast<uintptr_t>(p.stream); },
          [](PerformerParams& p, uintptr_t s) { p.stream = as_stream(s); });

  py::class_<RandomFeaturesParams>(m, "RandomFeaturesParams")
      .def(py::init<>())
      .def_readwrite("num_features", &RandomFeaturesParams::num_features)
      .def_readwrite("head_dim", &RandomFeaturesParams::head_dim)
      .def_readwrite("seed", &RandomFeaturesParams::seed)
      .def_readwrite("orthogonal", &RandomFeaturesParams::orthogonal)
      .def_readwrite("scaling", &RandomFeaturesParams::scaling)
      .def_readwrite("out", &RandomFeaturesParams::out)
      .def_readwrite("dtype", &RandomFeaturesParams::dtype);

  py::class_<LinformerProjectionParams>(m, "LinformerProjectionParams")
      .def(py::init<>())
      .def_readwrite("proj_len", &LinformerProjectionParams::proj_len)
      .def_readwrite("seq_len", &LinformerProjectionParams::seq_len)
      .def_readwrite("num_heads", &LinformerProjectionParams::num_heads)
      .def_readwrite("seed", &LinformerProjectionParams::seed)
      .def_readwrite("out", &LinformerProjectionParams::out)
      .def_readwrite("dtype", &LinformerProjectionParams::dtype);

  py::class_<LinformerParams>(m, "LinformerParams")
      .def(py::init<>())
      .def_readwrite("q", &LinformerParams::q)
      .def_readwrite("k", &LinformerParams::k)
      .def_readwrite("v", &LinformerParams::v)
      .def_readwrite("E", &LinformerParams::E)
      .def_readwrite("F", &LinformerParams::F)
      .def_readwrite("out", &LinformerParams::out)
      .def_readwrite("lse", &LinformerParams::lse)
      .def_readwrite("scale", &LinformerParams::scale)
      .def_readwrite("key_lengths", &LinformerParams::key_lengths)
      .def_readwrite("causal", &LinformerParams::causal)
      .def_property(
          "stream", [](const LinformerParams& p) { return reinterpret_cast<uintptr_t>(p.stream); },
          [](LinformerParams& p, uintptr_t s) { p.stream = as_stream(s); });

  m.def("attention", nogil(&attention));
  m.def("attention_outputs", outputs(&attention_outputs), py::arg("params"), py::arg("names") = py::none());
  m.def("attention_weights", [](const AttentionParams& p, const TensorRef& weights) {
    py::gil_scoped_release release;
    attention_weights(p, weights);
  });
  m.def("attention_weights_outputs", outputs(&attention_weights_outputs), py::arg("params"), py::arg("names") = py::none());
  py::class_<MergeParams>(m, "MergeParams")
      .def(py::init<>())
      .def_readwrite("outs", &MergeParams::outs)
      .def_readwrite("lses", &MergeParams::lses)
      .def_readwrite("out", &MergeParams::out)
      .def_readwrite("lse", &MergeParams::lse)
      .def_property(
          "stream", [](const MergeParams& p) { return reinterpret_cast<uintptr_t>(p.stream); },
          [](MergeParams& p, uintptr_t s) { p.stream = as_stream(s); });
  m.def("merge_attention", nogil(&merge_attention));
  m.def("merge_attention_outputs", outputs(&merge_attention_outputs), py::arg("params"), py::arg("names") = py::none());

  // ---------------------------------------------------------------------------- block-sparse / LSH
  py::class_<BlockLayoutRef>(m, "BlockLayoutRef");
  // The owning C++ layout crosses as an object: attnkit.BlockLayout wraps one, and its CSR arrays are
  // read-only NumPy views of the object's memory.
  py::class_<BlockLayout>(m, "Layout")
      .def(py::init([](py::array_t<int64_t, py::array::c_style> rp, py::array_t<int32_t, py::array::c_style> ci,
                       int64_t bq, int64_t bk, int64_t heads, int64_t nqb, int64_t nkb) {
             BlockLayout L;
             L.row_ptr.assign(rp.data(), rp.data() + rp.size());
             L.col_idx.assign(ci.data(), ci.data() + ci.size());
             L.block_q = bq;
             L.block_k = bk;
             L.num_heads = heads;
             L.num_q_blocks = nqb;
             L.num_k_blocks = nkb;
             validate_layout(L.ref());
             return L;
           }),
           py::arg("row_ptr"), py::arg("col_idx"), py::arg("block_q"), py::arg("block_k"), py::arg("num_heads"),
           py::arg("num_q_blocks"), py::arg("num_k_blocks"))
      .def_property_readonly("row_ptr", [](py::object self) { return csr_view(self.cast<const BlockLayout&>().row_ptr, self); })
      .def_property_readonly("col_idx", [](py::object self) { return csr_view(self.cast<const BlockLayout&>().col_idx, self); })
      .def_readonly("block_q", &BlockLayout::block_q)
      .def_readonly("block_k", &BlockLayout::block_k)
      .def_readonly("num_heads", &BlockLayout::num_heads)
      .def_readonly("num_q_blocks", &BlockLayout::num_q_blocks)
      .def_readonly("num_k_blocks", &BlockLayout::num_k_blocks)
      .def("ref", &BlockLayout::ref)
      .def(
          "ref_on",
          [](const BlockLayout& l, int32_t device_index, uintptr_t stream) {
            return l.ref_on(device_index, as_stream(stream));
          },
          py::arg("device_index"), py::arg("stream"))
      .def_static("from_dense",
                  [](py::array_t<uint8_t, py::array::c_style | py::array::forcecast> blocks, int64_t bq, int64_t bk) {
                    if (blocks.ndim() != 3) throw Error(ErrorKind::Value, "blocks must be 3-D [H, nQb, nKb] here");
                    return BlockLayout::from_dense(blocks.data(), blocks.shape(0), blocks.shape(1), blocks.shape(2), bq,
                                                   bk);
                  })
      .def_static("sliding_window", &BlockLayout::sliding_window)
      .def_static("longformer", &BlockLayout::longformer)
      .def_static("bigbird", &BlockLayout::bigbird)
      .def_static("fixed", &BlockLayout::fixed)
      .def_static("unite", [](const std::vector<const BlockLayout*>& parts) { return BlockLayout::unite(parts); });

  py::class_<BlockSparseParams>(m, "BlockSparseParams")
      .def(py::init<>())
      .def_readwrite("q", &BlockSparseParams::q)
      .def_readwrite("k", &BlockSparseParams::k)
      .def_readwrite("v", &BlockSparseParams::v)
      .def_readwrite("out", &BlockSparseParams::out)
      .def_readwrite("lse", &BlockSparseParams::lse)
      .def_readwrite("layout", &BlockSparseParams::layout)
      .def_readwrite("scale", &BlockSparseParams::scale)
      .def_readwrite("causal", &BlockSparseParams::causal)
      .def_readwrite("key_lengths", &BlockSparseParams::key_lengths)
      .def_property(
          "stream", [](const BlockSparseParams& p) { return reinterpret_cast<uintptr_t>(p.stream); },
          [](BlockSparseParams& p, uintptr_t s) { p.stream = as_stream(s); });
  m.def("block_sparse_attention", nogil(&block_sparse_attention));
  m.def("block_sparse_attention_outputs", outputs(&block_sparse_attention_outputs), py::arg("params"), py::arg("names") = py::none());

  // ------------------------------------------------------------------------------- backward passes
  py::class_<AttentionGrads>(m, "AttentionGrads")
      .def(py::init<>())
      .def_readwrite("dout", &AttentionGrads::dout)
      .def_readwrite("dq", &AttentionGrads::dq)
      .def_readwrite("dk", &AttentionGrads::dk)
      .def_readwrite("dv", &AttentionGrads::dv)
      .def_readwrite("dbias", &AttentionGrads::dbias);
  m.def("attention_backward", [](const AttentionParams& fwd, const AttentionGrads& grad) {
    AttentionBackwardParams p{fwd, grad};
    py::gil_scoped_release nogil;
    attention_backward(p);
  });
  m.def("block_sparse_attention_backward", [](const BlockSparseParams& fwd, const AttentionGrads& grad) {
    BlockSparseBackwardParams p{fwd, grad};
    py::gil_scoped_release nogil;
    block_sparse_attention_backward(p);
  });
  // The combined params, for the output queries (their names: "grad.dq", ...).
  py::class_<AttentionBackwardParams>(m, "AttentionBackwardParams")
      .def(py::init<>())
      .def_readwrite("fwd", &AttentionBackwardParams::fwd)
      .def_readwrite("grad", &AttentionBackwardParams::grad);
  py::class_<BlockSparseBackwardParams>(m, "BlockSparseBackwardParams")
      .def(py::init<>())
      .def_readwrite("fwd", &BlockSparseBackwardParams::fwd)
      .def_readwrite("grad", &BlockSparseBackwardParams::grad);
  m.def("attention_backward_outputs", outputs(&attention_backward_outputs), py::arg("params"), py::arg("names") = py::none());
  m.def("block_sparse_attention_backward_outputs", outputs(&block_sparse_attention_backward_outputs), py::arg("params"), py::arg("names") = py::none());

  py::class_<LinearAttentionBackwardParams>(m, "LinearAttentionBackwardParams")
      .def(py::init<>())
      .def_readwrite("fwd", &LinearAttentionBackwardParams::fwd)
      .def_readwrite("dout", &LinearAttentionBackwardParams::dout)
      .def_readwrite("dfinal_state", &LinearAttentionBackwardParams::dfinal_state)
      .def_readwrite("dfinal_normalizer", &LinearAttentionBackwardParams::dfinal_normalizer)
      .def_readwrite("dq", &LinearAttentionBackwardParams::dq)
      .def_readwrite("dk", &LinearAttentionBackwardParams::dk)
      .def_readwrite("dv", &LinearAttentionBackwardParams::dv)
      .def_readwrite("dinitial_state", &LinearAttentionBackwardParams::dinitial_state)
      .def_readwrite("dinitial_normalizer", &LinearAttentionBackwardParams::dinitial_normalizer);
  m.def("linear_attention_backward", nogil(&linear_attention_backward));
  m.def("linear_attention_backward_outputs", outputs(&linear_attention_backward_outputs), py::arg("params"), py::arg("names") = py::none());
  py::class_<PerformerBackwardParams>(m, "PerformerBackwardParams")
      .def(py::init<>())
      .def_readwrite("fwd", &PerformerBackwardParams::fwd)
      .def_readwrite("dout", &PerformerBackwardParams::dout)
      .def_readwrite("dq", &PerformerBackwardParams::dq)
      .def_readwrite("dk", &PerformerBackwardParams::dk)
      .def_readwrite("dv", &PerformerBackwardParams::dv);
  m.def("performer_attention_backward", nogil(&performer_attention_backward));
  m.def("performer_attention_backward_outputs", outputs(&performer_attention_backward_outputs), py::arg("params"), py::arg("names") = py::none());

  py::class_<LshAttentionParams>(m, "LshAttentionParams")
      .def(py::init<>())
      .def_readwrite("q", &LshAttentionParams::q)
      .def_readwrite("k", &LshAttentionParams::k)
      .def_readwrite("v", &LshAttentionParams::v)
      .def_readwrite("out", &LshAttentionParams::out)
      .def_readwrite("lse", &LshAttentionParams::lse)
      .def_readwrite("num_buckets", &LshAttentionParams::num_buckets)
      .def_readwrite("num_hashes", &LshAttentionParams::num_hashes)
      .def_readwrite("seed", &LshAttentionParams::seed)
      .def_readwrite("causal", &LshAttentionParams::causal)
      .def_readwrite("scale", &LshAttentionParams::scale)
      .def_property(
          "stream", [](const LshAttentionParams& p) { return reinterpret_cast<uintptr_t>(p.stream); },
          [](LshAttentionParams& p, uintptr_t s) { p.stream = as_stream(s); });
  m.def("lsh_attention", nogil(&lsh_attention));
  m.def("lsh_attention_outputs", outputs(&lsh_attention_outputs), py::arg("params"), py::arg("names") = py::none());
  py::class_<LshBucketsParams>(m, "LshBucketsParams")
      .def(py::init<>())
      .def_readwrite("x", &LshBucketsParams::x)
      .def_readwrite("out", &LshBucketsParams::out)
      .def_readwrite("num_buckets", &LshBucketsParams::num_buckets)
      .def_readwrite("num_hashes", &LshBucketsParams::num_hashes)
      .def_readwrite("seed", &LshBucketsParams::seed)
      .def_property(
          "stream", [](const LshBucketsParams& p) { return reinterpret_cast<uintptr_t>(p.stream); },
          [](LshBucketsParams& p, uintptr_t s) { p.stream = as_stream(s); });
  m.def("lsh_buckets", nogil(&lsh_buckets));
  m.def("lsh_buckets_outputs", outputs(&lsh_buckets_outputs), py::arg("params"), py::arg("names") = py::none());

  m.def("linear_attention", nogil(&linear_attention));
  m.def("linear_attention_outputs", outputs(&linear_attention_outputs), py::arg("params"), py::arg("names") = py::none());
  m.def("performer_attention", nogil(&performer_attention));
  m.def("performer_attention_outputs", outputs(&performer_attention_outputs), py::arg("params"), py::arg("names") = py::none());
  m.def("random_features", nogil(&random_features));
  m.def("random_features_outputs", outputs(&random_features_outputs), py::arg("params"), py::arg("names") = py::none());
  m.def("linformer_projection", nogil(&linformer_projection));
  m.def("linformer_projection_outputs", outputs(&linformer_projection_outputs), py::arg("params"), py::arg("names") = py::none());
  m.def("linformer_attention", nogil(&linformer_attention));
  m.def("linformer_attention_outputs", outputs(&linformer_attention_outputs), py::arg("params"), py::arg("names") = py::none());

  py::class_<RopeParams>(m, "RopeParams")
      .def(py::init<>())
      .def_readwrite("x", &RopeParams::x)
      .def_readwrite("out", &RopeParams::out)
      .def_readwrite("positions", &RopeParams::positions)
      .def_readwrite("base", &RopeParams::base)
      .def_readwrite("rotary_dim", &RopeParams::rotary_dim)
      .def_readwrite("interleaved", &RopeParams::interleaved)
      .def_property(
          "stream", [](const RopeParams& p) { return reinterpret_cast<uintptr_t>(p.stream); },
          [](RopeParams& p, uintptr_t s) { p.stream = as_stream(s); });
  m.def("rope", nogil(&rope));
  m.def("rope_outputs", outputs(&rope_outputs), py::arg("params"), py::arg("names") = py::none());

  m.def("version", &version);
  m.def("built_with_cuda", &built_with_cuda);
  m.def("cuda_device_count", &cuda_device_count);
  m.def("cuda_has_kernel", [](const std::string& m) { return cuda_has_kernel(m.c_str()); });
  m.def("cpu_isa", &cpu_isa);
  m.def("get_num_threads", &get_num_threads);
  m.def("set_num_threads", &set_num_threads, py::arg("n"));
  m.attr("__version__") = version();
#ifdef ATTNKIT_WITH_JAX
  bind_jax_ffi(m);
#endif
}
