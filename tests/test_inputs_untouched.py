"""attnkit never writes its inputs: every public array function, called on read-only arrays, leaves
every input's bytes as they were (and a read-only input is no error)."""

from __future__ import annotations

import numpy as np
import pytest

import attnkit

RNG = np.random.default_rng(7)


def arr(*shape, dtype=np.float32):
    return RNG.standard_normal(shape).astype(dtype)


def _calls():
    q, k, v = arr(2, 4, 33, 16), arr(2, 2, 40, 16), arr(2, 2, 40, 8)
    mask, bias = RNG.random((33, 40)) < 0.8, arr(33, 40)
    lengths = np.array([40, 17])
    slopes = np.linspace(0.1, 0.4, 4)
    out, lse = attnkit.attention(q, k, v, return_lse=True, causal=True)
    dout = arr(*out.shape)
    layout = attnkit.layouts.bigbird(40, 8, seed=1, window_blocks=1, global_blocks=1, random_blocks=1)
    qs = arr(2, 4, 40, 16)
    bs_out, bs_lse = attnkit.block_sparse_attention(qs, k, v, layout, return_lse=True)
    w = attnkit.random_features(24, 16)
    e = attnkit.linformer_projection(12, 40)
    lf_out, lf_lse = attnkit.linformer_attention(q, k, v, e, return_lse=True)
    lam = np.abs(arr(2, 2, 40, 5))
    x = arr(2, 30, 32)
    params = attnkit.MHAParams(arr(32, 32), arr(32, 32), arr(32, 32), arr(32, 32), b_q=arr(32))
    return {
        "attention": (attnkit.attention, (q, k, v),
                      dict(mask=mask, bias=bias, key_lengths=lengths, alibi_slopes=slopes, causal=True)),
        "attention_weights": (attnkit.attention_weights, (q, k), dict(bias=bias, key_lengths=lengths)),
        "merge_attention": (attnkit.merge_attention, ([out, out], [lse, lse]), {}),
        "block_sparse_attention": (attnkit.block_sparse_attention, (qs, k, v, layout), dict(key_lengths=lengths)),
        "lsh_buckets": (attnkit.lsh_buckets, (q,), dict(num_buckets=4)),
        "lsh_attention": (attnkit.lsh_attention, (q, k, v), dict(num_buckets=4, num_hashes=2)),
        "linear_attention": (attnkit.linear_attention, (qs, k, v),
                             dict(initial_state=(np.abs(arr(2, 2, 16, 8)), np.abs(arr(2, 2, 16))))),
        "performer_attention": (attnkit.performer_attention, (qs, k, v, w), dict(key_lengths=lengths)),
        "linformer_attention": (attnkit.linformer_attention, (q, k, v, e), dict(key_lengths=lengths)),
        "dynamic_linear_attention": (attnkit.dynamic_linear_attention, (arr(2, 2, 40, 16), k, v, lam),
                                     dict(capacity=5, log_decay=-np.abs(arr(2, 2, 40)))),
        "rope": (attnkit.rope, (q,), dict(positions=np.arange(33) + 5)),
        "multi_head_attention": (attnkit.multi_head_attention, (x, x, x, params), dict(num_heads=4, causal=True)),
        "attention_backward": (attnkit.attention_backward, (dout, q, k, v, out, lse), dict(causal=True)),
        "block_sparse_attention_backward": (attnkit.block_sparse_attention_backward,
                                            (arr(*bs_out.shape), qs, k, v, bs_out, bs_lse, layout), {}),
        "linformer_attention_backward": (attnkit.linformer_attention_backward,
                                         (arr(*lf_out.shape), q, k, v, lf_out, lf_lse, e), {}),
        "linear_attention_backward": (attnkit.linear_attention_backward, (arr(2, 4, 40, 8), qs, k, v),
                                      dict(initial_state=(np.abs(arr(2, 2, 16, 8)), np.abs(arr(2, 2, 16))),
                                           dfinal_state=(arr(2, 2, 16, 8), arr(2, 2, 16)), key_lengths=lengths)),
        "performer_attention_backward": (attnkit.performer_attention_backward, (arr(2, 4, 40, 8), qs, k, v, w),
                                         dict(key_lengths=lengths, causal=True)),
    }


CALLS = _calls()


def _arrays(x):
    if isinstance(x, np.ndarray):
        yield x
    elif isinstance(x, (tuple, list)):
        for e in x:
            yield from _arrays(e)
    elif isinstance(x, dict):
        for e in x.values():
            yield from _arrays(e)
    elif isinstance(x, attnkit.MHAParams):
        for slot in type(x).__slots__:
            yield from _arrays(getattr(x, slot))


@pytest.mark.parametrize("name", sorted(CALLS))
def test_inputs_untouched(name):
    fn, args, kw = CALLS[name]
    inputs = list(_arrays(args)) + list(_arrays(kw))
    before = [a.tobytes() for a in inputs]
    for a in inputs:
        a.setflags(write=False)
    try:
        fn(*args, **kw)
    finally:
        for a in inputs:
            a.setflags(write=True)
    assert [a.tobytes() for a in inputs] == before


def test_every_public_array_function_is_covered():
    """A new public function needs a row here."""
    tables = {"random_features", "linformer_projection", "sinusoidal_positions", "alibi_slopes"}  # no array input
    other = {"BlockLayout", "DLAAux", "DLACache", "MHAParams", "__version__", "get_num_threads", "set_num_threads",
             "info", "layouts"}
    assert set(attnkit.__all__) - tables - other == set(CALLS)
