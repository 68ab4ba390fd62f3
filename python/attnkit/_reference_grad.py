"""float64 oracles of the linear-attention and Performer backward passes (re-exported by
:mod:`attnkit.reference`). Quadratic forms with explicit masks: the chain rule written out, never the
chunked scans of the kernels."""

from __future__ import annotations

import numpy as np

from .reference import _drop_lead, _f64, _key_mask, _linear_setup, _linear_weights_mask, _repeat_kv, _to4


def _group_sum(x, hkv):
    """The inverse of _repeat_kv for gradients: [B, Hq, ...] summed over the query heads of each kv head."""
    B, Hq = x.shape[:2]
    return x.reshape((B, hkv, Hq // hkv) + x.shape[2:]).sum(axis=2)


def _num_den_grads(dy, num, den, normalize, eps):
    """dL/dnum and dL/dden of y = num / (den + eps) (0 where den + eps == 0), or of y = num."""
    if not normalize:
        return dy, np.zeros(dy.shape[:-1], dy.dtype)
    d = den + eps
    r = np.where(d == 0, 0.0, 1.0 / np.where(d == 0, 1.0, d))
    y = num * r[..., None]
    return dy * r[..., None], -(dy * y).sum(-1) * r


def _phi_grad(x, feature_map):
    """d phi(x) / dx, elementwise."""
    if feature_map == "elu1":
        return np.where(x > 0, 1.0, np.exp(np.minimum(x, 0)))
    if feature_map == "relu":
        return (x > 0).astype(x.dtype)
    return np.ones_like(x)


def linear_attention_backward(dout, q, k, v, *, feature_map="elu1", causal=True, normalize=True, eps=1e-6,
                              key_lengths=None, initial_state=None, dfinal_state=None, _dtype=np.float64):
    """Oracle of :func:`attnkit.linear_attention_backward`: ``(dq, dk, dv)`` (and ``(dS0, dz0)`` when
    ``initial_state`` is given), from the quadratic form ``a = (phi(Q) phi(K)^T) * allowed``::

        num = a V + phi(Q) S0, den = rowsum(a) + phi(Q) z0, y = num / (den + eps)
        da = (dnum V^T + dden) * allowed
        dphi(Q) = da phi(K) + dnum S0^T + dden z0^T
        dphi(K) = sum_group da^T phi(Q) + V dS_final^T + dz_final,  dV = sum_group a^T dnum + phi(K) dS_final
        dS0 = sum_group phi(Q)^T dnum + dS_final,  dz0 = sum_group phi(Q)^T dden + dz_final
    """
    L = _linear_setup(q, k, v, feature_map, causal, key_lengths, initial_state, _dtype)
    q4, k4, rank, keys, fq, fk, vm, s0, z0, allowed = (L.q4, L.k4, L.rank, L.keys, L.fq, L.fk, L.vm, L.s0, L.z0,
                                                       L.allowed)
    dy, _ = _to4(dout, _dtype)
    Hq, Hkv = q4.shape[1], k4.shape[1]
    ds_f = np.zeros_like(s0)
    dz_f = np.zeros_like(z0)
    if dfinal_state is not None:
        lift = (1,) * (4 - rank)
        ds_f = ds_f + _f64(dfinal_state[0], _dtype).reshape(lift + np.shape(dfinal_state[0]))
        dz_f = dz_f + _f64(dfinal_state[1], _dtype).reshape(lift + np.shape(dfinal_state[1]))
    fkr, vr, s0r, z0r = (_repeat_kv(x, Hq) for x in (fk, vm, s0, z0))
    a = np.where(allowed, fq @ fkr.swapaxes(-1, -2), 0.0)
    num = a @ vr + fq @ s0r
    den = a.sum(-1) + (fq * z0r[:, :, None, :]).sum(-1)
    dnum, dden = _num_den_grads(dy, num, den, normalize, eps)
    da = np.where(allowed, dnum @ vr.swapaxes(-1, -2) + dden[..., None], 0.0)
    dfq = da @ fkr + dnum @ s0r.swapaxes(-1, -2) + dden[..., None] * z0r[:, :, None, :]
    dfk = _group_sum(da.swapaxes(-1, -2) @ fq, Hkv) + vm @ ds_f.swapaxes(-1, -2) + dz_f[:, :, None, :]
    dv = _group_sum(a.swapaxes(-1, -2) @ dnum, Hkv) + fk @ ds_f
    dq = dfq * _phi_grad(q4, feature_map)
    dk = np.where(keys, dfk * _phi_grad(k4, feature_map), 0.0)
    dv = np.where(keys, dv, 0.0)
    grads = tuple(_drop_lead(x, rank) for x in (dq, dk, dv))
    if initial_state is None:
        return grads
    ds0 = _group_sum(fq.swapaxes(-1, -2) @ dnum, Hkv) + ds_f
    dz0 = _group_sum((fq * dden[..., None]).sum(-2), Hkv) + dz_f
    return grads + ((_drop_lead(ds0, rank), dz0.reshape(dz0.shape[4 - rank:])),)


def performer_attention_backward(dout, q, k, v, features, *, kernel="softmax", causal=False, scale=None, eps=1e-6,
                                 key_lengths=None, _dtype=np.float64):
    """Oracle of :func:`attnkit.performer_attention_backward`: ``(dq, dk, dv)`` in the quadratic form of
    :func:`attnkit.reference.performer_attention`, ``a_tj = phi(q_t) . f_j exp(kmax_j - c_t)`` with
    ``f_j = m^-1/2 exp(e_j - kmax_j)``, ``e_j = W k'_j - |k'_j|^2 / 2``, ``kmax_j = max_f e_jf`` and
    ``c_t`` the maximum of ``kmax`` over the keys row ``t`` sees. Then, with ``da`` as in
    :func:`linear_attention_backward`::

        d(W q'_t) = dphi(q_t) * phi(q_t), minus its sum at the row's maximizing feature (the stabilizer)
        de_j = sum_t da_tj exp(kmax_j - c_t) phi(q_t) * f_j, plus dc_t = -sum_j da_tj a_tj at the
               maximizing feature of the key attaining c_t (the first such key)
        dq = sqrt(scale) d(W q') W,  dk = sqrt(scale) de W - scale rowsum(de) k,  dv = sum_group a^T dnum

    The ReLU kernel: ``a = (phi(Q) phi(K)^T) * allowed`` with ``phi = relu(W x') + 1e-3``, and
    ``d(W x') = dphi * (W x' > 0)``.
    """
    q4, rank = _to4(q, _dtype)
    k4, _ = _to4(k, _dtype)
    v4, _ = _to4(v, _dtype)
    dy, _ = _to4(dout, _dtype)
    w = _f64(features, _dtype)
    B, Hq, S, D = q4.shape
    Hkv, Sk = k4.shape[1], k4.shape[2]
    m = w.shape[0]
    if causal and S != Sk:
        raise ValueError("causal Performer attention needs Sk == S")
    scale = _dtype(1.0 / np.sqrt(D) if scale is None else scale)  # _dtype scalars: the naive run stays in _dtype
    sq = np.sqrt(scale)
    keys = _key_mask(B, Sk, key_lengths)[:, None, :]
    k4 = np.where(keys[..., None], k4, 0.0)
    vm = np.where(keys[..., None], v4, 0.0)
    qw, kw = (sq * q4) @ w.T, (sq * k4) @ w.T
    allowed = np.broadcast_to(_linear_weights_mask(B, S, Sk, causal, key_lengths), (B, Hq, S, Sk))
    vr = _repeat_kv(vm, Hq)
    if kernel == "relu":
        fq = np.maximum(qw, 0) + _dtype(1e-3)
        fk = np.where(keys[..., None], np.maximum(kw, 0) + _dtype(1e-3), _dtype(0))
        fkr = _repeat_kv(fk, Hq)
        a = np.where(allowed, fq @ fkr.swapaxes(-1, -2), 0.0)
        dnum, dden = _num_den_grads(dy, a @ vr, a.sum(-1), True, eps)
        da = np.where(allowed, dnum @ vr.swapaxes(-1, -2) + dden[..., None], 0.0)
        dqw = (da @ fkr) * (qw > 0)
        dkw = _group_sum(da.swapaxes(-1, -2) @ fq, Hkv) * (kw > 0)
        dq, dk = sq * dqw @ w, sq * dkw @ w
    elif kernel == "softmax":
        fq = np.exp(qw - qw.max(-1, keepdims=True)) / np.sqrt(_dtype(m))
        e = kw - _dtype(0.5) * scale * (k4 * k4).sum(-1, keepdims=True)
        kmax = np.where(keys, e.max(-1), -np.inf)                          # [B, Hkv, Sk]
        fk = np.where(keys[..., None], np.exp(e - e.max(-1, keepdims=True)) / np.sqrt(_dtype(m)), _dtype(0))
        if causal:
            c = np.maximum.accumulate(kmax, axis=-1)
        else:
            c = np.broadcast_to(kmax.max(-1, keepdims=True, initial=-np.inf), kmax.shape[:2] + (S,))
        cr = _repeat_kv(c[..., None], Hq)                                  # [B, Hq, S, 1]
        with np.errstate(over="ignore", invalid="ignore"):
            factor = np.where(allowed, np.exp(_repeat_kv(kmax[:, :, None, :], Hq) - np.where(np.isinf(cr), 0, cr)), 0)
        fkr = _repeat_kv(fk, Hq)
        a = (fq @ fkr.swapaxes(-1, -2)) * factor
        dnum, dden = _num_den_grads(dy, a @ vr, a.sum(-1), True, eps)
        da = np.where(allowed, dnum @ vr.swapaxes(-1, -2) + dden[..., None], 0.0)
        dfq = (da * factor) @ fkr
        dqw = dfq * fq
        top = qw.argmax(-1)
        np.put_along_axis(dqw, top[..., None], np.take_along_axis(dqw, top[..., None], -1) - dqw.sum(-1, keepdims=True),
                          -1)
        de = _group_sum((da * factor).swapaxes(-1, -2) @ fq, Hkv) * fk
        dc = _group_sum(-(da * a).sum(-1), Hkv)                            # [B, Hkv, S]
        kf = e.argmax(-1)
        for b in range(B):
            for g in range(Hkv):
                for t in range(S):
                    seen = np.nonzero(allowed[b, 0, t] if causal else keys[b, 0])[0]
                    if len(seen) and dc[b, g, t] != 0:
                        j = seen[np.argmax(kmax[b, g, seen])]             # first key attaining c_t
                        de[b, g, j, kf[b, g, j]] += dc[b, g, t]
        dq = sq * dqw @ w
        dk = sq * de @ w - scale * de.sum(-1, keepdims=True) * k4
    else:
        raise ValueError(f"kernel must be 'softmax' or 'relu', got {kernel!r}")
    dv = _group_sum(a.swapaxes(-1, -2) @ dnum, Hkv)
    dk = np.where(keys[..., None], dk, 0.0)
    dv = np.where(keys[..., None], dv, 0.0)
    return tuple(_drop_lead(x, rank) for x in (dq, dk, dv))
