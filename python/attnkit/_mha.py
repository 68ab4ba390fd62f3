"""The multi-head attention layer over every attnkit mechanism: MHAParams and multi_head_attention."""

from __future__ import annotations

import math

import numpy as np

from ._array import acc_dtype, as_bool, as_choice, as_int, astype, dtype_error, full, is_cuda_array
from ._dlpack import _is_foreign, dlpack_view

__all__ = ["MHAParams", "multi_head_attention", "MECHANISMS"]

# mechanism -> the options multi_head_attention passes on (besides q, k, v, causal and key_lengths)
MECHANISMS = {
    "exact": ("window", "mask", "bias", "scale", "softcap", "alibi_slopes"),
    "block_sparse": ("layout", "scale"),
    "lsh": ("num_buckets", "num_hashes", "seed", "scale"),
    "linear": ("feature_map", "normalize", "eps"),
    "performer": ("features", "num_features", "seed", "kernel", "scale", "eps"),
    "linformer": ("E", "F", "proj_len", "seed", "scale"),
    "dla": ("capacity", "lam", "tau", "log_decay", "score"),
}
_ROPE_KEYS = ("positions", "key_positions", "base", "rotary_dim", "interleaved")


class MHAParams:
    """Weights of a multi-head attention layer in PyTorch's ``nn.Linear`` convention: ``y = x @ w.T + b``
    with ``w [out_features, in_features]``.

    Parameters
    ----------
    w_q : array ``[Hq * D, E_q]``
    w_k : array ``[Hkv * D, E_k]``
    w_v : array ``[Hkv * Dv, E_v]``
    w_o : array ``[E_out, Hq * Dv]``
    b_q, b_k, b_v, b_o : arrays ``[out_features]`` or None

    The arrays are kept as given (no copy): NumPy for NumPy inputs, CuPy for CuPy inputs, PyTorch / JAX
    arrays too (read through DLPack at each call, bfloat16 CUDA tensors included). Shapes are
    checked here; how they split into heads is checked by :func:`multi_head_attention`.

    Raises
    ------
    TypeError
        A weight that is not an array, or a non-floating dtype.
    ValueError
        A weight that is not 2-D, a bias that is not 1-D with the weight's out_features, or
        ``w_o.shape[1]`` not equal to ``w_v.shape[0] * Hq / Hkv`` (checked at call time).
    """

    __slots__ = ("w_q", "w_k", "w_v", "w_o", "b_q", "b_k", "b_v", "b_o")

    def __init__(self, w_q, w_k, w_v, w_o, b_q=None, b_k=None, b_v=None, b_o=None):
        for name, w, b in (("q", w_q, b_q), ("k", w_k, b_k), ("v", w_v, b_v), ("o", w_o, b_o)):
            wv = _check_floating(w, f"w_{name}")
            if wv.ndim != 2:
                raise ValueError(f"w_{name} must be 2-D [out_features, in_features], got shape {tuple(wv.shape)}")
            if b is not None:
                bv = _check_floating(b, f"b_{name}")
                if tuple(bv.shape) != (wv.shape[0],):
                    raise ValueError(f"b_{name} must have shape ({wv.shape[0]},) (w_{name}'s out_features), "
                                     f"got {tuple(bv.shape)}")
            setattr(self, f"w_{name}", w)
            setattr(self, f"b_{name}", b)

    def __repr__(self):
        return (f"MHAParams(w_q={tuple(self.w_q.shape)}, w_k={tuple(self.w_k.shape)}, w_v={tuple(self.w_v.shape)}, "
                f"w_o={tuple(self.w_o.shape)}, biases={[n for n in 'qkvo' if getattr(self, 'b_' + n) is not None]})")


def _check_floating(x, name):
    """x checked to be a floating array; returns it (a NumPy / CuPy view of it for a DLPack array of another
    framework: PyTorch / JAX weights are kept as given and converted at each call)."""
    if _is_foreign(x):
        x = dlpack_view(x, name)
    if not (isinstance(x, np.ndarray) or is_cuda_array(x) or hasattr(x, "__array_interface__")):
        raise TypeError(f"{name} must be a NumPy or CuPy array, got {type(x).__name__}")
    if np.dtype(x.dtype).kind not in "fV":
        raise TypeError(f"{name} must be float32, float64, float16 or bfloat16, got {x.dtype}")
    if not np.dtype(x.dtype).isnative:  # '>f4': said as such, as every array argument (no silent copy)
        raise dtype_error(x.dtype, name)
    return x


def _xp(x):
    if is_cuda_array(x):
        import cupy

        return cupy
    return np


def _linear(x, w, b, name):
    """x @ w.T + b in x's dtype, accumulated in float32 (float64 for float64 x): NumPy's 16-bit matmuls
    are neither fast nor float32-accumulated, so 16-bit inputs are widened once and the result rounded."""
    xp = _xp(x)
    if x.shape[-1] != w.shape[1]:
        raise ValueError(f"{name} has in_features {w.shape[1]} but its input has {x.shape[-1]} features "
                         f"(input shape {tuple(x.shape)})")
    acc = np.float64 if x.dtype == np.float64 else np.float32
    # one 2-D GEMM over all tokens: NumPy runs a 3-D @ 2-D matmul as a loop of small products (5x slower)
    rows = math.prod(x.shape[:-1])  # not -1: a reshape cannot infer it for E = 0 features
    y = xp.matmul(x.reshape(rows, x.shape[-1]).astype(acc, copy=False), w.astype(acc, copy=False).T)
    if b is not None:
        y += b.astype(acc, copy=False)
    return astype(y, x.dtype).reshape(x.shape[:-1] + (w.shape[0],))  # bfloat16 on CUDA included


def _heads(y, B, S, H, name, wname):
    """[B, S, H*Dh] -> a strided [B, H, S, Dh] view (no copy)."""
    if y.shape[-1] % H:
        raise ValueError(f"{wname} has {y.shape[-1]} out_features, which {name} = {H} does not divide")
    return y.reshape(B, S, H, y.shape[-1] // H).transpose(0, 2, 1, 3)


def _rope_args(rope, Sq, Sk):
    """(query kwargs, key kwargs) of attnkit.rope from multi_head_attention's rope dict."""
    if not isinstance(rope, dict):
        raise TypeError(f"rope must be a dict of attnkit.rope's arguments or None, got {type(rope).__name__}")
    unknown = sorted(set(rope) - set(_ROPE_KEYS))
    if unknown:
        raise TypeError(f"rope has unknown key {unknown[0]!r}; its keys are {', '.join(_ROPE_KEYS)}")
    common = {k: rope[k] for k in ("base", "rotary_dim", "interleaved") if k in rope}
    qpos = rope.get("positions")
    kpos = rope.get("key_positions")
    if kpos is None:
        kpos = qpos if (qpos is not None and Sq == Sk) else np.arange(Sk, dtype=np.int64)
    if qpos is None:
        qpos = np.arange(Sq, dtype=np.int64) + max(Sk - Sq, 0)
    return dict(common, positions=qpos), dict(common, positions=kpos)


def _run_mechanism(mechanism, q, k, v, causal, key_lengths, options):
    from . import _dla, _exact, _linear, _sparse

    m = mechanism
    if m == "exact":
        return _exact.attention(q, k, v, causal=causal, key_lengths=key_lengths, **options)
    if m == "block_sparse":
        if "layout" not in options:
            raise TypeError("mechanism='block_sparse' needs the option layout (an attnkit.BlockLayout)")
        return _sparse.block_sparse_attention(q, k, v, causal=causal, key_lengths=key_lengths, **options)
    if m in ("lsh", "dla") and key_lengths is not None:
        raise ValueError(f"key_lengths is not supported with mechanism={m!r} (its kernel has no key padding); "
                         "pass sequences of equal length")
    if m == "lsh":
        if "num_buckets" not in options:
            raise TypeError("mechanism='lsh' needs the option num_buckets (even, >= 2)")
        return _sparse.lsh_attention(q, k, v, causal=causal, **options)
    if m == "linear":
        return _linear.linear_attention(q, k, v, causal=causal, key_lengths=key_lengths, **options)
    if m == "performer":
        opts = dict(options)
        features = opts.pop("features", None)
        num_features, seed = opts.pop("num_features", None), opts.pop("seed", 0)
        if features is None:
            features = _linear.random_features(256 if num_features is None else num_features, q.shape[-1], seed=seed,
                                               dtype=acc_dtype(q.dtype))
        elif num_features is not None:
            raise ValueError("pass either features or num_features to mechanism='performer', not both")
        return _linear.performer_attention(q, k, v, _xp(q).asarray(features), causal=causal,
                                           key_lengths=key_lengths, **opts)
    if m == "linformer":
        opts = dict(options)
        E, F = opts.pop("E", None), opts.pop("F", None)
        proj_len, seed = opts.pop("proj_len", None), opts.pop("seed", 0)
        if E is None:
            E = _linear.linformer_projection(256 if proj_len is None else proj_len, k.shape[2], seed=seed,
                                             dtype=acc_dtype(q.dtype))
        elif proj_len is not None:
            raise ValueError("pass either E or proj_len to mechanism='linformer', not both")
        if causal:
            opts["causal"] = causal  # linformer_attention explains why that is not defined
        xp = _xp(q)
        return _linear.linformer_attention(q, k, v, xp.asarray(E), None if F is None else xp.asarray(F),
                                           key_lengths=key_lengths, **opts)
    # dla
    if not causal:
        raise ValueError("mechanism='dla' is causal only (a recurrent state over the past): pass causal=True")
    opts = dict(options)
    if "capacity" not in opts:
        raise TypeError("mechanism='dla' needs the option capacity (states per head, >= 1)")
    lam = opts.pop("lam", None)
    if lam is None:
        B, H, T = q.shape[0], q.shape[1], q.shape[2]
        lam = full(q, (B, H, T, as_int(opts["capacity"], "capacity")), 1.0, q.dtype)
    y, _ = _dla.dynamic_linear_attention(q, k, v, lam, **opts)
    return y


def multi_head_attention(query, key, value, params, *, num_heads, num_kv_heads=None, key_lengths=None,
                         causal=False, rope=None, mechanism="exact", **options):
    """Multi-head attention (Vaswani et al. 2017) with any attnkit mechanism as its attention core.

    ``q = query @ w_q.T + b_q`` (likewise k, v), split into heads as strided views (``[B, S, H*D]`` ->
    ``[B, H, S, D]`` without a copy), optionally rotated by :func:`attnkit.rope`, attended with
    ``mechanism``, then ``out = concat_heads(attn) @ w_o.T + b_o``. Grouped-query attention with
    ``num_kv_heads < num_heads``: query head ``h`` reads kv head ``h // (num_heads // num_kv_heads)``.

    Parameters
    ----------
    query : array ``[B, Sq, E_q]`` (or ``[Sq, E_q]``)
        NumPy (CPU) or CuPy (GPU); float32, float64, float16 or ``ml_dtypes.bfloat16``. The projections
        use the input's array module, accumulate in float32 (float64 for float64) and are rounded to the
        input dtype, in which the attention runs.
    key, value : arrays ``[B, Sk, E_k]`` and ``[B, Sk, E_v]``, query's dtype and rank
        Self-attention passes the same array three times.
    params : MHAParams
    num_heads : int
        ``Hq >= 1``; ``w_q.shape[0]`` must be a multiple of it (``D = w_q.shape[0] / Hq``).
    num_kv_heads : int, optional
        ``Hkv`` (default ``Hq``), a divisor of ``Hq``; ``w_k.shape[0] = Hkv * D``.
    key_lengths : int array ``[B]`` or int, optional
        Valid keys per batch entry (right padding), for the mechanisms that support it (not ``"lsh"``,
        ``"dla"``).
    causal : bool
        Causal attention (``"linformer"`` rejects it, ``"dla"`` requires it).
    rope : dict, optional
        Rotary embedding of q and k after projection: :func:`attnkit.rope`'s ``base``, ``rotary_dim``,
        ``interleaved`` and ``positions`` (queries; default bottom-right aligned ``Sk - Sq + arange(Sq)``,
        or ``arange(Sq)`` when ``Sq > Sk``) and ``key_positions`` (keys; default ``positions`` when
        ``Sq == Sk``, else ``arange(Sk)``).
    mechanism : str
        ``"exact"`` (:func:`attnkit.attention`; options ``window, mask, bias, scale, softcap,
        alibi_slopes``), ``"block_sparse"`` (``layout`` required, ``scale``), ``"lsh"`` (``num_buckets``
        required, ``num_hashes, seed, scale``), ``"linear"`` (``feature_map, normalize, eps``),
        ``"performer"`` (``features``, or ``num_features`` (default 256) and ``seed``; ``kernel, scale,
        eps``), ``"linformer"`` (``E`` and ``F``, or ``proj_len`` (default 256) and ``seed``; ``scale``),
        ``"dla"`` (``capacity`` required; ``lam`` (default all ones), ``tau, log_decay, score``).
    **options
        Passed to the mechanism, as listed above.

    Returns
    -------
    array ``[B, Sq, E_out]`` (rank follows ``query``) in query's dtype.

    Raises
    ------
    ValueError
        Weights whose shapes do not fit the inputs or the head counts (e.g. ``w_q.shape[0]`` not
        divisible by ``num_heads``), an unknown mechanism, bad option values (from the mechanism).
    TypeError
        Non-array inputs or weights, an unknown option or rope key, a missing required option, dtypes or
        devices that differ.
    """
    if not isinstance(params, MHAParams):
        raise TypeError(f"params must be an attnkit.MHAParams, got {type(params).__name__}")
    mech = as_choice(mechanism, "mechanism", {m: m for m in MECHANISMS})
    unknown = sorted(set(options) - set(MECHANISMS[mech]))
    if unknown:
        raise TypeError(f"unknown option {unknown[0]!r} for mechanism={mech!r}; its options are "
                        f"{', '.join(MECHANISMS[mech])}")
    Hq = as_int(num_heads, "num_heads")
    Hkv = Hq if num_kv_heads is None else as_int(num_kv_heads, "num_kv_heads")
    if Hq < 1:
        raise ValueError(f"num_heads must be >= 1, got {Hq}")
    if Hkv < 1 or Hq % Hkv:
        raise ValueError(f"num_kv_heads must be >= 1 and divide num_heads = {Hq}, got {Hkv}")
    causal = as_bool(causal, "causal")
    arrays = {"query": query, "key": key, "value": value}
    for name, x in arrays.items():
        _check_floating(x, name)
    rank = query.ndim
    for name, x in arrays.items():
        if x.ndim not in (2, 3) or x.ndim != rank:
            raise ValueError(f"{name} must be 3-D [B, S, E] (or 2-D [S, E]) with query's rank {rank}, got shape "
                             f"{tuple(x.shape)}")
        if x.dtype != query.dtype:
            raise TypeError(f"{name} must have query's dtype {query.dtype}, got {x.dtype}")
    if rank == 2:
        query, key, value = query[None], key[None], value[None]
    B, Sq, Sk = query.shape[0], query.shape[1], key.shape[1]
    if key.shape[0] != B or value.shape[0] != B:
        raise ValueError(f"query, key and value must share the batch size, got {query.shape[0]}, {key.shape[0]}, "
                         f"{value.shape[0]}")
    if value.shape[1] != Sk:
        raise ValueError(f"key and value must have the same length, got Sk = {Sk} and {value.shape[1]}")
    P = params
    q = _heads(_linear(query, P.w_q, P.b_q, "w_q"), B, Sq, Hq, "num_heads", "w_q")
    k = _heads(_linear(key, P.w_k, P.b_k, "w_k"), B, Sk, Hkv, "num_kv_heads", "w_k")
    v = _heads(_linear(value, P.w_v, P.b_v, "w_v"), B, Sk, Hkv, "num_kv_heads", "w_v")
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(f"w_q gives a head dim of {q.shape[-1]} (w_q.shape[0] / num_heads) but w_k gives "
                         f"{k.shape[-1]} (w_k.shape[0] / num_kv_heads); they must match")
    if P.w_o.shape[1] != Hq * v.shape[-1]:
        raise ValueError(f"w_o must have in_features num_heads * Dv = {Hq * v.shape[-1]}, got shape "
                         f"{tuple(P.w_o.shape)}")
    if rope is not None:
        from ._positional import rope as _rope

        qa, ka = _rope_args(rope, Sq, Sk)
        q, k = _rope(q, **qa), _rope(k, **ka)
    out = _run_mechanism(mech, q, k, v, causal, key_lengths, options)       # [B, Hq, Sq, Dv]
    out = out.transpose(0, 2, 1, 3).reshape(B, Sq, Hq * out.shape[-1])    # concat heads
    y = _linear(out, P.w_o, P.b_o, "w_o")
    return y[0] if rank == 2 else y
