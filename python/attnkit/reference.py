"""Float64 NumPy oracles of every attnkit function, written for clarity rather than speed.

They implement the contract (``shared/specs/api.md`` and the README's semantics table) literally:
explicit masks, explicit GQA head repetition, explicit loops where they make the math obvious. They
never call the compiled core, take NumPy arrays of any float dtype (``ml_dtypes.bfloat16`` included),
compute in float64 and return float64. Users may test their own kernels against them.
"""

from __future__ import annotations

import numpy as np

__all__ = ["attention", "attention_weights", "merge_attention", "allowed_mask", "scores"]


def _f64(x, dtype=np.float64):
    return np.asarray(x).astype(dtype)


def _to4(x, dtype=np.float64):
    """[S, D] / [H, S, D] / [B, H, S, D] -> 4-D, and the original rank."""
    x = _f64(x, dtype)
    if x.ndim not in (2, 3, 4):
        raise ValueError(f"expected a 2-D, 3-D or 4-D array, got shape {x.shape}")
    return x.reshape((1,) * (4 - x.ndim) + x.shape), x.ndim


def _repeat_kv(x, hq):
    """GQA: kv head h // (Hq // Hkv) serves query head h."""
    return np.repeat(x, hq // x.shape[1], axis=1)


def allowed_mask(B, Hq, Sq, Sk, *, causal=False, window=None, mask=None, key_lengths=None):
    """Boolean ``[B, Hq, Sq, Sk]``: which key each query may attend to (before bias / -inf scores)."""
    a = Sk - Sq
    i = np.arange(Sq)[:, None]
    j = np.arange(Sk)[None, :]
    ok = np.ones((B, Hq, Sq, Sk), dtype=bool)
    if causal:
        ok &= j <= i + a
    if window is not None:
        left, right = window
        if left is not None and left >= 0:
            ok &= j >= i + a - left
        if right is not None and right >= 0:
            ok &= j <= i + a + right
    if key_lengths is not None:
        lens = np.broadcast_to(np.asarray(key_lengths).astype(np.int64), (B,))
        for b in range(B):
            ok[b, :, :, lens[b]:] = False
    if mask is not None:
        ok &= np.broadcast_to(np.asarray(mask, dtype=bool), (B, Hq, Sq, Sk))
    return ok


def scores(q, k, *, scale=None, softcap=None, bias=None, alibi_slopes=None, _dtype=np.float64):
    """The score tensor ``[B, Hq, Sq, Sk]`` before masking: scale, softcap, then bias and ALiBi."""
    q4, _ = _to4(q, _dtype)
    k4, _ = _to4(k, _dtype)
    B, Hq, Sq, D = q4.shape
    Sk = k4.shape[2]
    if scale is None:
        scale = 1.0 / np.sqrt(D)
    s = (q4 @ _repeat_kv(k4, Hq).swapaxes(-1, -2)) * scale
    if softcap:
        s = softcap * np.tanh(s / softcap)
    if bias is not None:
        s = s + np.broadcast_to(_f64(bias, _dtype), (B, Hq, Sq, Sk))
    if alibi_slopes is not None:
        slopes = np.broadcast_to(_f64(alibi_slopes, _dtype), (B, Hq))
        dist = np.abs(np.arange(Sq)[:, None] + (Sk - Sq) - np.arange(Sk)[None, :])
        s = s - slopes[:, :, None, None] * dist.astype(_dtype)
    return s.astype(_dtype)


def _softmax_rows(s, ok):
    """Masked softmax over the last axis with the contract's empty-row rule (-inf scores count as
    masked). Returns (p, lse)."""
    s = np.where(ok, s, -np.inf)
    m = s.max(axis=-1, keepdims=True, initial=-np.inf)
    empty = ~np.isfinite(m) & (m < 0)  # every key masked (or -inf)
    m_safe = np.where(empty, 0.0, m).astype(s.dtype)
    e = np.where(ok, np.exp(s - m_safe), 0.0).astype(s.dtype)
    tot = e.sum(axis=-1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        p = np.where(empty, 0.0, e / np.where(empty, 1.0, tot))
        lse = np.where(empty, -np.inf, np.log(np.where(empty, 1.0, tot)) + m_safe)[..., 0]
    return p, lse


def attention_weights(q, k, *, causal=False, window=None, mask=None, bias=None, key_lengths=None, scale=None,
                      softcap=None, alibi_slopes=None):
    """Oracle of :func:`attnkit.attention_weights`: ``[B, Hq, Sq, Sk]`` probabilities (rank follows q)."""
    q4, rank = _to4(q)
    k4, _ = _to4(k)
    B, Hq, Sq, _ = q4.shape
    Sk = k4.shape[2]
    s = scores(q4, k4, scale=scale, softcap=softcap, bias=bias, alibi_slopes=alibi_slopes)
    ok = allowed_mask(B, Hq, Sq, Sk, causal=causal, window=window, mask=mask, key_lengths=key_lengths)
    p, _ = _softmax_rows(s, ok)
    return p.reshape(p.shape[4 - rank:])


def attention(q, k, v, *, causal=False, window=None, mask=None, bias=None, key_lengths=None, scale=None,
              softcap=None, alibi_slopes=None, return_lse=False, _dtype=np.float64):
    """Oracle of :func:`attnkit.attention` (float64 result, rank follows q)."""
    q4, rank = _to4(q, _dtype)
    k4, _ = _to4(k, _dtype)
    v4, _ = _to4(v, _dtype)
    B, Hq, Sq, _ = q4.shape
    Sk = k4.shape[2]
    s = scores(q4, k4, scale=scale, softcap=softcap, bias=bias, alibi_slopes=alibi_slopes, _dtype=_dtype)
    ok = allowed_mask(B, Hq, Sq, Sk, causal=causal, window=window, mask=mask, key_lengths=key_lengths)
    p, lse = _softmax_rows(s, ok)
    out = p @ _repeat_kv(v4, Hq)
    out = out.reshape(out.shape[4 - rank:])
    lse = lse.reshape(lse.shape[4 - rank:])
    return (out, lse) if return_lse else out


def merge_attention(outs, lses):
    """Oracle of :func:`attnkit.merge_attention`: returns (out, lse) in float64."""
    outs = [_f64(o) for o in outs]
    lses = [_f64(x) for x in lses]
    lse = np.full(lses[0].shape, -np.inf)
    for x in lses:
        lse = np.logaddexp(lse, x)
    out = np.zeros(outs[0].shape)
    empty = np.isneginf(lse)
    for o, x in zip(outs, lses):
        with np.errstate(invalid="ignore"):
            w = np.where(np.isneginf(x) | empty, 0.0, np.exp(x - np.where(empty, 0.0, lse)))
        out += w[..., None] * np.where(np.isneginf(x)[..., None], 0.0, o)
    return out, lse
