"""Property tests of the exact family (attention, attention_weights, merge_attention): random shapes,
strides, dtypes and masking options either match the oracle or raise a clear ValueError/TypeError naming
the argument — never a crash or garbage. The other mechanisms' property tests live in their own files."""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import attnkit
from attnkit import reference as ref

from conftest import DTYPES, assert_close, broken_call, naive_dtype

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def strided(rng, shape, dtype, data):
    """An array of `shape` as a view with random slicing / reversal / transposition."""
    step = [data.draw(st.sampled_from([1, 1, 2])) for _ in shape]
    base = rng.standard_normal(tuple(s * t + 1 for s, t in zip(shape, step))).astype(dtype)
    view = base[tuple(slice(1, 1 + s * t, t) for s, t in zip(shape, step))]
    if data.draw(st.booleans()):
        view = view[..., ::-1, :]
    if data.draw(st.booleans()) and len(shape) == 4:  # a BSHD-style buffer read as BHSD
        b = np.ascontiguousarray(view.transpose(0, 2, 1, 3))
        view = b.transpose(0, 2, 1, 3)
    assert view.shape == tuple(shape)
    return view


def draw_masking(data, rng, B, Hq, Sq, Sk):
    """Random masking arguments of attention (each present or not): causal, window, mask, bias,
    key_lengths, ALiBi slopes, softcap."""
    kw = {}
    if data.draw(st.booleans()):
        kw["causal"] = True
    if data.draw(st.booleans()):
        kw["window"] = (data.draw(st.integers(-1, 40)), data.draw(st.integers(-1, 40)))
    if data.draw(st.booleans()):
        kw["mask"] = rng.random((B, 1, Sq, Sk)) < 0.7
    if data.draw(st.booleans()):
        kw["bias"] = rng.standard_normal((Sq, Sk)).astype(np.float32)
    if data.draw(st.booleans()):
        kw["key_lengths"] = rng.integers(0, Sk + 1, B)
    if data.draw(st.booleans()):
        kw["alibi_slopes"] = rng.uniform(0, 0.3, Hq)
    if data.draw(st.booleans()):
        kw["softcap"] = data.draw(st.sampled_from([1.0, 10.0]))
    return kw


@SETTINGS
@given(data=st.data())
def test_random_problems(data):
    rng = np.random.default_rng(data.draw(st.integers(0, 2**31)))
    dtype = data.draw(st.sampled_from(DTYPES))
    B = data.draw(st.integers(1, 2))
    Hkv = data.draw(st.integers(1, 3))
    G = data.draw(st.integers(1, 3))
    Sq = data.draw(st.integers(0, 70))
    Sk = data.draw(st.integers(0, 90))
    D = data.draw(st.integers(1, 70))
    Dv = data.draw(st.integers(1, 40))
    q = strided(rng, (B, Hkv * G, Sq, D), dtype, data)
    k = strided(rng, (B, Hkv, Sk, D), dtype, data)
    v = strided(rng, (B, Hkv, Sk, Dv), dtype, data)
    kw = draw_masking(data, rng, B, Hkv * G, Sq, Sk)
    out, lse = attnkit.attention(q, k, v, return_lse=True, **kw)
    r_out, r_lse = ref.attention(q, k, v, return_lse=True, **kw)
    n_out, n_lse = ref.attention(q, k, v, return_lse=True, _dtype=naive_dtype(dtype), **kw)
    assert_close(out, r_out, n_out, dtype)
    assert_close(lse, r_lse, n_lse, lse.dtype, what="lse")


@SETTINGS
@given(data=st.data())
def test_bad_shapes_raise_cleanly(data):
    """Arbitrary (often inconsistent) shapes: a result or ValueError/TypeError, nothing else."""
    rng = np.random.default_rng(data.draw(st.integers(0, 2**31)))
    dims = st.lists(st.integers(0, 5), min_size=1, max_size=5)
    q = rng.standard_normal(data.draw(dims)).astype(np.float32)
    k = rng.standard_normal(data.draw(dims)).astype(np.float32)
    v = rng.standard_normal(data.draw(dims)).astype(np.float32)
    mask = rng.random(data.draw(dims)) < 0.5 if data.draw(st.booleans()) else None
    try:
        out = attnkit.attention(q, k, v, mask=mask)
    except (ValueError, TypeError):
        return
    assert out.shape == q.shape[:-1] + (v.shape[-1],)
    assert not np.isnan(out).any()
    np.testing.assert_allclose(out, ref.attention(q, k, v, mask=mask), atol=1e-5)


@SETTINGS
@given(data=st.data())
def test_attention_weights_random_problems(data):
    """Random shapes, strides, dtypes and masking: the oracle's probabilities, or an error naming the
    argument that was broken."""
    rng = np.random.default_rng(data.draw(st.integers(0, 2**31)))
    dtype = data.draw(st.sampled_from(DTYPES))
    B, Hkv, G = data.draw(st.integers(1, 2)), data.draw(st.integers(1, 3)), data.draw(st.integers(1, 2))
    Sq, Sk, D = data.draw(st.integers(0, 40)), data.draw(st.integers(0, 50)), data.draw(st.integers(1, 40))
    Hq = Hkv * G
    args = dict(q=strided(rng, (B, Hq, Sq, D), dtype, data), k=strided(rng, (B, Hkv, Sk, D), dtype, data),
                **draw_masking(data, rng, B, Hq, Sq, Sk))
    f32 = np.float32
    breaks = [("q", args["q"].astype(np.int32), "q"), ("k", np.zeros((B, Hq + 1, Sk, D), dtype), "k"),
              ("k", np.zeros((B, Hkv, Sk, D + 1), dtype), "k"), ("mask", np.ones((B, 1, Sq + 2, Sk), bool), "mask"),
              ("bias", np.zeros((Sq, Sk + 2), f32), "bias"), ("key_lengths", np.full(B + 1, Sk), "key_lengths"),
              ("key_lengths", np.full(B, Sk + 1), "key_lengths"), ("alibi_slopes", np.ones(Hq + 1), "alibi_slopes"),
              ("scale", float("nan"), "scale"), ("softcap", -1.0, "softcap"), ("window", 3, "window"),
              ("causal", "yes", "causal")]
    if broken_call(data, attnkit.attention_weights, args, breaks):
        return
    w = attnkit.attention_weights(**args)
    assert w.dtype == dtype
    assert_close(w, ref.attention_weights(**args), ref.attention_weights(**args, _dtype=naive_dtype(dtype)), dtype,
                 what="weights")


@SETTINGS
@given(data=st.data())
def test_merge_attention_random_problems(data):
    """Attention over random splits of the keys, merged: equals the merge oracle (attention over all the
    keys is the naive baseline of the tolerance); mismatched parts raise an error naming them."""
    rng = np.random.default_rng(data.draw(st.integers(0, 2**31)))
    dtype = data.draw(st.sampled_from(DTYPES))
    B, H, Sq, D = data.draw(st.integers(1, 2)), data.draw(st.integers(1, 3)), data.draw(st.integers(0, 20)), 8
    Sk = data.draw(st.integers(0, 40))
    q, k, v = (strided(rng, s, dtype, data) for s in ((B, H, Sq, D), (B, H, Sk, D), (B, H, Sk, D)))
    cuts = sorted(data.draw(st.lists(st.integers(0, Sk), min_size=0, max_size=3)))
    parts = [attnkit.attention(q, k[:, :, a:b], v[:, :, a:b], return_lse=True)
             for a, b in zip([0] + cuts, cuts + [Sk])]
    args = dict(outs=[o for o, _ in parts], lses=[lse for _, lse in parts])
    o0, l0 = parts[0]
    breaks = [("outs", [], "outs"), ("lses", args["lses"] + [l0], "lses"),
              ("outs", args["outs"][:-1] + [o0.astype(np.int32)], f"outs[{len(parts) - 1}]"),
              ("lses", [np.zeros((B, H, Sq + 1), l0.dtype)] + args["lses"][1:], "lses[0]"),
              ("lses", [l0.astype(np.float16)] + args["lses"][1:], "lses[0]")]
    if broken_call(data, attnkit.merge_attention, args, breaks):
        return
    out, lse = attnkit.merge_attention(**args)
    r_out, r_lse = ref.merge_attention(**args)
    n_out, n_lse = ref.attention(q, k, v, return_lse=True, _dtype=naive_dtype(dtype))
    assert_close(out, r_out, n_out, dtype)
    assert_close(lse, r_lse, n_lse, lse.dtype, what="lse")


# Where each public function's property test lives ("equals the oracle or raises ValueError / TypeError").
# The fuzz harness is the property test of the layouts, block-sparse and LSH attention: its draws include
# invalid arguments of every kind, and its valid results are checked against the oracle.
PROPERTY_TESTS = {
    "attention": "test_properties.py::test_random_problems",
    "attention_weights": "test_properties.py::test_attention_weights_random_problems",
    "merge_attention": "test_properties.py::test_merge_attention_random_problems",
    "attention_backward": "test_backward.py::test_random_problems",
    "block_sparse_attention_backward": "test_backward_properties.py::test_block_sparse_backward_random_problems",
    "linformer_attention_backward": "test_backward_properties.py::test_linformer_backward_random_problems",
    "linear_attention_backward": "test_linear_backward.py::test_random_problems",
    "performer_attention_backward": "test_linear_backward.py::test_random_problems",
    "BlockLayout": "fuzz/test_fuzz.py::test_fuzz_layouts",
    "block_sparse_attention": "fuzz/test_fuzz.py::test_fuzz_block_sparse",
    "lsh_buckets": "fuzz/test_fuzz.py::test_fuzz_lsh",
    "lsh_attention": "fuzz/test_fuzz.py::test_fuzz_lsh",
    "dynamic_linear_attention": "test_dla.py::test_random_problems_float64",
    "linear_attention": "test_linear.py::test_random_problems",
    "random_features": "test_performer.py::test_random_features_random_arguments",
    "performer_attention": "test_performer.py::test_performer_random_problems",
    "linformer_projection": "test_linformer.py::test_projection_random_arguments",
    "linformer_attention": "test_linformer.py::test_attention_random_problems",
    "rope": "test_positional.py::test_rope_random_problems",
    "sinusoidal_positions": "test_positional.py::test_sinusoidal_random_arguments",
    "alibi_slopes": "test_positional.py::test_alibi_slopes_random_arguments",
    "MHAParams": "test_mha.py::test_random_problems",
    "multi_head_attention": "test_mha.py::test_random_problems",
    "set_num_threads": "fuzz/test_fuzz.py::test_fuzz_threads",
    **{f"layouts.{name}": "fuzz/test_fuzz.py::test_fuzz_layouts" for name in attnkit.layouts.__all__},
}
# No property test yet.
PENDING: set = set()


def test_every_public_function_has_a_property_test():
    """A new public function needs a property test, named here."""
    from pathlib import Path

    # no arguments, or result classes (a DLACache goes back in through dynamic_linear_attention's test)
    no_arguments = {"get_num_threads", "info", "__version__", "layouts", "DLACache", "DLAAux"}
    public = set(attnkit.__all__) - no_arguments | {f"layouts.{n}" for n in attnkit.layouts.__all__}
    assert public - PENDING == set(PROPERTY_TESTS)
    here = Path(__file__).parent
    for name, where in PROPERTY_TESTS.items():
        path, test = where.split("::")
        assert f"def {test}(" in (here / path).read_text(), f"{name}: {where} does not exist"
