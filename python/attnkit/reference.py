"""Float64 NumPy oracles of every attnkit function, written for clarity rather than speed.

They implement the contract (``shared/specs/api.md`` and the README's semantics table) literally:
explicit masks, explicit GQA head repetition, explicit loops where they make the math obvious. They
never call the compiled core, take NumPy arrays of any float dtype (``ml_dtypes.bfloat16`` included),
compute in float64 and return float64. Users may test their own kernels against them.
"""

from __future__ import annotations

import numpy as np

__all__ = ["attention", "attention_weights", "merge_attention", "allowed_mask", "scores", "block_mask",
           "block_sparse_attention", "philox4x32_10", "normal", "lsh_rotations", "lsh_buckets", "lsh_attention",
           "dynamic_linear_attention"]


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


# --------------------------------------------------------------------------------------- block-sparse
def block_mask(layout, Sq, Sk, Hq=None):
    """Element mask ``[H, Sq, Sk]`` of a BlockLayout (``H`` = layout heads, or ``Hq`` to broadcast):
    ``blocks[h, i // bq, j // bk]``, built from the CSR arrays directly."""
    bq, bk = layout.block_size
    heads = layout.num_heads
    nqb, nkb = layout.num_blocks
    dense = np.zeros((heads * nqb, nkb), dtype=bool)
    rp, ci = np.asarray(layout.row_ptr), np.asarray(layout.col_idx)
    for row in range(heads * nqb):
        dense[row, ci[rp[row]:rp[row + 1]]] = True
    dense = dense.reshape(heads, nqb, nkb)
    m = dense[:, np.arange(Sq) // bq][:, :, np.arange(Sk) // bk]
    if Hq is not None and heads == 1:
        m = np.broadcast_to(m, (Hq, Sq, Sk))
    return m


def block_sparse_attention(q, k, v, layout, *, causal=False, scale=None, key_lengths=None, return_lse=False,
                           _dtype=np.float64):
    """Oracle of :func:`attnkit.block_sparse_attention`: the exact oracle with the expanded block mask."""
    q4, _ = _to4(q)
    Hq, Sq = q4.shape[1], q4.shape[2]
    Sk = np.asarray(k).shape[-2]
    mask = block_mask(layout, Sq, Sk, Hq)
    return attention(q, k, v, causal=causal, mask=mask, scale=scale, key_lengths=key_lengths, return_lse=return_lse,
                     _dtype=_dtype)


# ------------------------------------------------------------------------------------- random numbers
_M0, _M1, _W0, _W1 = np.uint64(0xD2511F53), np.uint64(0xCD9E8D57), 0x9E3779B9, 0xBB67AE85
_MASK32 = np.uint64(0xFFFFFFFF)


def philox4x32_10(counter, seed):
    """Philox4x32-10 of ``counter`` (uint array ``[..., 4]``) under the 64-bit ``seed`` (key = its low and
    high 32-bit halves), as attnkit's C++ generator (``attnkit/math/random.h``)."""
    c = [np.asarray(counter, dtype=np.uint64)[..., i] & _MASK32 for i in range(4)]
    k0, k1 = seed & 0xFFFFFFFF, (seed >> 32) & 0xFFFFFFFF
    for r in range(10):
        if r:
            k0, k1 = (k0 + _W0) & 0xFFFFFFFF, (k1 + _W1) & 0xFFFFFFFF
        p0, p1 = _M0 * c[0], _M1 * c[2]
        hi0, lo0 = p0 >> np.uint64(32), p0 & _MASK32
        hi1, lo1 = p1 >> np.uint64(32), p1 & _MASK32
        c = [hi1 ^ c[1] ^ np.uint64(k0), lo1, hi0 ^ c[3] ^ np.uint64(k1), lo0]
    return np.stack(c, axis=-1).astype(np.uint32)


def normal(seed, stream, n):
    """The first ``n`` standard normal numbers of Philox stream ``stream`` under ``seed`` (float64 Box-Muller
    on 53-bit uniforms, as ``attnkit::math::normal``)."""
    i = np.arange(n, dtype=np.uint64)
    block = i >> np.uint64(1)
    ctr = np.stack([block & _MASK32, block >> np.uint64(32), np.full_like(block, stream & 0xFFFFFFFF),
                    np.full_like(block, stream >> 32)], axis=-1)
    w = philox4x32_10(ctr, seed).astype(np.uint64)
    u1 = (((w[:, 0] << np.uint64(21)) ^ (w[:, 1] >> np.uint64(11))).astype(np.float64) + 1.0) * 2.0**-53
    u2 = ((w[:, 2] << np.uint64(21)) ^ (w[:, 3] >> np.uint64(11))).astype(np.float64) * 2.0**-53
    r = np.sqrt(-2.0 * np.log(u1))
    t = 2.0 * np.pi * u2
    return np.where((i & np.uint64(1)) == 1, r * np.sin(t), r * np.cos(t))


STREAM_LSH = 0x4C534832 << 32


# ------------------------------------------------------------------------------------------------- LSH
def lsh_rotations(D, num_buckets, num_hashes, seed):
    """The rotations ``R_r: [D, num_buckets / 2]`` of every round, ``[num_hashes, D, num_buckets / 2]``."""
    half = num_buckets // 2
    return np.stack([normal(seed, STREAM_LSH + r, D * half).reshape(D, half) for r in range(num_hashes)])


def lsh_buckets(x, *, num_buckets, num_hashes=1, seed=0):
    """Oracle of :func:`attnkit.lsh_buckets`: ``argmax([x R_r, -x R_r])`` in float64."""
    x = _f64(x)
    rot = lsh_rotations(x.shape[-1], num_buckets, num_hashes, seed)
    proj = np.einsum("...sd,rdc->...rsc", x, rot)
    return np.argmax(np.concatenate([proj, -proj], axis=-1), axis=-1).astype(np.int32)


def lsh_attention(q, k, v, *, num_buckets, num_hashes=1, seed=0, causal=False, scale=None, return_lse=False,
                  _dtype=np.float64):
    """Oracle of :func:`attnkit.lsh_attention`: per round, exact attention with the mask "same bucket",
    then the rounds merged with :func:`merge_attention`."""
    q4, rank = _to4(q)
    k4, _ = _to4(k)
    v4, _ = _to4(v)
    Hq, Hkv = q4.shape[1], k4.shape[1]
    bq = lsh_buckets(q4, num_buckets=num_buckets, num_hashes=num_hashes, seed=seed)  # [B, Hq, R, Sq]
    bk = _repeat_kv(lsh_buckets(k4, num_buckets=num_buckets, num_hashes=num_hashes, seed=seed), Hq)
    outs, lses = [], []
    for r in range(num_hashes):
        mask = bq[:, :, r, :, None] == bk[:, :, r, None, :]
        o, l = attention(q4, k4, v4, causal=causal, mask=mask, scale=scale, return_lse=True, _dtype=_dtype)
        outs.append(o)
        lses.append(l)
    out, lse = merge_attention(outs, lses)
    out = out.reshape(out.shape[4 - rank:])
    lse = lse.reshape(lse.shape[4 - rank:])
    return (out, lse) if return_lse else out


# ------------------------------------------------------------------------------------- dynamic linear attention
def _lift(x, rank, dtype):
    """A per-token array of rank `rank` (or lower: missing leading B, H dims of size 1) at full rank."""
    x = _f64(x, dtype)
    return x.reshape((1,) * (rank - x.ndim) + x.shape)


def dynamic_linear_attention(q, k, v, lam, *, capacity, tau=0.6, log_decay=None, score="token_vs_state",
                             cache=None, return_aux=False, _dtype=np.float64):
    """Oracle of :func:`attnkit.dynamic_linear_attention`, token by token, following the steps of
    ``shared/specs/dla.md`` literally: explicit ``k v^T`` matrices, explicit RMS normalisation ``N(X)`` and
    Frobenius norms (not the kernels' three-scalar shortcut), a Python list as the cache.

    Takes NumPy arrays of any float dtype, computes in float64 and returns ``(y, cache)`` or
    ``(y, cache, aux)`` like the real function: ``y`` float64 (rank follows q), a :class:`attnkit.DLACache`
    of float64 NumPy arrays, a :class:`attnkit.DLAAux`. ``cache`` may come from either implementation.
    """
    from ._dla import DLAAux, DLACache

    rank = np.asarray(q).ndim
    q4, k4, v4, lam4 = (_lift(x, 4, _dtype) for x in (q, k, v, lam))
    B, H, T, Dk = q4.shape
    Dv = v4.shape[-1]
    C = int(capacity)
    g3 = None if log_decay is None else _lift(log_decay, 3, _dtype)
    n = _dtype(Dk * Dv)
    rms_eps = eps = _dtype(1e-6)

    def N(X):  # parameter-free RMS normalisation over the flattened matrix
        return X / np.sqrt(np.sum(X * X) / n + rms_eps)

    def fro(X):
        return np.sqrt(np.sum(X * X))

    y = np.zeros((B, H, T, Dv), _dtype)
    scores = np.zeros((B, H, T), _dtype)
    boundaries = np.zeros((B, H, T), bool)
    merged = np.full((B, H, T), -1, np.int64)
    out = dict(states=np.zeros((B, H, C, Dk, Dv), _dtype), counts=np.zeros((B, H, C), np.int64),
               info=np.zeros((B, H, C), _dtype), starts=np.zeros((B, H, C), np.int64),
               size=np.zeros((B, H), np.int64))
    position = 0 if cache is None else int(cache.position)
    for b in range(B):
        for h in range(H):
            # The cache: a chronological list of [S_i, n_i, I_i, start_i]; the last entry is the open state.
            entries = []
            if cache is not None:
                for i in range(int(cache.size[b, h])):
                    entries.append([_f64(cache.states[b, h, i], _dtype), int(cache.counts[b, h, i]),
                                    _dtype(cache.info[b, h, i]), int(cache.starts[b, h, i])])
            for t in range(T):
                # 1. decay: every state is multiplied by a_t = exp(g_t) before anything else
                if g3 is not None:
                    a = np.exp(g3[b, h, t])
                    for e in entries:
                        e[0] = a * e[0]
                # 2. the token's update
                s = np.outer(k4[b, h, t], v4[b, h, t])
                # 3. information score against the (decayed) open state; an empty cache gives 0
                if not entries:
                    info = _dtype(0)
                else:
                    S_open = entries[-1][0]
                    if score == "token_vs_state":
                        info = fro(N(s) - N(S_open)) / (fro(N(S_open)) + eps)
                    elif score == "state_drift":
                        info = fro(N(S_open + s) - N(S_open)) / (fro(N(S_open)) + eps)
                    else:
                        raise ValueError(f"unknown score {score!r}")
                scores[b, h, t] = info
                # 4. boundary: the first token of an empty cache always opens a state; C == 1 never opens one
                opens = not entries or (C > 1 and info >= tau)
                if opens:
                    if len(entries) == C:
                        ratios = [(entries[i][2] + entries[i + 1][2]) / (entries[i][1] + entries[i + 1][1])
                                  for i in range(C - 1)]
                        i = int(np.argmin(ratios))  # the first minimum: ties go to the oldest pair
                        S_i, n_i, I_i, start_i = entries[i]
                        S_j, n_j, I_j, _ = entries.pop(i + 1)
                        entries[i] = [S_i + S_j, n_i + n_j, I_i + I_j, start_i]
                        merged[b, h, t] = i
                    entries.append([s, 1, info, position + t])
                    boundaries[b, h, t] = True
                else:
                    entries[-1][0] = entries[-1][0] + s
                    entries[-1][1] += 1
                    entries[-1][2] += info
                # 5. recency-indexed readout after the insert: lam_t[0] weights the newest state
                m = len(entries)
                for j in range(m):
                    y[b, h, t] += lam4[b, h, t, j] * (q4[b, h, t] @ entries[m - 1 - j][0])
            out["size"][b, h] = len(entries)
            for i, (S_i, n_i, I_i, start_i) in enumerate(entries):
                out["states"][b, h, i] = S_i
                out["counts"][b, h, i] = n_i
                out["info"][b, h, i] = I_i
                out["starts"][b, h, i] = start_i
    new_cache = DLACache(position=position + T, **out)
    shape = (B, H, T)[4 - rank:]
    y = y.reshape(shape + (Dv,))
    if not return_aux:
        return y, new_cache
    return y, new_cache, DLAAux(scores.reshape(shape), boundaries.reshape(shape), merged.reshape(shape))
