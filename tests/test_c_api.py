"""The C ABI (attnkit/c_api.h) of the pip-installed libattnkit.so, driven through ctypes: every mechanism
gives the same numbers as the Python API (the same kernels behind both), and bad input (NULL pointers,
wrong ranks, bad dtype codes, bad option values, destroyed handles) gets a status code and a message
naming the argument, never a crash."""

from __future__ import annotations

import ctypes as C
import sys
from pathlib import Path

import numpy as np
import pytest

import attnkit
from attnkit import _sdk

if not sys.platform.startswith("linux"):
    pytest.skip("the ctypes test loads libattnkit.so", allow_module_level=True)

LIB = C.CDLL(str(Path(_sdk.lib_dir()) / "libattnkit.so"))
OK, VALUE, TYPE, NOT_BUILT, RUNTIME = 0, 1, 2, 3, 4
P = C.c_void_p


class Tensor(C.Structure):
    _fields_ = [("data", P), ("dtype", C.c_int32), ("device", C.c_int32), ("device_index", C.c_int32),
                ("rank", C.c_int32), ("shape", C.POINTER(C.c_int64)), ("strides", C.POINTER(C.c_int64))]


def opts_struct(name, fields):
    return type(name, (C.Structure,), {"_fields_": [("struct_size", C.c_uint32)] + fields})


AttentionOptions = opts_struct("AttentionOptions", [
    ("has_scale", C.c_int32), ("scale", C.c_double), ("softcap", C.c_double), ("causal", C.c_int32),
    ("window_left", C.c_int64), ("window_right", C.c_int64), ("mask", P), ("bias", P), ("key_lengths", P),
    ("alibi_slopes", P), ("stream", P)])
LinearOptions = opts_struct("LinearOptions", [
    ("feature_map", C.c_int32), ("causal", C.c_int32), ("normalize", C.c_int32), ("eps", C.c_double),
    ("key_lengths", P), ("initial_state", P), ("initial_normalizer", P), ("final_state", P),
    ("final_normalizer", P), ("stream", P)])
LshOptions = opts_struct("LshOptions", [
    ("num_buckets", C.c_int64), ("num_hashes", C.c_int64), ("seed", C.c_uint64), ("causal", C.c_int32),
    ("has_scale", C.c_int32), ("scale", C.c_double), ("stream", P)])
DLAOptions = opts_struct("DLAOptions", [
    ("tau", C.c_double), ("score", C.c_int32), ("log_decay", P), ("scores", P), ("boundaries", P), ("merged", P),
    ("stream", P)])

CODES = {np.dtype(np.float32): 0, np.dtype(np.float64): 1, np.dtype(np.float16): 2, np.dtype(np.bool_): 4,
         np.dtype(np.int32): 5, np.dtype(np.int64): 6}
_keep = []


def T(a: np.ndarray, **override):
    """An attnkit_tensor over a NumPy array (strides in elements)."""
    shape = (C.c_int64 * max(a.ndim, 1))(*a.shape)
    strides = (C.c_int64 * max(a.ndim, 1))(*(s // a.itemsize for s in a.strides))
    _keep.extend([a, shape, strides])
    t = Tensor(a.ctypes.data, CODES[a.dtype], 0, 0, a.ndim, shape, strides)
    for k, v in override.items():
        setattr(t, k, v)
    return C.pointer(t)


def last_error() -> str:
    LIB.attnkit_last_error.restype = C.c_char_p
    return LIB.attnkit_last_error().decode()


def call(fn, *args):
    return getattr(LIB, fn)(*args)


def attention_opts(**kw):
    o = AttentionOptions(C.sizeof(AttentionOptions), 0, 0.0, 0.0, 0, -1, -1, None, None, None, None, None)
    for k, v in kw.items():
        setattr(o, k, v)
    return C.byref(o)


RNG = np.random.default_rng(7)
q, k, v = (RNG.standard_normal((2, 3, 13, 8)).astype(np.float32) for _ in range(3))


def empty(shape, dtype=np.float32):
    return np.full(shape, np.nan, dtype)


def test_version_and_abi():
    LIB.attnkit_version.restype = C.c_char_p
    assert LIB.attnkit_version().decode() == attnkit.__version__
    assert LIB.attnkit_abi_version() == 1


def test_cuda_kernel_query():
    """attnkit_cuda_has_kernel agrees with attnkit.info() and is 0 for NULL and for unknown names."""
    LIB.attnkit_cuda_has_kernel.argtypes = [C.c_char_p]
    kernels = attnkit.info()["cuda_kernels"]
    for name in ("attention", "lsh_attention", "rope"):
        assert LIB.attnkit_cuda_has_kernel(name.encode()) == (name in kernels)
    assert LIB.attnkit_cuda_has_kernel(None) == 0
    assert LIB.attnkit_cuda_has_kernel(b"no_such_function") == 0
    if not LIB.attnkit_built_with_cuda():
        assert kernels == []


def test_tuning_options():
    value = C.c_int64(-7)
    assert call("attnkit_get_tuning", b"linear_chunk", C.byref(value)) == OK and value.value == 0
    assert call("attnkit_set_tuning", b"linear_chunk", C.c_int64(16)) == OK
    assert call("attnkit_get_tuning", b"linear_chunk", C.byref(value)) == OK and value.value == 16
    assert call("attnkit_set_tuning", b"linear_chunk", C.c_int64(0)) == OK
    assert call("attnkit_set_tuning", b"linear_chunk", C.c_int64(5000)) == VALUE and "linear_chunk" in last_error()
    assert call("attnkit_set_tuning", b"no_such_option", C.c_int64(1)) == VALUE and "no_such_option" in last_error()
    assert call("attnkit_set_tuning", None, C.c_int64(1)) == VALUE and "name" in last_error()


def test_attention_weights_merge_match_python():
    out, lse = empty(q.shape), empty(q.shape[:-1])
    assert call("attnkit_attention", T(q), T(k), T(v), T(out), T(lse), attention_opts(causal=1)) == OK, last_error()
    want_out, want_lse = attnkit.attention(q, k, v, causal=True, return_lse=True)
    np.testing.assert_array_equal(out, want_out)
    np.testing.assert_array_equal(lse, want_lse)
    w = empty((2, 3, 13, 13))
    assert call("attnkit_attention_weights", T(q), T(k), T(w), attention_opts(window_left=2)) == OK
    np.testing.assert_array_equal(w, attnkit.attention_weights(q, k, window=(2, None)))
    outs = (Tensor * 2)(T(out).contents, T(v).contents)
    lses = (Tensor * 2)(T(lse).contents, T(lse).contents)
    m = empty(q.shape)
    assert call("attnkit_merge_attention", outs, lses, C.c_int64(2), T(m), None, None) == OK, last_error()
    np.testing.assert_array_equal(m, attnkit.merge_attention([out, v], [lse, lse])[0])


def test_block_sparse_with_layout_handle():
    layout = P()
    assert call("attnkit_layout_bigbird", C.c_int64(13), C.c_int64(4), C.c_int64(1), C.c_int64(1), C.c_int64(1),
                C.c_uint64(5), C.c_int32(0), C.c_int64(1), C.byref(layout)) == OK, last_error()
    out = empty(q.shape)
    assert call("attnkit_block_sparse_attention", T(q), T(k), T(v), layout, T(out), None, None) == OK, last_error()
    py_layout = attnkit.layouts.bigbird(13, 4, window_blocks=1, global_blocks=1, random_blocks=1, seed=5)
    np.testing.assert_array_equal(out, attnkit.block_sparse_attention(q, k, v, py_layout))
    dense = np.zeros(16, np.uint8)
    assert call("attnkit_layout_to_dense", layout, dense.ctypes.data_as(P), C.c_int64(16)) == OK
    np.testing.assert_array_equal(dense.reshape(1, 4, 4).astype(bool), py_layout.to_dense())
    assert call("attnkit_layout_destroy", layout) == OK
    # a destroyed handle is reported, not dereferenced, and destroying it again is an error too
    assert call("attnkit_block_sparse_attention", T(q), T(k), T(v), layout, T(out), None, None) == VALUE
    assert "layout" in last_error() and "not a live" in last_error()
    assert call("attnkit_layout_destroy", layout) == VALUE
    assert call("attnkit_layout_destroy", None) == OK
    assert call("attnkit_block_sparse_attention", T(q), T(k), T(v), None, T(out), None, None) == VALUE
    assert "layout is NULL" in last_error()


def test_lsh_linear_performer_linformer_match_python():
    lo = LshOptions(C.sizeof(LshOptions), 4, 2, 9, 1, 0, 0.0, None)
    out = empty(q.shape)
    assert call("attnkit_lsh_attention", T(q), T(k), T(v), T(out), None, C.byref(lo)) == OK, last_error()
    np.testing.assert_array_equal(out, attnkit.lsh_attention(q, k, v, num_buckets=4, num_hashes=2, seed=9,
                                                             causal=True))
    buckets = np.zeros((2, 3, 2, 13), np.int32)
    assert call("attnkit_lsh_buckets", T(q), T(buckets), C.c_int64(4), C.c_int64(2), C.c_uint64(9), None) == OK
    np.testing.assert_array_equal(buckets, attnkit.lsh_buckets(q, num_buckets=4, num_hashes=2, seed=9))

    S, z = empty((2, 3, 8, 8)), empty((2, 3, 8))
    lin = LinearOptions(C.sizeof(LinearOptions), 1, 1, 1, 1e-6, None, None, None, C.cast(T(S), P),
                        C.cast(T(z), P), None)
    assert call("attnkit_linear_attention", T(q), T(k), T(v), T(out), C.byref(lin)) == OK, last_error()
    want, (wS, wz) = attnkit.linear_attention(q, k, v, feature_map="relu", return_state=True)
    np.testing.assert_array_equal(out, want)
    np.testing.assert_array_equal(S, wS)
    np.testing.assert_array_equal(z, wz)

    W = empty((16, 8))
    assert call("attnkit_random_features", T(W), C.c_uint64(3), C.c_int32(1), C.c_int32(0)) == OK
    np.testing.assert_array_equal(W, attnkit.random_features(16, 8, seed=3))
    assert call("attnkit_performer_attention", T(q), T(k), T(v), T(W), T(out), None) == OK, last_error()
    np.testing.assert_array_equal(out, attnkit.performer_attention(q, k, v, W))

    E = empty((5, 13))
    assert call("attnkit_linformer_projection", T(E), C.c_uint64(4)) == OK
    np.testing.assert_array_equal(E, attnkit.linformer_projection(5, 13, seed=4))
    assert call("attnkit_linformer_attention", T(q), T(k), T(v), T(E), None, T(out), None, None) == OK
    np.testing.assert_array_equal(out, attnkit.linformer_attention(q, k, v, E))


def test_dla_cache_handle_prefill_then_decode():
    B, H, Tn, D, Cap = 2, 3, 13, 8, 4
    lam = RNG.random((B, H, Tn, Cap)).astype(np.float32)
    cache = P()
    assert call("attnkit_dla_cache_create", C.c_int64(B), C.c_int64(H), C.c_int64(Cap), C.c_int64(D),
                C.c_int64(D), C.c_int32(0), C.byref(cache)) == OK, last_error()
    o = DLAOptions(C.sizeof(DLAOptions), 0.3, 0, None, None, None, None, None)
    out1, out2 = empty((B, H, 9, D)), empty((B, H, 4, D))
    sl = (slice(None), slice(None))
    args = [(np.ascontiguousarray(x[sl + (slice(0, 9),)]), np.ascontiguousarray(x[sl + (slice(9, None),)]))
            for x in (q, k, v, lam)]
    assert call("attnkit_dynamic_linear_attention", *(T(a[0]) for a in args), cache, T(out1), C.byref(o)) == OK
    assert call("attnkit_dynamic_linear_attention", *(T(a[1]) for a in args), cache, T(out2), C.byref(o)) == OK
    want, want_cache = attnkit.dynamic_linear_attention(q, k, v, lam, capacity=Cap, tau=0.3)
    np.testing.assert_allclose(np.concatenate([out1, out2], axis=2), want, rtol=1e-5, atol=1e-6)
    storage, states, size = (C.c_int64 * 40)(), Tensor(), Tensor()
    assert call("attnkit_dla_cache_tensors", cache, storage, C.byref(states), None, None, None, C.byref(size)) == OK
    assert tuple(states.shape[i] for i in range(states.rank)) == (B, H, Cap, D, D) and states.dtype == 0
    got_size = np.ctypeslib.as_array(C.cast(size.data, C.POINTER(C.c_int64)), shape=(B, H))
    np.testing.assert_array_equal(got_size, want_cache.size)
    got_states = np.ctypeslib.as_array(C.cast(states.data, C.POINTER(C.c_float)), shape=(B, H, Cap, D, D))
    np.testing.assert_allclose(got_states, want_cache.states, rtol=1e-5, atol=1e-6)
    pos = C.c_int64()
    assert call("attnkit_dla_cache_position", cache, C.byref(pos)) == OK and pos.value == Tn
    # a failing call (lam with the wrong capacity) leaves the cache as it was
    bad_lam = np.zeros((B, H, 1, Cap + 1), np.float32)
    one = [np.ascontiguousarray(x[sl + (slice(0, 1),)]) for x in (q, k, v)]
    assert call("attnkit_dynamic_linear_attention", *(T(a) for a in one), T(bad_lam), cache,
                T(empty((B, H, 1, D))), None) == VALUE
    assert "lam" in last_error()
    assert call("attnkit_dla_cache_position", cache, C.byref(pos)) == OK and pos.value == Tn
    assert call("attnkit_dla_cache_destroy", cache) == OK
    assert call("attnkit_dla_cache_position", cache, C.byref(pos)) == VALUE and "cache" in last_error()


@pytest.mark.parametrize("case, status, needle", [
    ("null_q", VALUE, "q is NULL"),
    ("bad_dtype", TYPE, "k.dtype"),
    ("bad_device", TYPE, "v.device"),
    ("bad_rank", VALUE, "out.rank"),
    ("wrong_rank", VALUE, "v"),
    ("negative_dim", VALUE, "q.shape[1]"),
    ("null_shape", VALUE, "k.shape is NULL"),
    ("null_data", VALUE, "q.data is NULL"),
    ("bad_flag", VALUE, "opts.causal"),
    ("bad_struct_size", VALUE, "opts.struct_size"),
    ("bad_mask_dtype", TYPE, "mask"),
])
def test_bad_input_gets_status_and_names_argument(case, status, needle):
    out = empty(q.shape)
    a = dict(q=T(q), k=T(k), v=T(v), out=T(out), opts=attention_opts())
    if case == "null_q":
        a["q"] = None
    elif case == "bad_dtype":
        a["k"] = T(k, dtype=42)
    elif case == "bad_device":
        a["v"] = T(v, device=7)
    elif case == "bad_rank":
        a["out"] = T(out, rank=9)
    elif case == "wrong_rank":
        a["v"] = T(v[0])
    elif case == "negative_dim":
        a["q"] = T(q)
        a["q"].contents.shape[1] = -3
    elif case == "null_shape":
        a["k"] = T(k, shape=None)
    elif case == "null_data":
        a["q"] = T(q, data=None)
    elif case == "bad_flag":
        a["opts"] = attention_opts(causal=2)
    elif case == "bad_struct_size":
        a["opts"] = attention_opts(struct_size=C.sizeof(AttentionOptions) + 8)
    elif case == "bad_mask_dtype":
        a["opts"] = attention_opts(mask=C.cast(T(np.zeros((13, 13), np.int32)), P))
    st = call("attnkit_attention", a["q"], a["k"], a["v"], a["out"], None, a["opts"])
    assert st == status and needle in last_error(), (st, last_error())
    assert call("attnkit_attention", T(q), T(k), T(v), T(out), None, None) == OK and last_error() == ""


def test_status_names_and_cuda_tensor_without_kernels():
    LIB.attnkit_status_name.restype = C.c_char_p
    names = [LIB.attnkit_status_name(i).decode() for i in range(6)]
    assert names == ["ok", "value_error", "type_error", "not_built", "runtime_error", "unknown"]
    # CUDA tensors on this build: a status and a message (the CUDA backend is not built, or has no kernel yet)
    out = empty(q.shape)
    st = call("attnkit_attention", T(q, device=1), T(k, device=1), T(v, device=1), T(out, device=1), None, None)
    assert st in (TYPE, NOT_BUILT, RUNTIME) and "cuda" in last_error().lower(), (st, last_error())
