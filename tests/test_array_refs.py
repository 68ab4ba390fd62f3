"""The array adapter's fast paths (attnkit._array.Call.tensor): a NumPy array becomes a TensorRef in one
binding call (_core.numpy_ref), a CuPy array from its attributes (_core.device_ref); both must give
exactly the TensorRef the generic path gives (data pointer, dtype, shape, strides in elements, device),
for every kind of view, and leave the unusual cases (byte strides, ranks above 8) to the generic path
and its errors. The CuPy path itself runs in tests/test_gpu_misc.py; its core, device_ref, is checked
here on the attribute values CuPy would hand it."""

from __future__ import annotations

import numpy as np
import pytest

from attnkit import _array, _core
from attnkit._array import BFLOAT16, Call

from conftest import raises

CODES = {np.dtype(np.float32): 0, np.dtype(np.float64): 1, np.dtype(np.float16): 2, BFLOAT16: 3,
         np.dtype(np.bool_): 4, np.dtype(np.int32): 5, np.dtype(np.int64): 6}


def fields(ref):
    return ref.data, ref.dtype, ref.ndim, ref.shape, ref.strides, ref.device, ref.device_index


def expected_numpy(x):
    """What the generic path gives for a NumPy array whose byte strides are multiples of its item size."""
    item = x.dtype.itemsize
    ptr = x.__array_interface__["data"][0] if x.size else 0
    return ptr, CODES[x.dtype], x.ndim, list(x.shape), [s // item for s in x.strides], 0, 0


BASE = np.arange(2 * 3 * 5 * 8, dtype=np.float32).reshape(2, 3, 5, 8)
VIEWS = {
    "contiguous": BASE,
    "transposed": BASE.transpose(0, 2, 1, 3),
    "sliced": BASE[:, 1:, ::2, 1:7],
    "negative": BASE[::-1, :, ::-1],
    "last-row": BASE[:, :, -1:],
    "newaxis": BASE[:, None, 0],
    "broadcast": np.broadcast_to(BASE[:, :, :1], (2, 3, 5, 8)),
    "empty": BASE[:, :, :0],
    "empty-strided": BASE[:, ::2, :0, ::3],
    "0-d": np.ones((), np.float32),
    "rank-8": np.zeros((1, 2, 1, 2, 1, 2, 1, 3), np.float32),
    "float64": BASE.astype(np.float64)[:, ::2],
    "float16": BASE.astype(np.float16).T,
    "bfloat16": BASE.astype(BFLOAT16)[..., ::3],
    "bool": BASE > 100,
    "int32": BASE.astype(np.int32)[1],
    "int64": np.arange(7, dtype=np.int64)[::2],
}


@pytest.mark.parametrize("name", VIEWS)
def test_numpy_fast_path_gives_the_generic_ref(name):
    x = VIEWS[name]
    assert _core.numpy_ref(x, CODES[x.dtype]) is not None  # the fast path takes it
    call = Call()
    ref = call.tensor(x, "q")
    assert fields(ref) == expected_numpy(x)
    assert call.cuda is False and call._keep[-1] is x


def test_numpy_byte_strided_views_are_copied_once():
    rec = np.zeros((4, 6), dtype=[("a", np.float32), ("b", np.int8)])
    x = rec["a"]  # byte strides of 5: not a multiple of 4
    assert _core.numpy_ref(x, 0) is None
    call = Call()
    ref = call.tensor(x, "q")
    kept = call._keep[-1]
    assert kept is not x and kept.flags.c_contiguous and ref.data == kept.__array_interface__["data"][0]
    assert ref.shape == [4, 6] and ref.strides == [6, 1]


def test_numpy_rank_above_eight_names_the_limit():
    x = np.zeros((1,) * 9, np.float32)
    assert _core.numpy_ref(x, 0) is None
    raises(ValueError, "rank", Call().tensor, x, "q")


def test_numpy_unsupported_dtype_names_the_argument():
    raises(TypeError, "lam", Call().tensor, np.zeros(3, np.int8), "lam")


def test_numpy_ref_refuses_what_is_not_a_numpy_array():
    assert _core.numpy_ref([1.0, 2.0], 0) is None
    assert _core.numpy_ref(BASE, 7) is None and _core.numpy_ref(BASE, -1) is None


def test_outputs_are_contiguous_refs_of_new_arrays():
    call = Call()
    call.tensor(BASE, "q")
    arr, ref = call.empty((2, 0, 3), np.float16, "out")
    assert fields(ref) == expected_numpy(arr) and ref.data == 0
    arr, ref = call.empty((2, 4, 3), BFLOAT16, "lse")
    assert arr.dtype == BFLOAT16 and fields(ref) == expected_numpy(arr)


def test_outputs_nothing_can_hold_name_the_output():
    e = raises(ValueError, "weights", Call().empty, (2**40, 2**40), np.float32, "weights")
    assert "cannot allocate" in str(e)


# ------------------------------------------------------------------------------ device_ref (CuPy's path)
def cai_ref(ptr, item, shape, byte_strides, c_contiguous):
    """The generic path's (shape, strides) from CuPy's __cuda_array_interface__: no strides for a
    C-contiguous (or empty) array, whose strides are then the row-major ones."""
    if c_contiguous:
        strides, acc = [], 1
        for n in reversed(shape):
            strides.insert(0, acc)
            acc *= n
    else:
        strides = [s // item for s in byte_strides]
    return ptr, list(shape), strides


def cupy_c_contiguous(shape, byte_strides, item):
    """CuPy's flag: empty arrays are contiguous; otherwise dims of size 1 are skipped."""
    if 0 in shape:
        return True
    expected = item
    for n, s in zip(reversed(shape), reversed(byte_strides)):
        if n != 1:
            if s != expected:
                return False
            expected *= n
    return True


@pytest.mark.parametrize("code", [0, 1, 2, 3, 4, 5, 6])
def test_device_ref_gives_the_interface_ref(code):
    """For every view of the NumPy stand-ins above (their shapes and byte strides are what a CuPy view of
    the same layout reports), device_ref gives the TensorRef of the __cuda_array_interface__ path."""
    item = [4, 8, 2, 2, 1, 4, 8][code]
    for name, x in VIEWS.items():
        strides = tuple(s // x.dtype.itemsize * item for s in x.strides)  # the same layout in this dtype
        ptr = 0x7F00_0000_0000 if x.size else 0
        ref = _core.device_ref(ptr, code, x.shape, strides, 3)
        assert ref is not None, name
        want = cai_ref(ptr, item, x.shape, strides, cupy_c_contiguous(x.shape, strides, item))
        assert (ref.data, ref.shape, ref.strides) == want, name
        assert (ref.dtype, ref.ndim, ref.device, ref.device_index) == (code, x.ndim, 1, 3), name


def test_device_ref_contiguous_with_odd_unit_dim_strides():
    # c-contiguous by CuPy's rule (the size-1 dim's stride is not looked at): row-major strides, as the
    # interface (strides None) gives
    ref = _core.device_ref(4096, 0, (2, 1, 3), (12, 400, 4), 0)
    assert ref.strides == [3, 3, 1]
    ref = _core.device_ref(4096, 0, (2, 1, 3), (24, 400, 4), 0)  # not contiguous: its own strides
    assert ref.strides == [6, 100, 1]


def test_device_ref_leaves_the_unusual_to_the_generic_path():
    assert _core.device_ref(4096, 0, (2, 3), (13, 4), 0) is None  # byte strides not a multiple of 4
    assert _core.device_ref(4096, 0, (2, 3), (12,), 0) is None  # lengths differ
    assert _core.device_ref(4096, 0, [2, 3], (12, 4), 0) is None  # not tuples
    assert _core.device_ref(4096, 0, (1,) * 9, (4,) * 9, 0) is None  # rank above 8
    assert _core.device_ref(4096, 0, (2, 2.0), (8, 4), 0) is None  # not ints
    assert _core.device_ref(4096, 0, (2, 2**63), (8, 4), 0) is None  # past int64
    assert _core.device_ref(4096, 9, (2, 3), (12, 4), 0) is None  # no such dtype
    # contiguous even with a stride that is not a multiple: the interface has no strides then
    assert _core.device_ref(4096, 0, (2, 1), (4, 3), 0).strides == [1, 1]


def test_cupy_ndarray_lookup_needs_cupy_imported(monkeypatch):
    import sys
    import types

    monkeypatch.setitem(sys.modules, "cupy", types.SimpleNamespace())  # no ndarray: nothing matches
    assert _array._cupy_ndarray() is None
    monkeypatch.setitem(sys.modules, "cupy", types.SimpleNamespace(ndarray=np.ndarray))
    assert _array._cupy_ndarray() is np.ndarray


# ------------------------------------------------------------------ the CuPy path on a stand-in for CuPy
class _Pointer:
    def __init__(self, ptr):
        self.ptr = ptr


class _Device:
    def __init__(self, i):
        self.id = i


class FakeCupyArray:
    """NumPy memory behind CuPy's ndarray attributes (data.ptr, device.id, shape, strides in bytes, dtype,
    size) and its __cuda_array_interface__ as CuPy builds it (no strides when C-contiguous, data 0 when
    empty): the CuPy fast path and the interface path read the same array."""

    def __init__(self, a, device=0):
        self.a, self.device = a, _Device(device)

    dtype = property(lambda self: self.a.dtype)
    shape = property(lambda self: self.a.shape)
    strides = property(lambda self: self.a.strides)
    size = property(lambda self: self.a.size)
    data = property(lambda self: _Pointer(self.a.__array_interface__["data"][0]))

    def __setitem__(self, index, value):  # conftest's poisoning of outputs
        self.a[index] = value

    @property
    def __cuda_array_interface__(self):
        contiguous = cupy_c_contiguous(self.shape, self.strides, self.dtype.itemsize)
        return {"shape": self.shape, "typestr": self.dtype.str, "descr": self.dtype.descr, "stream": 1,
                "version": 3, "strides": None if contiguous else self.strides,
                "data": (self.data.ptr if self.size else 0, False)}


@pytest.fixture
def fake_cupy(monkeypatch):
    import contextlib
    import sys
    import types

    switches, current = [], [0]

    @contextlib.contextmanager
    def device(i):
        switches.append(i)
        current.append(i)
        yield
        current.pop()

    fake = types.SimpleNamespace(
        ndarray=FakeCupyArray, empty=lambda shape, dtype: FakeCupyArray(np.empty(shape, dtype), current[-1]),
        cuda=types.SimpleNamespace(Device=device, runtime=types.SimpleNamespace(getDevice=lambda: current[-1]),
                                   get_current_stream=lambda: types.SimpleNamespace(ptr=0)))
    monkeypatch.setitem(sys.modules, "cupy", fake)
    fake.switches = switches
    return fake


@pytest.mark.parametrize("name", [n for n in VIEWS if n != "bfloat16"])  # CuPy has no bfloat16
def test_cupy_fast_path_gives_the_interface_ref(fake_cupy, monkeypatch, name):
    x = FakeCupyArray(VIEWS[name], device=2)
    want = fields(Call()._cuda_tensor(x, "q"))
    generic = Call._cuda_tensor
    monkeypatch.setattr(Call, "_cuda_tensor", lambda *a: pytest.fail("the generic path was taken"))
    call = Call()
    assert fields(call.tensor(x, "q")) == want
    assert (call.cuda, call.device_index, call._keep[-1]) == (True, 2, x)
    monkeypatch.setattr(Call, "_cuda_tensor", generic)


def test_cupy_fast_path_hands_the_unusual_to_the_interface_path(fake_cupy):
    rec = np.zeros((4, 6), dtype=[("a", np.float32), ("b", np.int8)])
    raises(ValueError, "k", Call().tensor, FakeCupyArray(rec["a"][:, ::2]), "k")  # byte strides 10, 5
    raises(TypeError, "mask", Call().tensor, FakeCupyArray(np.zeros(3, np.int8)), "mask")


def test_cupy_outputs_switch_device_only_when_needed(fake_cupy):
    call = Call()
    call.tensor(FakeCupyArray(BASE, device=0), "q")
    out, ref = call.empty((2, 3), np.float32, "out")
    assert type(out) is FakeCupyArray and fake_cupy.switches == []
    assert (ref.shape, ref.strides, ref.device, ref.device_index) == ([2, 3], [3, 1], 1, 0)
    call = Call()
    call.tensor(FakeCupyArray(BASE, device=1), "q")
    out, ref = call.empty((4,), BFLOAT16, "lse")
    assert fake_cupy.switches == [1] and isinstance(out, _array.DeviceBF16)
    assert (ref.dtype, ref.shape, ref.device_index) == (3, [4], 1)
