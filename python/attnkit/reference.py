"""Float64 NumPy oracles of every attnkit function, written for clarity rather than speed.

They implement the contract (``shared/specs/api.md`` and the README's semantics table) literally:
explicit masks, explicit GQA head repetition, explicit loops where they make the math obvious. They
never call the compiled core, take NumPy arrays of any float dtype (``ml_dtypes.bfloat16`` included),
compute in float64 and return float64. Users may test their own kernels against them.
"""

from __future__ import annotations

import numpy as np

__all__ = ["attention", "attention_weights", "merge_attention", "allowed_mask", "scores", "linear_attention",
           "random_features", "performer_attention", "linformer_projection", "linformer_attention",
           "philox4x32_10", "normal"]


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


def linear_attention(q, k, v, *, feature_map="elu1", causal=True, normalize=True, eps=1e-6, key_lengths=None,
                     initial_state=None, return_state=False, _dtype=np.float64):
    """Oracle of :func:`attnkit.linear_attention` in the quadratic form: the [S, Sk] matrix of
    phi(q_t) . phi(k_j) masked to the allowed (t, j), times V, plus the initial state's share."""
    q4, rank = _to4(q, _dtype)
    k4, _ = _to4(k, _dtype)
    v4, _ = _to4(v, _dtype)
    B, Hq, S, _ = q4.shape
    Hkv, Sk, Dv = k4.shape[1], k4.shape[2], v4.shape[3]
    if causal and S != Sk:
        raise ValueError("causal linear attention needs Sk == S")
    keys = _key_mask(B, Sk, key_lengths)[:, None, :, None]
    fq = _phi(q4, feature_map)
    fk = np.where(keys, _phi(k4, feature_map), 0.0).astype(_dtype)  # padded keys are never read
    vm = np.where(keys, v4, 0.0).astype(_dtype)
    a = fq @ _repeat_kv(fk, Hq).swapaxes(-1, -2)
    a = np.where(_linear_weights_mask(B, S, Sk, causal, key_lengths), a, 0.0)
    num = a @ _repeat_kv(vm, Hq)
    den = a.sum(-1)
    F = fk.shape[-1]
    s0 = np.zeros((B, Hkv, F, Dv), _dtype)
    z0 = np.zeros((B, Hkv, F), _dtype)
    if initial_state is not None:
        s0 = s0 + _f64(initial_state[0], _dtype).reshape((1,) * (4 - rank) + np.shape(initial_state[0]))
        z0 = z0 + _f64(initial_state[1], _dtype).reshape((1,) * (4 - rank) + np.shape(initial_state[1]))
    num = num + fq @ _repeat_kv(s0, Hq)
    den = den + (fq @ _repeat_kv(z0, Hq)[..., None])[..., 0]
    out = _drop_lead(_normalized(num, den, normalize, eps), rank)
    if not return_state:
        return out
    s_end = s0 + fk.swapaxes(-1, -2) @ vm
    z_end = z0 + fk.sum(-2)
    return out, (_drop_lead(s_end, rank), z_end.reshape(z_end.shape[4 - rank:]))


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
            c = np.broadcast_to(emax.max(-1, keepdims=True), emax.shape[:2] + (S,))
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
    num = a.astype(_dtype) @ _repeat_kv(v4, Hq)
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
