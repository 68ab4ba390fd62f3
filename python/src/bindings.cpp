// pybind11 bindings of the C++ API. The Python package (attnkit/_array.py) turns NumPy / CuPy arrays
// into TensorRef views; here we only mirror the params structs, release the GIL around every kernel and
// map attnkit::Error kinds onto Python exceptions.
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

}  // namespace

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

  py::class_<TensorRef>(m, "TensorRef")
      .def(py::init(&make_ref), py::arg("ptr"), py::arg("dtype"), py::arg("shape"), py::arg("strides"),
           py::arg("device") = 0, py::arg("device_index") = 0)
      .def(py::init<>())
      .def_property_readonly("ndim", [](const TensorRef& t) { return t.ndim; })
      .def_property_readonly("shape", [](const TensorRef& t) { return std::vector<int64_t>(t.shape, t.shape + std::max(t.ndim, 0)); });

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
      .def_readwrite("chunk_size", &LinearAttentionParams::chunk_size)
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
      .def_readwrite("chunk_size", &PerformerParams::chunk_size)
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
      .def_readwrite("out", &RandomFeaturesParams::out);

  py::class_<LinformerProjectionParams>(m, "LinformerProjectionParams")
      .def(py::init<>())
      .def_readwrite("proj_len", &LinformerProjectionParams::proj_len)
      .def_readwrite("seq_len", &LinformerProjectionParams::seq_len)
      .def_readwrite("num_heads", &LinformerProjectionParams::num_heads)
      .def_readwrite("seed", &LinformerProjectionParams::seed)
      .def_readwrite("out", &LinformerProjectionParams::out);

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

  m.def("attention", [](const AttentionParams& p) {
    py::gil_scoped_release nogil;
    attention(p);
  });
  m.def("attention_weights", [](const AttentionParams& p, const TensorRef& weights) {
    py::gil_scoped_release nogil;
    attention_weights(p, weights);
  });
  m.def(
      "merge_attention",
      [](const std::vector<TensorRef>& outs, const std::vector<TensorRef>& lses, const TensorRef& out,
         const TensorRef& lse, uintptr_t stream) {
        MergeParams p;
        p.outs = outs;
        p.lses = lses;
        p.out = out;
        p.lse = lse;
        p.stream = as_stream(stream);
        py::gil_scoped_release nogil;
        merge_attention(p);
      },
      py::arg("outs"), py::arg("lses"), py::arg("out"), py::arg("lse"), py::arg("stream") = 0);

  m.def("linear_attention", [](const LinearAttentionParams& p) {
    py::gil_scoped_release nogil;
    linear_attention(p);
  });
  m.def("performer_attention", [](const PerformerParams& p) {
    py::gil_scoped_release nogil;
    performer_attention(p);
  });
  m.def("random_features", [](const RandomFeaturesParams& p) {
    py::gil_scoped_release nogil;
    random_features(p);
  });
  m.def("linformer_projection", [](const LinformerProjectionParams& p) {
    py::gil_scoped_release nogil;
    linformer_projection(p);
  });
  m.def("linformer_attention", [](const LinformerParams& p) {
    py::gil_scoped_release nogil;
    linformer_attention(p);
  });

  m.def("version", &version);
  m.def("built_with_cuda", &built_with_cuda);
  m.def("cuda_device_count", &cuda_device_count);
  m.def("cpu_isa", &cpu_isa);
  m.def("get_num_threads", &get_num_threads);
  m.def("set_num_threads", &set_num_threads, py::arg("n"));
  m.attr("__version__") = version();
}
