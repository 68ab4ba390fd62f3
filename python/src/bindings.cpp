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
      .def_readwrite("chunk_size", &DLAParams::chunk_size)
      .def_property(
          "stream", [](const DLAParams& p) { return reinterpret_cast<uintptr_t>(p.stream); },
          [](DLAParams& p, uintptr_t s) { p.stream = as_stream(s); });

  m.def("dynamic_linear_attention", [](const DLAParams& p) {
    py::gil_scoped_release nogil;
    dynamic_linear_attention(p);
  });

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

  m.def("version", &version);
  m.def("built_with_cuda", &built_with_cuda);
  m.def("cuda_device_count", &cuda_device_count);
  m.def("cpu_isa", &cpu_isa);
  m.def("get_num_threads", &get_num_threads);
  m.def("set_num_threads", &set_num_threads, py::arg("n"));
  m.attr("__version__") = version();
}
