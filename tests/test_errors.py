"""Every validator error: the exception type and the argument named in the message. Nothing crashes."""

from __future__ import annotations

import numpy as np
import pytest

import attnkit
from attnkit import _core

from conftest import raises, randn


@pytest.fixture
def qkv(rng):
    return (randn(rng, (2, 4, 10, 16), np.float32), randn(rng, (2, 2, 12, 16), np.float32),
            randn(rng, (2, 2, 12, 8), np.float32))




class FakeCuda:
    """An object that looks like a CuPy array (no GPU memory behind it)."""

    def __init__(self, shape, typestr="<f4"):
        self.shape = shape
        self.__cuda_array_interface__ = {"shape": shape, "typestr": typestr, "data": (0x1000, False), "strides": None,
                                         "version": 3}


def test_array_types(qkv):
    q, k, v = qkv
    raises(TypeError, "q", attnkit.attention, q.tolist(), k, v)
    raises(TypeError, "v", attnkit.attention, q, k, "v")
    raises(TypeError, "q", attnkit.attention, q.astype(np.int32), k, v)
    raises(TypeError, "q", attnkit.attention, q.astype(np.complex64), k, v)
    raises(TypeError, "k", attnkit.attention, q, k.astype(np.float64), v)
    raises(TypeError, "v", attnkit.attention, q, k, v.astype(np.float16))
    raises(TypeError, "q", attnkit.attention, q.astype(object), k, v)


def test_shapes(qkv):
    q, k, v = qkv
    raises(ValueError, "q", attnkit.attention, q[0, 0, 0], k, v)
    raises(ValueError, "q", attnkit.attention, q[None], k, v)
    raises(ValueError, "k", attnkit.attention, q, k[0], v)
    raises(ValueError, "k", attnkit.attention, q, k[:1], v)              # batch
    raises(ValueError, "k", attnkit.attention, q, k[..., :8], v)         # head dim
    raises(ValueError, "k", attnkit.attention, q[:, :3], k, v)           # GQA: Hq % Hkv
    raises(ValueError, "v", attnkit.attention, q, k, v[:, :, :5])        # Sk
    raises(ValueError, "v", attnkit.attention, q, k, v[:, :1])           # Hkv
    raises(ValueError, "v", attnkit.attention, q, k, v[0])               # rank
    raises(ValueError, "head dim", attnkit.attention, q[..., :0], k[..., :0], v)


def test_masking_arguments(qkv, rng):
    q, k, v = qkv
    f = attnkit.attention
    raises(ValueError, "window", f, q, k, v, window=5)
    raises(ValueError, "window", f, q, k, v, window=(1, 2, 3))
    raises(TypeError, "window", f, q, k, v, window=(1.5, 2))
    raises(TypeError, "mask", f, q, k, v, mask=np.ones((10, 12), np.float32))
    raises(ValueError, "mask", f, q, k, v, mask=np.ones((10, 11), bool))
    raises(ValueError, "mask", f, q, k, v, mask=np.ones((1, 2, 3, 10, 12), bool))
    raises(TypeError, "bias", f, q, k, v, bias=np.ones((10, 12), np.int64))
    raises(ValueError, "bias", f, q, k, v, bias=np.ones((3, 10, 12), np.float32))
    raises(TypeError, "key_lengths", f, q, k, v, key_lengths=np.array([1.0, 2.0]))
    raises(ValueError, "key_lengths", f, q, k, v, key_lengths=[1, 2, 3])
    raises(ValueError, "key_lengths", f, q, k, v, key_lengths=[[1, 2]])
    raises(ValueError, "key_lengths", f, q, k, v, key_lengths=[13, 2])
    raises(ValueError, "key_lengths", f, q, k, v, key_lengths=[-1, 2])
    raises(ValueError, "alibi_slopes", f, q, k, v, alibi_slopes=np.ones(3))
    raises(ValueError, "alibi_slopes", f, q, k, v, alibi_slopes=np.ones((3, 4)))
    raises(ValueError, "alibi_slopes", f, q, k, v, alibi_slopes=np.ones((2, 2, 4)))
    raises(TypeError, "alibi_slopes", f, q, k, v, alibi_slopes=np.ones(4, np.int32))
    raises(ValueError, "scale", f, q, k, v, scale=float("nan"))
    raises(ValueError, "scale", f, q, k, v, scale=float("inf"))
    raises(TypeError, "scale", f, q, k, v, scale="0.5")
    raises(ValueError, "softcap", f, q, k, v, softcap=-1.0)
    raises(ValueError, "softcap", f, q, k, v, softcap=float("nan"))
    raises(TypeError, "causal", f, q, k, v, causal="yes")
    raises(TypeError, "causal", attnkit.attention_weights, q, k, causal=None)


def test_devices(qkv):
    q, k, v = qkv
    raises(TypeError, "device", attnkit.attention, q, FakeCuda(k.shape), v)
    raises(TypeError, "device", attnkit.attention, q, k, v, mask=FakeCuda((10, 12), "|b1"))


def _params(q, k, v, out=None, lse=None):
    p = _core.AttentionParams()
    ref = lambda a: _core.TensorRef(a.ctypes.data, {4: 0, 8: 1}[a.dtype.itemsize] if a.dtype.kind == "f" else 6,
                                    list(a.shape), [s // a.itemsize for s in a.strides])
    p.q, p.k, p.v = ref(q), ref(k), ref(v)
    if out is not None:
        p.out = ref(out)
    if lse is not None:
        p.lse = ref(lse)
    return p


def test_outputs_checked_by_core(qkv):
    """The C++ validator checks outputs too (C++ users allocate their own)."""
    q, k, v = qkv
    raises(ValueError, "out is required", _core.attention, _params(q, k, v))
    raises(ValueError, "out", _core.attention, _params(q, k, v, np.empty((2, 4, 10, 9), np.float32)))
    raises(TypeError, "out", _core.attention, _params(q, k, v, np.empty((2, 4, 10, 8), np.float64)))
    bcast = np.broadcast_to(np.empty((1, 1, 10, 8), np.float32), (2, 4, 10, 8))
    raises(ValueError, "out", _core.attention, _params(q, k, v, bcast))
    out = np.empty((2, 4, 10, 8), np.float32)
    raises(ValueError, "lse", _core.attention, _params(q, k, v, out, np.empty((2, 4, 9), np.float32)))
    raises(TypeError, "lse", _core.attention, _params(q, k, v, out, np.empty((2, 4, 10), np.float64)))
    raises(ValueError, "weights", _core.attention_weights, _params(q, k, v), _core.TensorRef())


def test_cuda_path_without_gpu(qkv):
    """CUDA tensors reach the CUDA backend, which reports clearly that it cannot run here."""
    q, k, v = qkv
    p = _core.AttentionParams()
    for name, a in (("q", q), ("k", k), ("v", v), ("out", np.empty((2, 4, 10, 8), np.float32))):
        setattr(p, name, _core.TensorRef(0x1000, 0, list(a.shape), [s // 4 for s in a.strides], 1, 0))
    with pytest.raises(RuntimeError) as e:
        _core.attention(p)
    msg = str(e.value)
    if _core.built_with_cuda():
        assert "CUDA" in msg
    else:
        assert "built without CUDA" in msg


def test_merge_errors(rng):
    o = randn(rng, (2, 5, 8), np.float32)
    l = randn(rng, (2, 5), np.float32)
    f = attnkit.merge_attention
    raises(ValueError, "outs", f, [], [])
    raises(ValueError, "lses", f, [o, o], [l])
    raises(ValueError, "outs[1]", f, [o, o[:, :4]], [l, l])
    raises(ValueError, "lses[1]", f, [o, o], [l, l[:, :4]])
    raises(TypeError, "outs[1]", f, [o, o.astype(np.float64)], [l, l])
    raises(TypeError, "lses[0]", f, [o, o], [l.astype(np.float64), l])
    raises(TypeError, "lses[0]", f, [o, o], [l.astype(np.int32), l])
    raises(ValueError, "outs[0]", f, [np.float32(1.0)], [np.float32(0.0)])


def test_threads_errors():
    raises(ValueError, "num_threads", attnkit.set_num_threads, 0)
    raises(TypeError, "n", attnkit.set_num_threads, 1.5)
