"""Float64 NumPy oracles of every attnkit function, written for clarity rather than speed.

They implement the contract (``shared/specs/api.md`` and the README's semantics table) literally:
explicit masks, explicit GQA head repetition, explicit loops where they make the math obvious. They
never call the compiled core, take NumPy arrays of any float dtype (``ml_dtypes.bfloat16`` included),
compute in float64 and return float64. Users may test their own kernels against them.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

__all__ = ["attention", "attention_weights", "merge_attention", "allowed_mask", "scores", "block_mask",
           "block_sparse_attention", "philox4x32_10", "normal", "lsh_rotations", "lsh_buckets", "lsh_attention",
           "linear_attention", "random_features", "performer_attention", "linformer_projection",
           "linformer_attention", "dynamic_linear_attention", "rope", "sinusoidal_positions", "alibi_slopes",
           "multi_head_attention", "attention_backward", "block_sparse_attention_backward",
           "linformer_attention_backward", "linear_attention_backward", "performer_attention_backward"]


def _f64(x, dtype=np.float64):
    return np.asarray(x).astype(dtype)


def _to4(x, dtype=np.float64):
    """[S, D] / [H, S, D] / [B, H, S, D] -> 4-D, and the original rank."""
    x = _f64(x, dtype)
    if x.ndim not in (2, 3, 4):
        raise ValueError(f"expected a 2-D, 3-D or 4-D array, got shape {x.shape}")
    return x.reshape((1,) * (4 - x.ndim) + x.shape), x.ndim


def _repeat_kv(x, hq):
    """GQA: kv head h // (Hq // Hkv) serves query head h (no kv heads serve no query heads)."""
    if x.shape[1] == 0:
        if hq:
            raise ValueError(f"{hq} query heads need at least one kv head")
        return x
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
        left, right = window  # a side past Sq + Sk allows what Sq + Sk allows (and stays in int64)
        left = None if left is None else min(int(left), Sq + Sk)
        right = None if right is None else min(int(right), Sq + Sk)
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
    masked). Returns (p, lse).

    Non-finite values follow IEEE arithmetic over the allowed keys: a NaN score of an allowed key (NaN in
    q, k, the bias or a softcap of inf) makes the row's p and lse NaN, a +inf score gives NaN too
    (exp(inf - inf)); masked entries are replaced by -inf before anything reads them. p is exactly 0 for
    every key whose final score is -inf, even in a NaN row."""
    s = np.where(ok, s, -np.inf)
    with np.errstate(invalid="ignore"):
        m = s.max(axis=-1, keepdims=True, initial=-np.inf)  # NaN when a score is NaN
        empty = np.isneginf(m)  # every key masked (or -inf)
        m_safe = np.where(empty, 0.0, m).astype(s.dtype)
        e = np.where(ok, np.exp(s - m_safe), 0.0).astype(s.dtype)
        tot = e.sum(axis=-1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        p = np.where(empty | np.isneginf(s), 0.0, e / np.where(empty, 1.0, tot))
        lse = np.where(empty, -np.inf, np.log(np.where(empty, 1.0, tot)) + m_safe)[..., 0]
    return p, lse


def _apply_values(p, ok, v):
    """``out[..., i, :] = sum over keys j allowed for row i of p_ij v_j``: like ``p @ v``, except that a
    key masked for row i is never read into row i (``p @ v`` would turn a masked NaN / inf value into
    NaN through 0 * NaN). Allowed keys follow IEEE arithmetic (0 * NaN = NaN included)."""
    bad = ~np.isfinite(v)
    if not bad.any():
        return p @ v
    out = p @ np.where(bad, 0.0, v)
    hit = (ok.astype(np.float64) @ bad.astype(np.float64)) > 0  # rows reading a non-finite value
    for idx in zip(*np.nonzero(hit.any(axis=-1))):
        b, h, i = idx
        sel = ok[b, h, i]
        with np.errstate(invalid="ignore", over="ignore"):
            out[b, h, i] = p[b, h, i, sel] @ v[b, h, sel]
    return out


def attention_weights(q, k, *, causal=False, window=None, mask=None, bias=None, key_lengths=None, scale=None,
                      softcap=None, alibi_slopes=None, _dtype=np.float64):
    """Oracle of :func:`attnkit.attention_weights`: ``[B, Hq, Sq, Sk]`` probabilities (rank follows q)."""
    q4, rank = _to4(q, _dtype)
    k4, _ = _to4(k, _dtype)
    B, Hq, Sq, _ = q4.shape
    Sk = k4.shape[2]
    s = scores(q4, k4, scale=scale, softcap=softcap, bias=bias, alibi_slopes=alibi_slopes, _dtype=_dtype)
    ok = allowed_mask(B, Hq, Sq, Sk, causal=causal, window=window, mask=mask, key_lengths=key_lengths)
    ok &= ~_neg_inf_bias(bias, ok.shape)
    p, _ = _softmax_rows(s, ok)
    return p.reshape(p.shape[4 - rank:])


def _neg_inf_bias(bias, shape):
    """Where the bias is -inf: those keys are masked (never read, even when the score is NaN)."""
    if bias is None:
        return np.zeros(shape, bool)
    return np.broadcast_to(np.isneginf(_f64(bias)), shape)


def attention(q, k, v, *, causal=False, window=None, mask=None, bias=None, key_lengths=None, scale=None,
              softcap=None, alibi_slopes=None, return_lse=False, _dtype=np.float64):
    """Oracle of :func:`attnkit.attention` (float64 result, rank follows q)."""
    q4, rank = _to4(q, _dtype)
    k4, _ = _to4(k, _dtype)
    v4, _ = _to4(v, _dtype)
    B, Hq, Sq, _ = q4.shape
    Sk = k4.shape[2]
    with np.errstate(invalid="ignore", over="ignore"):
        s = scores(q4, k4, scale=scale, softcap=softcap, bias=bias, alibi_slopes=alibi_slopes, _dtype=_dtype)
    ok = allowed_mask(B, Hq, Sq, Sk, causal=causal, window=window, mask=mask, key_lengths=key_lengths)
    ok &= ~_neg_inf_bias(bias, ok.shape)
    p, lse = _softmax_rows(s, ok)
    out = _apply_values(p, ok, _repeat_kv(v4, Hq))
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


# ------------------------------------------------------------------------------- counter-based randomness
_MASK32 = np.uint64(0xFFFFFFFF)
_STREAM_RANDOM_FEATURES = 0x52464541 << 32  # "RFEA", math/random.h kStreamRandomFeatures
_STREAM_LINFORMER = 0x4C494E46 << 32        # "LINF", kStreamLinformer


def philox4x32_10(counter, key):
    """Philox4x32-10 (Salmon et al., SC'11) on arrays: counter = 4 arrays of 32-bit words, key = 2 words.
    A NumPy port of attnkit/math/random.h, independent of the compiled core."""
    c0, c1, c2, c3 = (np.asarray(c, dtype=np.uint64) & _MASK32 for c in counter)
    k0, k1 = (np.uint64(int(k) & 0xFFFFFFFF) for k in key)
    m0, m1 = np.uint64(0xD2511F53), np.uint64(0xCD9E8D57)
    w0, w1 = np.uint64(0x9E3779B9), np.uint64(0xBB67AE85)
    s32 = np.uint64(32)
    for r in range(10):
        if r:
            k0 = (k0 + w0) & _MASK32
            k1 = (k1 + w1) & _MASK32
        p0 = m0 * c0
        p1 = m1 * c2
        c0, c1, c2, c3 = ((p1 >> s32) ^ c1 ^ k0, p1 & _MASK32, (p0 >> s32) ^ c3 ^ k1, p0 & _MASK32)
    return c0, c1, c2, c3


def normal(seed, stream, index):
    """Standard normal numbers ``index`` (an int array) of Philox stream ``stream`` under ``seed``, exactly
    as attnkit/math/random.h defines them (Box-Muller in float64; up to the last bits of log/sin/cos)."""
    index = np.asarray(index, dtype=np.uint64)
    block = index >> np.uint64(1)
    stream, seed = int(stream), int(seed)
    v0, v1, v2, v3 = philox4x32_10((block & _MASK32, block >> np.uint64(32), np.full_like(block, stream & 0xFFFFFFFF),
                                    np.full_like(block, stream >> 32)), (seed & 0xFFFFFFFF, seed >> 32))
    u1 = (((v0 << np.uint64(21)) ^ (v1 >> np.uint64(11))).astype(np.float64) + 1.0) * 2.0**-53
    u2 = ((v2 << np.uint64(21)) ^ (v3 >> np.uint64(11))).astype(np.float64) * 2.0**-53
    r = np.sqrt(-2.0 * np.log(u1))
    t = 6.283185307179586 * u2
    return np.where(index & np.uint64(1), r * np.sin(t), r * np.cos(t))


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


# ------------------------------------------------------------------------------------------------- LSH
_STREAM_LSH = 0x4C534832 << 32  # "LSH2", math/random.h kStreamLsh


def lsh_rotations(D, num_buckets, num_hashes, seed):
    """The rotations ``R_r: [D, num_buckets / 2]`` of every round, ``[num_hashes, D, num_buckets / 2]``."""
    half = num_buckets // 2
    return np.stack([normal(seed, _STREAM_LSH + r, np.arange(D * half)).reshape(D, half) for r in range(num_hashes)])


def lsh_buckets(x, *, num_buckets, num_hashes=1, seed=0):
    """Oracle of :func:`attnkit.lsh_buckets`: ``argmax([x R_r, -x R_r])`` in float64; a row whose
    projections hold a NaN (a NaN in x, or inf - inf) goes to bucket 0."""
    x = _f64(x)
    rot = lsh_rotations(x.shape[-1], num_buckets, num_hashes, seed)
    with np.errstate(invalid="ignore", over="ignore"):
        proj = np.einsum("...sd,rdc->...rsc", x, rot)
    both = np.concatenate([proj, -proj], axis=-1)
    nan = np.isnan(both).any(axis=-1)
    return np.where(nan, 0, np.argmax(np.where(np.isnan(both), -np.inf, both), axis=-1)).astype(np.int32)


def lsh_attention(q, k, v, *, num_buckets, num_hashes=1, seed=0, causal=False, scale=None, return_lse=False,
                  _dtype=np.float64):
    """Oracle of :func:`attnkit.lsh_attention`: per round, exact attention with the mask "same bucket",
    then the rounds merged with :func:`merge_attention`."""
    q4, rank = _to4(q)
    k4, _ = _to4(k)
    v4, _ = _to4(v)
    Hq = q4.shape[1]
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


# ------------------------------------------------------------------------------------ linear attention
def _key_mask(B, Sk, key_lengths):
    """Boolean [B, Sk]: keys j < key_lengths[b]."""
    lens = np.full(B, Sk) if key_lengths is None else np.broadcast_to(np.asarray(key_lengths).astype(np.int64), (B,))
    return np.arange(Sk)[None, :] < lens[:, None]


def _linear_weights_mask(B, S, Sk, causal, key_lengths):
    """Boolean [B, 1, S, Sk]: key j contributes to query t (j <= t when causal, j < key_lengths[b])."""
    ok = _key_mask(B, Sk, key_lengths)[:, None, None, :]
    if causal:
        ok = ok & (np.arange(Sk)[None, :] <= np.arange(S)[:, None])
    return np.broadcast_to(ok, (B, 1, S, Sk))


def _normalized(num, den, normalize, eps):
    """num / (den + eps) with the contract's rule: 0 where the denominator is exactly 0."""
    if not normalize:
        return num
    d = (den + eps)[..., None]
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(d == 0, 0.0, num / np.where(d == 0, 1.0, d)).astype(num.dtype)


def _phi(x, feature_map):
    if feature_map == "elu1":
        return np.where(x > 0, x + 1, np.exp(np.minimum(x, 0)))
    if feature_map == "relu":
        return np.maximum(x, 0)
    if feature_map == "identity":
        return x
    raise ValueError(f"feature_map must be 'elu1', 'relu' or 'identity', got {feature_map!r}")


def _drop_lead(x, rank):
    """A [B, H, ...] result brought to the rank of the inputs (the leading dims q dropped)."""
    return x.reshape(x.shape[4 - rank:]) if rank < 4 else x


def _linear_setup(q, k, v, feature_map, causal, key_lengths, initial_state, _dtype):
    """What the linear-attention oracles share: the inputs lifted to rank 4, the features phi(q) and
    phi(k) (padded keys zeroed, as their values), the initial state (zeros without one) and the
    [B, Hq, S, Sk] mask of allowed (query, key) pairs."""
    q4, rank = _to4(q, _dtype)
    k4, _ = _to4(k, _dtype)
    v4, _ = _to4(v, _dtype)
    B, Hq, S, _ = q4.shape
    Hkv, Sk, Dv = k4.shape[1], k4.shape[2], v4.shape[3]
    if causal and S != Sk:
        raise ValueError("causal linear attention needs Sk == S")
    keys = _key_mask(B, Sk, key_lengths)[:, None, :, None]
    fk = np.where(keys, _phi(k4, feature_map), 0.0).astype(_dtype)  # padded keys are never read
    F = fk.shape[-1]
    s0 = np.zeros((B, Hkv, F, Dv), _dtype)
    z0 = np.zeros((B, Hkv, F), _dtype)
    if initial_state is not None:
        s0 = s0 + _f64(initial_state[0], _dtype).reshape((1,) * (4 - rank) + np.shape(initial_state[0]))
        z0 = z0 + _f64(initial_state[1], _dtype).reshape((1,) * (4 - rank) + np.shape(initial_state[1]))
    return SimpleNamespace(
        q4=q4, k4=k4, rank=rank, keys=keys, fq=_phi(q4, feature_map), fk=fk,
        vm=np.where(keys, v4, 0.0).astype(_dtype), s0=s0, z0=z0,
        allowed=np.broadcast_to(_linear_weights_mask(B, S, Sk, causal, key_lengths), (B, Hq, S, Sk)))


def linear_attention(q, k, v, *, feature_map="elu1", causal=True, normalize=True, eps=1e-6, key_lengths=None,
                     initial_state=None, return_state=False, _dtype=np.float64):
    """Oracle of :func:`attnkit.linear_attention` in the quadratic form: the [S, Sk] matrix of
    phi(q_t) . phi(k_j) masked to the allowed (t, j), times V, plus the initial state's share."""
    L = _linear_setup(q, k, v, feature_map, causal, key_lengths, initial_state, _dtype)
    fq, fk, vm, s0, z0, allowed, Hq = L.fq, L.fk, L.vm, L.s0, L.z0, L.allowed, L.q4.shape[1]
    a = np.where(allowed, fq @ _repeat_kv(fk, Hq).swapaxes(-1, -2), 0.0)
    num = _apply_values(a, allowed, _repeat_kv(vm, Hq))  # a future key's value is never read
    den = a.sum(-1)
    num = num + fq @ _repeat_kv(s0, Hq)
    den = den + (fq @ _repeat_kv(z0, Hq)[..., None])[..., 0]
    out = _drop_lead(_normalized(num, den, normalize, eps), L.rank)
    if not return_state:
        return out
    s_end = s0 + fk.swapaxes(-1, -2) @ vm
    z_end = z0 + fk.sum(-2)
    return out, (_drop_lead(s_end, L.rank), z_end.reshape(z_end.shape[4 - L.rank:]))


def random_features(num_features, head_dim, *, seed=0, orthogonal=True, scaling="chi", dtype=np.float64):
    """Oracle of :func:`attnkit.random_features` (float64 unless ``dtype`` says otherwise): the construction
    of attnkit/linear.h with NumPy's Philox port and LAPACK's QR."""
    m, D = int(num_features), int(head_dim)
    rows = []
    for b in range((m + D - 1) // D):
        stream = _STREAM_RANDOM_FEATURES + b
        g = normal(seed, stream, np.arange(D * D)).reshape(D, D)
        if orthogonal:
            qf, rf = np.linalg.qr(g.T)
            block = (qf * np.where(np.diag(rf) < 0, -1.0, 1.0)).T  # sign correction: diag(R) > 0
            if scaling == "chi":
                norms = np.sqrt((normal(seed, stream, D * D + np.arange(D * D)).reshape(D, D) ** 2).sum(1))
            else:
                norms = np.full(D, np.sqrt(D))
        else:
            block = g
            norms = np.ones(D) if scaling == "chi" else np.sqrt(D) / np.linalg.norm(g, axis=1)
        rows.append(block * norms[:, None])
    return np.concatenate(rows)[:m].astype(dtype)


# ------------------------------------------------------------------------------------------- Performer
def performer_attention(q, k, v, features, *, kernel="softmax", causal=False, scale=None, eps=1e-6,
                        key_lengths=None, _dtype=np.float64):
    """Oracle of :func:`attnkit.performer_attention` with attnkit's stabilizers, in the quadratic form.

    Query features: ``m^-1/2 exp(W q' - max_f (W q')_f)``. Key exponents ``e_j = W k'_j - |k'_j|^2 / 2``
    with stabilizer c_t = max of e over the allowed keys (all of them when bidirectional, those up to
    ``t`` when causal); the weight of key ``j`` for query ``t`` is ``phi(q_t) . m^-1/2 exp(e_j - c_t)``.
    """
    q4, rank = _to4(q, _dtype)
    k4, _ = _to4(k, _dtype)
    v4, _ = _to4(v, _dtype)
    w = _f64(features, _dtype)
    B, Hq, S, D = q4.shape
    Sk = k4.shape[2]
    m = w.shape[0]
    if causal and S != Sk:
        raise ValueError("causal Performer attention needs Sk == S")
    scale = 1.0 / np.sqrt(D) if scale is None else scale
    keys = _key_mask(B, Sk, key_lengths)[:, None, :]
    k4 = np.where(keys[..., None], k4, 0.0).astype(_dtype)
    v4 = np.where(keys[..., None], v4, 0.0).astype(_dtype)
    qp, kp = (np.sqrt(_dtype(scale)) * q4), (np.sqrt(_dtype(scale)) * k4)
    qw, kw = qp @ w.T, kp @ w.T
    allowed = _linear_weights_mask(B, S, Sk, causal, key_lengths)
    if kernel == "relu":
        fq = np.maximum(qw, 0) + _dtype(1e-3)
        fk = np.maximum(kw, 0) + _dtype(1e-3)
        a = np.where(allowed, fq @ _repeat_kv(fk, Hq).swapaxes(-1, -2), 0.0)
    elif kernel == "softmax":
        fq = np.exp(qw - qw.max(-1, keepdims=True)) / np.sqrt(_dtype(m))
        e = kw - 0.5 * (kp * kp).sum(-1, keepdims=True)               # key exponents [B, Hkv, Sk, m]
        key_max = e.max(-1)                                            # [B, Hkv, Sk]
        emax = np.where(keys, key_max, -np.inf)                        # allowed keys only
        if causal:
            c = np.maximum.accumulate(emax, axis=-1)                   # running max, [B, Hkv, S]
        else:
            c = np.broadcast_to(emax.max(-1, keepdims=True, initial=-np.inf), emax.shape[:2] + (S,))
        # phi(q_t) . m^-1/2 exp(e_j - c_t) = [phi(q_t) . m^-1/2 exp(e_j - max e_j)] * exp(max e_j - c_t)
        fk = np.exp(e - key_max[..., None]) / np.sqrt(_dtype(m))
        g = fq @ _repeat_kv(fk, Hq).swapaxes(-1, -2)                   # [B, Hq, S, Sk]
        c_r = _repeat_kv(c[..., None], Hq)                             # [B, Hq, S, 1]
        kmax_r = _repeat_kv(key_max[:, :, None, :], Hq)                # [B, Hq, 1, Sk]
        with np.errstate(over="ignore"):  # only where not allowed (c_t < max e_j), discarded below
            factor = np.exp(kmax_r - np.where(np.isneginf(c_r), 0.0, c_r))
        a = np.where(allowed, g * np.where(allowed, factor, 0.0), 0.0)
    else:
        raise ValueError(f"kernel must be 'softmax' or 'relu', got {kernel!r}")
    num = _apply_values(a.astype(_dtype), np.broadcast_to(allowed, a.shape), _repeat_kv(v4, Hq))
    return _drop_lead(_normalized(num, a.sum(-1), True, eps), rank)


# -------------------------------------------------------------------------------------------- Linformer
def linformer_projection(proj_len, seq_len, *, seed=0, num_heads=None, dtype=np.float64):
    """Oracle of :func:`attnkit.linformer_projection` (float64 unless ``dtype`` says otherwise): entry
    (h, p, j) is normal number ``j * P + p`` of stream kStreamLinformer + h, over sqrt(P)."""
    P, Sk = int(proj_len), int(seq_len)
    heads = [normal(seed, _STREAM_LINFORMER + h, np.arange(P * Sk)).reshape(Sk, P).T / np.sqrt(P)
             for h in range(1 if num_heads is None else int(num_heads))]
    return (heads[0] if num_heads is None else np.stack(heads)).astype(dtype)


def linformer_attention(q, k, v, E, F=None, *, scale=None, key_lengths=None, return_lse=False, causal=None,
                        _dtype=np.float64, _proj_dtype=None):
    """Oracle of :func:`attnkit.linformer_attention`: zero the padded keys, project keys and values with E
    and F (per kv head), then :func:`attention`. ``_proj_dtype`` rounds the projections (the kernel's
    storage of them for 16-bit inputs)."""
    if causal is not None:
        raise ValueError("causal is not defined for Linformer")
    q4, rank = _to4(q, _dtype)
    k4, _ = _to4(k, _dtype)
    v4, _ = _to4(v, _dtype)
    B, Sk = k4.shape[0], k4.shape[2]
    keys = _key_mask(B, Sk, key_lengths)[:, None, :, None]
    k4 = np.where(keys, k4, 0.0).astype(_dtype)
    v4 = np.where(keys, v4, 0.0).astype(_dtype)
    e = _f64(E, _dtype)
    f = e if F is None else _f64(F, _dtype)
    e3 = e[None] if e.ndim == 2 else e                                   # [Hkv or 1, P, Sk]
    f3 = f[None] if f.ndim == 2 else f
    kp = e3[None] @ k4                                                   # [B, Hkv, P, D]
    vp = f3[None] @ v4
    if _proj_dtype is not None:
        kp = kp.astype(_proj_dtype).astype(_dtype)
        vp = vp.astype(_proj_dtype).astype(_dtype)
    return attention(q4.reshape(q4.shape[4 - rank:]), _drop_lead(kp, rank), _drop_lead(vp, rank), scale=scale,
                     return_lse=return_lse, _dtype=_dtype)


# ------------------------------------------------------------------------------------- positions and the MHA layer
def rope(x, *, positions=None, base=10000.0, rotary_dim=None, interleaved=False, _dtype=np.float64):
    """Oracle of :func:`attnkit.rope`: a loop over the rotated pairs, angles in float64."""
    x4, rank = _to4(x, _dtype)
    B, H, S, D = x4.shape
    r = D if rotary_dim is None else int(rotary_dim)
    pos = np.arange(S) if positions is None else np.asarray(positions)
    pos = np.broadcast_to(pos.astype(np.float64), (B, S))[:, None, :]     # [B, 1, S]
    out = x4.copy()
    for p in range(r // 2):
        a, b = (2 * p, 2 * p + 1) if interleaved else (p, p + r // 2)
        theta = pos * float(base) ** (-2.0 * p / r)
        c, s = np.cos(theta).astype(_dtype), np.sin(theta).astype(_dtype)
        out[..., a] = x4[..., a] * c - x4[..., b] * s
        out[..., b] = x4[..., b] * c + x4[..., a] * s
    return out.reshape(out.shape[4 - rank:])


_rope = rope  # multi_head_attention's argument `rope` shadows the function


def sinusoidal_positions(seq_len, dim, *, base=10000.0):
    """Oracle of :func:`attnkit.sinusoidal_positions`, element by element."""
    pe = np.zeros((seq_len, dim))
    for t in range(seq_len):
        for d in range(dim):
            angle = t / base ** ((d - d % 2) / dim)
            pe[t, d] = np.sin(angle) if d % 2 == 0 else np.cos(angle)
    return pe


def alibi_slopes(num_heads):
    """Oracle of :func:`attnkit.alibi_slopes`: the ALiBi paper's recursive rule, in float64."""
    def pow2(n):
        start = 2.0 ** (-(2.0 ** -(np.log2(n) - 3)))
        return [start * start ** i for i in range(n)]

    if np.log2(num_heads).is_integer():
        return np.array(pow2(num_heads))
    c = 2 ** int(np.floor(np.log2(num_heads)))
    return np.array(pow2(c) + list(alibi_slopes(2 * c))[0::2][: num_heads - c])


def multi_head_attention(query, key, value, params, *, num_heads, num_kv_heads=None, key_lengths=None,
                         causal=False, rope=None, mechanism="exact", _dtype=np.float64, **options):
    """Oracle of :func:`attnkit.multi_head_attention`: float64 projections, explicit head split, the
    mechanism's oracle, explicit concatenation. Default Performer features and Linformer projections are
    drawn with this module's :func:`random_features` / :func:`linformer_projection` (256 rows, seed 0)."""
    def lin(x, w, b):
        y = _f64(x, _dtype) @ _f64(w, _dtype).T
        return y if b is None else y + _f64(b, _dtype)

    def heads(y, H):
        B, S, HD = y.shape
        return np.stack([y[:, :, h * (HD // H):(h + 1) * (HD // H)] for h in range(H)], axis=1)

    query, key, value = (np.asarray(a) for a in (query, key, value))
    squeeze = query.ndim == 2
    if squeeze:
        query, key, value = query[None], key[None], value[None]
    Hkv = num_heads if num_kv_heads is None else num_kv_heads
    q = heads(lin(query, params.w_q, params.b_q), num_heads)
    k = heads(lin(key, params.w_k, params.b_k), Hkv)
    v = heads(lin(value, params.w_v, params.b_v), Hkv)
    Sq, Sk = q.shape[2], k.shape[2]
    if rope is not None:
        common = {n: rope[n] for n in ("base", "rotary_dim", "interleaved") if n in rope}
        qpos = rope.get("positions")
        kpos = rope.get("key_positions", qpos if Sq == Sk else None)
        if qpos is None:
            qpos = np.arange(Sq) + max(Sk - Sq, 0)
        q = _rope(q, positions=qpos, _dtype=_dtype, **common)
        k = _rope(k, positions=kpos, _dtype=_dtype, **common)
    opts = dict(options)
    if mechanism == "exact":
        o = attention(q, k, v, causal=causal, key_lengths=key_lengths, _dtype=_dtype, **opts)
    elif mechanism == "block_sparse":
        o = block_sparse_attention(q, k, v, opts.pop("layout"), causal=causal, key_lengths=key_lengths,
                                   _dtype=_dtype, **opts)
    elif mechanism == "lsh":
        o = lsh_attention(q, k, v, causal=causal, _dtype=_dtype, **opts)
    elif mechanism == "linear":
        o = linear_attention(q, k, v, causal=causal, key_lengths=key_lengths, _dtype=_dtype, **opts)
    elif mechanism == "performer":
        W = opts.pop("features", None)
        if W is None:
            W = random_features(opts.pop("num_features", 256), q.shape[-1], seed=opts.pop("seed", 0))
        o = performer_attention(q, k, v, W, causal=causal, key_lengths=key_lengths, _dtype=_dtype, **opts)
    elif mechanism == "linformer":
        E, F = opts.pop("E", None), opts.pop("F", None)
        if E is None:
            E = linformer_projection(opts.pop("proj_len", 256), Sk, seed=opts.pop("seed", 0))
        o = linformer_attention(q, k, v, E, F, key_lengths=key_lengths, _dtype=_dtype, **opts)
    elif mechanism == "dla":
        C = opts["capacity"]
        lam = opts.pop("lam", None)
        if lam is None:
            lam = np.ones(q.shape[:3] + (C,))
        o = dynamic_linear_attention(q, k, v, lam, _dtype=_dtype, **opts)[0]
    else:
        raise ValueError(f"unknown mechanism {mechanism!r}")
    o = np.concatenate([o[:, h] for h in range(o.shape[1])], axis=-1)   # [B, Sq, Hq * Dv]
    y = lin(o, params.w_o, params.b_o)
    return y[0] if squeeze else y


# ------------------------------------------------------------------------------------------ gradients
def _sum_to(x, shape):
    """Sums x over the dimensions along which an array of `shape` was broadcast to x's shape."""
    lead = x.ndim - len(shape)
    x = x.sum(axis=tuple(range(lead))) if lead else x
    axes = tuple(d for d, n in enumerate(shape) if n == 1 and x.shape[d] != 1)
    return x.sum(axis=axes, keepdims=True).reshape(shape) if axes else x.reshape(shape)


def attention_backward(dout, q, k, v, *, causal=False, window=None, mask=None, bias=None, key_lengths=None,
                       scale=None, softcap=None, alibi_slopes=None, return_dbias=False, _dtype=np.float64):
    """Oracle of :func:`attnkit.attention_backward`: ``(dq, dk, dv)`` (and ``dbias`` shaped like ``bias``) of
    ``L = sum(dout * attention(q, k, v, ...))``, in float64. Unlike the kernel it needs neither ``out`` nor
    ``lse``: it recomputes the forward pass and applies the chain rule literally, with the softmax
    Jacobian written as ``dS_ij = p_ij (dp_ij - sum_l p_il dp_il)``."""
    q4, rank = _to4(q, _dtype)
    k4, _ = _to4(k, _dtype)
    v4, _ = _to4(v, _dtype)
    g4, _ = _to4(dout, _dtype)
    B, Hq, Sq, D = q4.shape
    Hkv, Sk = k4.shape[1], k4.shape[2]
    if scale is None:
        scale = 1.0 / np.sqrt(D)
    kr, vr = _repeat_kv(k4, Hq), _repeat_kv(v4, Hq)
    x = (q4 @ kr.swapaxes(-1, -2)) * scale          # pre-softcap scores
    s = scores(q4, k4, scale=scale, softcap=softcap, bias=bias, alibi_slopes=alibi_slopes, _dtype=_dtype)
    ok = allowed_mask(B, Hq, Sq, Sk, causal=causal, window=window, mask=mask, key_lengths=key_lengths)
    p, _ = _softmax_rows(s, ok)
    dv = p.swapaxes(-1, -2) @ g4                    # [B, Hq, Sk, Dv]
    dp = g4 @ vr.swapaxes(-1, -2)                   # [B, Hq, Sq, Sk]
    ds = p * (dp - (p * dp).sum(axis=-1, keepdims=True))
    dx = ds * (1.0 - np.tanh(x / softcap) ** 2) if softcap else ds
    dq = (dx @ kr) * scale
    dk = (dx.swapaxes(-1, -2) @ q4) * scale
    G = Hq // Hkv
    dk = dk.reshape(B, Hkv, G, Sk, D).sum(axis=2)   # GQA: a kv head sums over its query heads
    dv = dv.reshape(B, Hkv, G, Sk, v4.shape[3]).sum(axis=2)
    res = tuple(a.reshape(a.shape[4 - rank:]) for a in (dq, dk, dv))
    if return_dbias:
        res += (_sum_to(ds, np.shape(bias)),)
    return res


def block_sparse_attention_backward(dout, q, k, v, layout, *, causal=False, scale=None, key_lengths=None,
                                    _dtype=np.float64):
    """Oracle of :func:`attnkit.block_sparse_attention_backward`: the exact oracle with the block mask."""
    q4, _ = _to4(q)
    mask = block_mask(layout, q4.shape[2], np.asarray(k).shape[-2], q4.shape[1])
    return attention_backward(dout, q, k, v, causal=causal, mask=mask, scale=scale, key_lengths=key_lengths,
                              _dtype=_dtype)


def linformer_attention_backward(dout, q, k, v, E, F=None, *, scale=None, key_lengths=None, _dtype=np.float64):
    """Oracle of :func:`attnkit.linformer_attention_backward`: ``(dq, dk, dv, dE, dF)`` by the chain rule
    through ``K' = E k``, ``V' = F v`` (padded keys zeroed) and :func:`attention_backward`; ``dF`` is None
    when ``F`` is None (its gradient is part of ``dE``)."""
    q4, rank = _to4(q, _dtype)
    k4, _ = _to4(k, _dtype)
    v4, _ = _to4(v, _dtype)
    B, Sk = k4.shape[0], k4.shape[2]
    keys = _key_mask(B, Sk, key_lengths)[:, None, :, None]
    k4 = np.where(keys, k4, 0.0)
    v4 = np.where(keys, v4, 0.0)
    e = _f64(E, _dtype)
    f = e if F is None else _f64(F, _dtype)
    e4 = (e[None] if e.ndim == 2 else e)[None]                           # [1, Hkv or 1, P, Sk]
    f4 = (f[None] if f.ndim == 2 else f)[None]
    dq, dkp, dvp = attention_backward(_to4(dout, _dtype)[0], q4, e4 @ k4, f4 @ v4, scale=scale, _dtype=_dtype)
    dk = np.where(keys, e4.swapaxes(-1, -2) @ dkp, 0.0)
    dv = np.where(keys, f4.swapaxes(-1, -2) @ dvp, 0.0)
    dE = (dkp @ k4.swapaxes(-1, -2)).sum(axis=0)
    dF = (dvp @ v4.swapaxes(-1, -2)).sum(axis=0)
    if e.ndim == 2:
        dE, dF = dE.sum(axis=0), dF.sum(axis=0)
    if F is None:
        dE, dF = dE + dF, None
    return (dq.reshape(dq.shape[4 - rank:]), dk.reshape(dk.shape[4 - rank:]), dv.reshape(dv.shape[4 - rank:]), dE, dF)


# The linear-attention and Performer backward oracles live in their own file (reference.py stays under 800
# lines); they are part of this module's API.
from ._reference_grad import linear_attention_backward, performer_attention_backward  # noqa: E402,F401
