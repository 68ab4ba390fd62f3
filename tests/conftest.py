"""Shared test helpers: seeded data in every dtype, the FlashAttention-style tolerance rule, output
poisoning."""

from __future__ import annotations

import os

import ml_dtypes
import numpy as np
import pytest

from attnkit import _array

BF16 = np.dtype(ml_dtypes.bfloat16)
DTYPES = [np.dtype(np.float32), np.dtype(np.float64), np.dtype(np.float16), BF16]
DTYPE_IDS = ["f32", "f64", "f16", "bf16"]

# atol of the tolerance rule, per dtype: covers the rounding of the output itself
ATOL = {np.dtype(np.float32): 2e-6, np.dtype(np.float64): 1e-12, np.dtype(np.float16): 2e-3, BF16: 1.6e-2}

BASE_SEED = int(os.environ.get("ATTNKIT_TEST_SEED", "20261122"))


def pytest_report_header(config):
    import attnkit

    return [f"attnkit {attnkit.__version__}: {attnkit.info()}; ATTNKIT_TEST_SEED={BASE_SEED}"]


@pytest.fixture
def rng(request):
    """A generator seeded from ATTNKIT_TEST_SEED and the test's name (printed on failure)."""
    seed = (BASE_SEED + sum(map(ord, request.node.nodeid))) % (2**32)
    print(f"seed={seed}")
    return np.random.default_rng(seed)


@pytest.fixture(autouse=True)
def poison_outputs(monkeypatch):
    """Every output attnkit allocates starts as NaN (floats) / a sentinel, so an element the kernel
    forgets to write shows up."""
    orig = _array.Call.empty

    def poisoned(self, shape, dtype, name="out"):
        arr, ref = orig(self, shape, dtype, name)
        if np.dtype(dtype).kind == "f" or np.dtype(dtype) == BF16:
            arr[...] = np.nan
        else:
            arr[...] = -123456789
        return arr, ref

    monkeypatch.setattr(_array.Call, "empty", poisoned)


def raises(exc, name, fn, *a, **kw):
    """fn(*a, **kw) must raise exc whose message names `name` as a whole word (the argument's full name:
    "k" does not match inside "key_lengths"); returns the error."""
    import re

    with pytest.raises(exc) as e:
        fn(*a, **kw)
    msg = str(e.value)
    assert re.search(r"(?<![\w.])" + re.escape(name) + r"(?!\w)", msg), f"{name!r} not a word of {msg!r}"
    return e.value


ERRORS = (ValueError, TypeError)


def broken_call(data, fn, args, breaks):
    """The error half of a property test ("equals the oracle or raises ValueError / TypeError naming the
    argument"). Most draws return False: the caller checks ``fn(**args)`` against the oracle. Otherwise one
    of ``breaks``, ``(argument, bad value, the name the message must hold)``, replaces that argument and
    ``fn`` must raise ValueError or TypeError naming it (a whole word); returns True."""
    from hypothesis import strategies as st

    # (a wide integer, reduced: hypothesis draws small integers far more often than others)
    i = data.draw(st.integers(0, 2**32 - 1), label="break") % (3 * len(breaks))
    if i >= len(breaks):  # two draws in three: the valid call
        return False
    arg, value, name = breaks[i]
    raises(ERRORS, name, fn, **dict(args, **{arg: value}))
    return True


def _result_bytes(x) -> bytes:
    """The bits of a result: arrays, and the arrays inside tuples, lists and dataclasses (DLACache)."""
    import dataclasses

    if isinstance(x, np.ndarray):
        return x.tobytes()
    if dataclasses.is_dataclass(x):
        return b"".join(_result_bytes(getattr(x, f.name)) for f in dataclasses.fields(x))
    if isinstance(x, (tuple, list)):
        return b"".join(_result_bytes(e) for e in x)
    return repr(x).encode()


def assert_thread_invariant(fn, threads=(1, 2, 3)):
    """fn() gives the same bits with every thread count in `threads` (the determinism rule); returns
    the result of the first."""
    import attnkit

    old = attnkit.get_num_threads()
    results = []
    try:
        for t in threads:
            attnkit.set_num_threads(t)
            results.append(fn())
    finally:
        attnkit.set_num_threads(old)
    first = _result_bytes(results[0])
    for t, r in zip(threads[1:], results[1:]):
        assert _result_bytes(r) == first, f"{t} threads give other bits than {threads[0]}"
    return results[0]


# avx512bf16: AVX-512 plus vdpbf16ps for bfloat16 exact attention (other kernels run their AVX-512 build)
ISA_ORDER = ["generic", "avx2", "avx512", "avx512bf16"]


def run_in_isa(isa, script, tmp_path, inputs=None, cases=None):
    """Runs `script` in a subprocess whose CPU kernels are lowered to `isa` (ATTNKIT_CPU_ISA; the family is
    chosen once per process) and returns the arrays it saved with np.savez to sys.argv[-1] (which must
    include isa = attnkit.info()["cpu_isa"]). `inputs` (arrays) are saved to a file passed as
    sys.argv[1]; `cases` is prepended as ``CASES = ...``. Skips when this CPU cannot run `isa`."""
    import subprocess
    import sys

    import attnkit

    native = attnkit.info()["cpu_isa"]
    if ISA_ORDER.index(isa) > ISA_ORDER.index(native):
        pytest.skip(f"this CPU runs {native}, not {isa}")
    argv = []
    if inputs is not None:
        np.savez(tmp_path / "in.npz", **inputs)
        argv.append(str(tmp_path / "in.npz"))
    argv.append(str(tmp_path / "out.npz"))
    code = (f"CASES = {cases!r}\n" if cases is not None else "") + script
    subprocess.run([sys.executable, "-c", code, *argv], check=True, env=dict(os.environ, ATTNKIT_CPU_ISA=isa))
    res = np.load(tmp_path / "out.npz")
    assert str(res["isa"]) == isa
    return res


def saved_kwargs(res, n):
    """The keyword arguments a run_in_isa script saved for case n as arrays named "{n}_kw_{name}", back
    as the values the call took (window a tuple, scalars floats, causal a bool)."""
    kw = {key[len(f"{n}_kw_"):]: res[key] for key in res.files if key.startswith(f"{n}_kw_")}
    kw = {key: (tuple(val) if key == "window" else (float(val) if val.ndim == 0 else val)) for key, val in kw.items()}
    if "causal" in kw:
        kw["causal"] = bool(kw["causal"])
    return kw


def tuned(fn, option):
    """fn with a test-only keyword ``_chunk_size`` that runs it under the backend tuning option ``option``
    (attnkit._tuning): every chunked / token-by-token path can be compared with the others."""
    from attnkit._tuning import tuning

    def call(*args, _chunk_size=None, **kw):
        if _chunk_size is None:
            return fn(*args, **kw)
        with tuning(**{option: _chunk_size}):
            return fn(*args, **kw)

    return call


def randn(rng, shape, dtype, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(dtype)


def magnitude(x):
    """max(1, max |x|) over the finite entries: the atol_scale of sums."""
    x = to_f64(x)
    return max(1.0, float(np.abs(x[np.isfinite(x)]).max(initial=0.0)))


def to_f64(x):
    return np.asarray(x).astype(np.float64)


def naive_dtype(dtype):
    """Precision of the 'naive' baseline: the same-precision plain NumPy computation (float32 for the
    16-bit types, whose NumPy arithmetic is not a meaningful baseline)."""
    return np.float64 if np.dtype(dtype) == np.float64 else np.float32


def assert_close(out, ref, naive, dtype, what="out", atol_scale=1.0):
    """FlashAttention's rule: max|out - ref| <= 2 * max|naive - ref| + atol, NaN/Inf checked first.
    naive is rounded to the output dtype, like attnkit's own result. atol_scale scales atol for results
    that are sums far from unit size (linear-attention states, unnormalized outputs)."""
    out = to_f64(out)
    ref = to_f64(ref)
    naive = to_f64(np.asarray(naive).astype(dtype) if np.dtype(dtype) != np.float64 else naive)
    assert out.shape == ref.shape, (what, out.shape, ref.shape)
    fin_ref = np.isfinite(ref)
    assert not np.isnan(out).any(), f"{what}: NaN in result"
    assert np.array_equal(np.isfinite(out), fin_ref), f"{what}: infinities differ from the oracle"
    assert np.array_equal(out[~fin_ref], ref[~fin_ref]), f"{what}: infinite entries differ"
    if fin_ref.any():
        err = np.abs(out[fin_ref] - ref[fin_ref]).max()
        base = np.abs(naive[fin_ref] - ref[fin_ref]).max()
        tol = 2 * base + ATOL[np.dtype(dtype)] * atol_scale
        assert err <= tol, f"{what}: max error {err:.3g} > tolerance {tol:.3g} (naive error {base:.3g})"
