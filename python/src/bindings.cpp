// pybind11 bindings of the C++ API. The Python package (attnkit/_array.py) turns NumPy / CuPy arrays
// into TensorRef views; here we only mirror the params structs, release the GIL around every kernel and
// map attnkit::Error kinds onto Python exceptions.
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

// Block layouts cross the boundary as (row_ptr int64 array, col_idx int32 array, block_q, block_k,
// num_heads, num_q_blocks, num_k_blocks); the Python class attnkit.BlockLayout holds those.
py::tuple layout_to_py(const BlockLayout& L) {
  py::array_t<int64_t> rp(static_cast<py::ssize_t>(L.row_ptr.size()));
  py::array_t<int32_t> ci(static_cast<py::ssize_t>(L.col_idx.size()));
  std::copy(L.row_ptr.begin(), L.row_ptr.end(), rp.mutable_data());
  std::copy(L.col_idx.begin(), L.col_idx.end(), ci.mutable_data());
  return py::make_tuple(rp, ci, L.block_q, L.block_k, L.num_heads, L.num_q_blocks, L.num_k_blocks);
}

BlockLayout layout_from_py(const py::tuple& t) {
  BlockLayout L;
  auto rp = t[0].cast<py::array_t<int64_t, py::array::c_style | py::array::forcecast>>();
  auto ci = t[1].cast<py::array_t<int32_t, py::array::c_style | py::array::forcecast>>();
  L.row_ptr.assign(rp.data(), rp.data() + rp.size());
  L.col_idx.assign(ci.data(), ci.data() + ci.size());
  L.block_q = t[2].cast<int64_t>();
  L.block_k = t[3].cast<int64_t>();
  L.num_heads = t[4].cast<int64_t>();
  L.num_q_blocks = t[5].cast<int64_t>();
  L.num_k_blocks = t[6].cast<int64_t>();
  validate_layout(L.ref());
  return L;
}

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

  // ---------------------------------------------------------------------------- block-sparse / LSH
  py::class_<BlockLayoutRef>(m, "BlockLayoutRef")
      .def(py::init([](const TensorRef& rp, const TensorRef& ci, int64_t bq, int64_t bk, int64_t heads, int64_t nqb,
                       int64_t nkb) {
             BlockLayoutRef r;
             r.row_ptr = rp;
             r.col_idx = ci;
             r.block_q = bq;
             r.block_k = bk;
             r.num_heads = heads;
             r.num_q_blocks = nqb;
             r.num_k_blocks = nkb;
             return r;
           }),
           py::arg("row_ptr"), py::arg("col_idx"), py::arg("block_q"), py::arg("block_k"), py::arg("num_heads"),
           py::arg("num_q_blocks"), py::arg("num_k_blocks"));
  m.def("layout_validate", &validate_layout);
  m.def("layout_from_dense", [](py::array_t<uint8_t, py::array::c_style | py::array::forcecast> blocks, int64_t bq,
                                int64_t bk) {
    if (blocks.ndim() != 3) throw Error(ErrorKind::Value, "blocks must be 3-D [H, nQb, nKb] here");
    return layout_to_py(BlockLayout::from_dense(blocks.data(), blocks.shape(0), blocks.shape(1), blocks.shape(2), bq, bk));
  });
  m.def("layout_sliding_window", [](int64_t seq_len, int64_t block, int64_t w, bool causal, int64_t heads) {
    return layout_to_py(BlockLayout::sliding_window(seq_len, block, w, causal, heads));
  });
  m.def("layout_longformer", [](int64_t seq_len, int64_t block, int64_t w, const std::vector<int64_t>& globals,
                                int64_t dilation, bool causal, int64_t heads) {
    return layout_to_py(BlockLayout::longformer(seq_len, block, w, globals, dilation, causal, heads));
  });
  m.def("layout_bigbird", [](int64_t seq_len, int64_t block, int64_t w, int64_t g, int64_t r, uint64_t seed,
                             bool causal, int64_t heads) {
    return layout_to_py(BlockLayout::bigbird(seq_len, block, w, g, r, seed, causal, heads));
  });
  m.def("layout_fixed", [](int64_t seq_len, int64_t block, int64_t local, int64_t global, bool causal, int64_t heads) {
    return layout_to_py(BlockLayout::fixed(seq_len, block, local, global, causal, heads));
  });
  m.def("layout_union", [](const std::vector<py::tuple>& parts) {
    std::vector<BlockLayout> owned;
    owned.reserve(parts.size());
    for (const auto& t : parts) owned.push_back(layout_from_py(t));
    std::vector<const BlockLayout*> ptrs;
    for (const auto& l : owned) ptrs.push_back(&l);
    return layout_to_py(BlockLayout::unite(ptrs));
  });

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
  m.def("block_sparse_attention", [](const BlockSparseParams& p) {
    py::gil_scoped_release nogil;
    block_sparse_attention(p);
  });

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
  m.def("lsh_attention", [](const LshAttentionParams& p) {
    py::gil_scoped_release nogil;
    lsh_attention(p);
  });
  m.def(
      "lsh_buckets",
      [](const TensorRef& x, const TensorRef& out, int64_t num_buckets, int64_t num_hashes, uint64_t seed,
         uintptr_t stream) {
        LshBucketsParams p;
        p.x = x;
        p.out = out;
        p.num_buckets = num_buckets;
        p.num_hashes = num_hashes;
        p.seed = seed;
        p.stream = as_stream(stream);
        py::gil_scoped_release nogil;
        lsh_buckets(p);
      },
      py::arg("x"), py::arg("out"), py::arg("num_buckets"), py::arg("num_hashes"), py::arg("seed"),
      py::arg("stream") = 0);

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
