"""Backward passes (gradients) of exact, block-sparse, Linformer, linear and Performer attention."""

from __future__ import annotations

from . import _core
from ._array import Call, acc_dtype, as_bool, astype
from ._exact import _set_masking, _with_masking_doc
from ._linear import _linear_params, _performer_params, _state_pair
from ._sparse import _block_sparse_params

__all__ = ["attention_backward", "block_sparse_attention_backward", "linformer_attention_backward",
           "linear_attention_backward", "performer_attention_backward"]


def _grads(call: Call, bp, query, dout, *extra):
    """Fills bp.grad (dout in) and allocates dq, dk, dv (and the `extra` outputs) from the backward's
    output query: the validator checks every input first and owns the outputs' shapes and dtypes."""
    bp.grad.dout = call.tensor(dout, "dout")
    return call.outputs(bp, query, "grad.dq", "grad.dk", "grad.dv", *extra)


def _reduce_to(full, shape, dtype):
    """Sums a [B, Hq, Sq, Sk] gradient over the dimensions a bias of `shape` was broadcast along."""
    lead = full.ndim - len(shape)
    axes = tuple(range(lead)) + tuple(lead + d for d, n in enumerate(shape) if n == 1 and full.shape[lead + d] != 1)
    red = full.sum(axis=axes, keepdims=True) if axes else full
    return astype(red.reshape(shape), dtype)  # bfloat16 on CUDA included


def attention_backward(dout, q, k, v, out, lse, *, causal=False, window=None, mask=None, bias=None, key_lengths=None,
                       scale=None, softcap=None, alibi_slopes=None, return_dbias=False):
    """Gradients of :func:`attention` with respect to ``q``, ``k``, ``v`` (and ``bias``).

    FlashAttention-2's backward pass: the scores are recomputed tile by tile from ``lse`` (never stored),
    with ``delta_i = dout_i . out_i``, so the extra memory is O(S). With ``p_ij = exp(s_ij - lse_i)``::

        dv_j = sum_i p_ij dout_i                  dS_ij = p_ij (dout_i . v_j - delta_i)
        dq_i = scale sum_j dS'_ij k_j             dk_j = scale sum_i dS'_ij q_i

    where ``dS' = dS * (1 - tanh(x / c)^2)`` under ``softcap = c`` (``dS' = dS`` without). GQA: ``dk`` and
    ``dv`` of a kv head sum the contributions of its query heads. Rows with no allowed key contribute
    nothing (zero ``dq``, never NaN). The result does not depend on the number of threads.

    Parameters
    ----------
    dout : array shaped like ``out``
        Gradient of the loss with respect to ``out``, in ``q``'s dtype.
    q, k, v : arrays as in :func:`attention`
        The forward call's inputs.
    out, lse : arrays
        The forward call's results, ``attention(q, k, v, ..., return_lse=True)``, computed with the SAME
        masking arguments as given here.
    MASKING_ARGUMENTS
    return_dbias : bool
        Also return ``dbias``, the gradient with respect to ``bias`` (shaped and typed like ``bias``: summed
        over the dimensions it was broadcast along). Needs a ``bias``; costs ``B * Hq * Sq * Sk`` memory.

    Returns
    -------
    ``(dq, dk, dv)`` shaped like ``q``, ``k``, ``v`` in ``q``'s dtype, or ``(dq, dk, dv, dbias)``.
    Accumulation is float32 (float64 for float64 inputs).

    Raises
    ------
    ValueError
        ``dout`` not shaped like ``out``, ``lse`` or ``out`` of another shape, ``return_dbias`` without a
        bias, and every error of :func:`attention`.
    TypeError
        Non-float or mismatched dtypes (``dout`` included), non-array inputs.
    """
    return_dbias = as_bool(return_dbias, "return_dbias")
    if return_dbias and bias is None:
        raise ValueError("return_dbias=True needs a bias (bias is None)")
    call = Call()
    p = _core.AttentionParams()
    p.q = call.tensor(q, "q")
    p.k = call.tensor(k, "k")
    p.v = call.tensor(v, "v")
    p.out = call.tensor(out, "out")
    p.lse = call.tensor(lse, "lse")
    _set_masking(p, call, causal, window, mask, bias, key_lengths, scale, softcap, alibi_slopes)
    bp = _core.AttentionBackwardParams()
    bp.fwd = p
    grads = _grads(call, bp, _core.attention_backward_outputs, dout, *(("grad.dbias",) if return_dbias else ()))
    _core.attention_backward(bp.fwd, bp.grad)
    if not return_dbias:
        return tuple(grads)
    b = call.array(bias, "bias", coerce=True)
    return tuple(grads[:3]) + (_reduce_to(grads[3], b.shape, b.dtype),)


attention_backward = _with_masking_doc(attention_backward)


def block_sparse_attention_backward(dout, q, k, v, out, lse, layout, *, causal=False, scale=None, key_lengths=None):
    """Gradients of :func:`block_sparse_attention` with respect to ``q``, ``k`` and ``v``.

    The backward kernel of :func:`attention_backward` visiting only the layout's allowed blocks (its cost
    follows their number; memory O(S)). Same formulas, GQA sums and empty-row rule.

    Parameters
    ----------
    dout : array shaped like ``out``, in ``q``'s dtype.
    q, k, v, layout : as in :func:`block_sparse_attention`.
    out, lse : the forward call's results (``return_lse=True``) with the same layout and arguments.
    causal, scale, key_lengths : as in :func:`block_sparse_attention`.

    Returns
    -------
    ``(dq, dk, dv)`` shaped like ``q``, ``k``, ``v`` in ``q``'s dtype.

    Raises
    ------
    ValueError, TypeError
        As :func:`attention_backward` and :func:`block_sparse_attention`.
    """
    call = Call()
    p = _block_sparse_params(call, q, k, v, layout, causal, scale, key_lengths)
    p.out = call.tensor(out, "out")
    p.lse = call.tensor(lse, "lse")
    bp = _core.BlockSparseBackwardParams()
    bp.fwd = p
    grads = _grads(call, bp, _core.block_sparse_attention_backward_outputs, dout)
    _core.block_sparse_attention_backward(bp.fwd, bp.grad)
    return tuple(grads)


def linformer_attention_backward(dout, q, k, v, out, lse, E, F=None, *, scale=None, key_lengths=None):
    """Gradients of :func:`linformer_attention` with respect to ``q``, ``k``, ``v``, ``E`` and ``F``.

    Linformer is exact attention over the projections ``K' = E k`` and ``V' = F v``, so its backward is
    :func:`attention_backward` on ``(q, K', V')`` followed by the projections' chain rule (per batch ``b``
    and kv head ``g``)::

        dk = E^T dK'      dv = F^T dV'      dE = sum_b dK' k^T      dF = sum_b dV' v^T

    (``dE`` / ``dF`` also sum over the kv heads when ``E`` / ``F`` is shared, ``[P, Sk]``). Padded keys
    (``j >= key_lengths[b]``) get zero ``dk`` / ``dv`` and add nothing to ``dE`` / ``dF``. The projections
    and their gradients are float32 matrix products (float64 for float64 inputs); ``K'`` and ``V'`` are
    rounded to ``q``'s dtype for the attention kernel, as in the forward.

    Parameters
    ----------
    dout : array shaped like ``out``, in ``q``'s dtype.
    q, k, v, E, F, scale, key_lengths : as in :func:`linformer_attention`.
    out, lse : the forward call's results (``return_lse=True``).

    Returns
    -------
    ``(dq, dk, dv, dE, dF)``: shaped like ``q``, ``k``, ``v`` (``q``'s dtype) and ``E``, ``F`` (their
    dtypes); ``dF`` is None when ``F`` was None (``F = E``: its gradient is included in ``dE``).

    Raises
    ------
    ValueError, TypeError
        As :func:`linformer_attention` and :func:`attention_backward`.
    """
    from ._array import is_cuda_array
    from ._linear import linformer_attention

    # The forward validates every argument (shapes of E / F against k, key_lengths, dtypes, devices).
    linformer_attention(q[..., :0, :] if getattr(q, "ndim", 0) >= 2 else q, k, v, E, F, scale=scale,
                        key_lengths=key_lengths)
    if is_cuda_array(q):  # pragma: no cover - needs a GPU
        import cupy as xp
    else:
        import numpy as xp
    acc = acc_dtype(q.dtype)
    Sk = k.shape[-2]
    k4 = k.reshape((1,) * (4 - k.ndim) + k.shape).astype(acc)
    v4 = v.reshape((1,) * (4 - v.ndim) + v.shape).astype(acc)
    if key_lengths is not None:
        lens = xp.broadcast_to(xp.asarray(key_lengths).astype(xp.int64).reshape(-1), (k4.shape[0],))
        keep = (xp.arange(Sk)[None, :] < lens[:, None])[:, None, :, None]
        k4 = xp.where(keep, k4, 0)
        v4 = xp.where(keep, v4, 0)
    e = E.astype(acc)
    f = e if F is None else F.astype(acc)
    e3 = e[None] if e.ndim == 2 else e            # [Hkv or 1, P, Sk]
    f3 = f[None] if f.ndim == 2 else f
    kp = astype(e3[None] @ k4, q.dtype)           # [B, Hkv, P, D]
    vp = astype(f3[None] @ v4, q.dtype)
    lead = q.ndim - 2                             # K' and V' take q's rank
    kp = kp.reshape(kp.shape[4 - q.ndim:]) if lead < 2 else kp
    vp = vp.reshape(vp.shape[4 - q.ndim:]) if lead < 2 else vp
    dq, dkp, dvp = attention_backward(dout, q, kp, vp, out, lse, scale=scale)
    dkp = dkp.reshape((1,) * (4 - dkp.ndim) + dkp.shape).astype(acc)
    dvp = dvp.reshape((1,) * (4 - dvp.ndim) + dvp.shape).astype(acc)
    dk = e3[None].swapaxes(-1, -2) @ dkp          # [B, Hkv, Sk, D]
    dv = f3[None].swapaxes(-1, -2) @ dvp
    if key_lengths is not None:
        dk = xp.where(keep, dk, 0)
        dv = xp.where(keep, dv, 0)
    dE = (dkp @ k4.swapaxes(-1, -2)).sum(axis=0)  # [Hkv, P, Sk]
    dF = (dvp @ v4.swapaxes(-1, -2)).sum(axis=0)
    if e.ndim == 2:
        dE = dE.sum(axis=0)
        dF = dF.sum(axis=0)
    if F is None:
        dE = dE + dF
    dk = astype(dk.reshape(k.shape), q.dtype)
    dv = astype(dv.reshape(v.shape), q.dtype)
    return dq, dk, dv, astype(dE, E.dtype), (None if F is None else astype(dF, F.dtype))


def linear_attention_backward(dout, q, k, v, *, feature_map="elu1", causal=True, normalize=True, eps=1e-6,
                              key_lengths=None, initial_state=None, dfinal_state=None):
    """Gradients of :func:`linear_attention` with respect to ``q``, ``k``, ``v`` (and ``initial_state``).

    The forward is recomputed (no forward result is needed). Per batch ``b`` and query head, with
    ``num_t = phi(q_t)^T S_t``, ``r_t = 1 / (phi(q_t)^T z_t + eps)`` and ``y_t = r_t num_t``::

        dnum_t = r_t dout_t                 dden_t = -r_t (dout_t . y_t)      (normalize; else dout_t, 0)
        dphi(q_t) = S_t dnum_t + z_t dden_t
        G_j = dS_final + sum_{t sees j} phi(q_t) dnum_t^T,   g_j = dz_final + sum_{t sees j} phi(q_t) dden_t
        dphi(k_j) = G_j v_j + g_j           dv_j = G_j^T phi(k_j)              dS_0 = G_0, dz_0 = g_0

    where ``t sees j`` is ``j <= t`` when causal (every ``t`` otherwise) and ``j < key_lengths[b]``. The
    gradients then go through the feature map: ``elu1``: ``1`` for ``x > 0``, ``e^x`` otherwise;
    ``relu``: ``1`` for ``x > 0``, else ``0``; ``identity``: ``1``. Rows whose denominator is exactly 0
    (output 0 by contract) pass no gradient; padded keys get zero ``dk`` / ``dv``. GQA: ``dk`` / ``dv``
    (and the state gradients) sum over the query heads of a kv head.

    Causal attention runs as two chunked scans (forward for ``dq``, reverse for ``dk``, ``dv`` and the
    state), with O(S) memory and no ``S x S`` matrix; bidirectional attention uses the global state. The
    result does not depend on the number of threads.

    Parameters
    ----------
    dout : array shaped like the forward's output, in ``q``'s dtype.
    q, k, v, feature_map, causal, normalize, eps, key_lengths, initial_state : as in
        :func:`linear_attention`.
    dfinal_state : (dS, dz), optional
        Gradient with respect to the forward's returned state (``return_state=True``), shaped and typed
        like ``initial_state``: what a later call that continued from that state sends back.

    Returns
    -------
    ``(dq, dk, dv)`` shaped like ``q``, ``k``, ``v`` in ``q``'s dtype, or ``(dq, dk, dv, (dS0, dz0))``
    when ``initial_state`` is given (shaped and typed like it). Accumulation is float32 (float64 for
    float64 inputs).

    Raises
    ------
    ValueError, TypeError
        As :func:`linear_attention`; ``dout`` or ``dfinal_state`` of the wrong shape or dtype.
    """
    call = Call()
    bp = _core.LinearAttentionBackwardParams()
    bp.fwd = _linear_params(call, q, k, v, feature_map, causal, normalize, eps, key_lengths, initial_state)
    bp.dout = call.tensor(dout, "dout")
    if dfinal_state is not None:
        bp.dfinal_state, bp.dfinal_normalizer = _state_pair(call, dfinal_state, "dfinal_state")
    names = ("dq", "dk", "dv") + (("dinitial_state", "dinitial_normalizer") if initial_state is not None else ())
    grads = call.outputs(bp, _core.linear_attention_backward_outputs, *names)
    _core.linear_attention_backward(bp)
    return tuple(grads) if initial_state is None else tuple(grads[:3]) + (tuple(grads[3:]),)


def performer_attention_backward(dout, q, k, v, features, *, kernel="softmax", causal=False, scale=None,
                                 eps=1e-6, key_lengths=None):
    """Gradients of :func:`performer_attention` with respect to ``q``, ``k`` and ``v`` (``features`` is a
    constant: no gradient).

    The linear-attention backward of :func:`linear_attention_backward` on the Performer features, then
    through them (``x' = sqrt(scale) x``, ``w_f`` the rows of ``features``)::

        "softmax":  d(w_f . x') = dphi_f phi_f;  keys also -|x'|^2 / 2:  dk = sqrt(scale) W^T de - scale (sum_f de_f) k
        "relu":     d(w_f . x') = dphi_f for w_f . x' > 0, else 0

    The softmax kernel's stabilizers (the query's row maximum ``max_f w_f . q'``, the keys' running
    maximum of ``w_f . k' - |k'|^2 / 2``) are differentiated as the functions of ``q`` and ``k`` they are:
    a query row's stabilizer gets ``-eps / (den + eps) (dout . out)``, sent to the maximizing feature, and
    so does the key that attains the keys' stabilizer seen by that row (the first on ties). With
    ``eps = 0`` these terms are 0 (the forward does not depend on the stabilizers); with ``eps > 0`` they
    make the result the exact gradient of what :func:`performer_attention` computes.

    Parameters
    ----------
    dout : array shaped like the forward's output, in ``q``'s dtype.
    q, k, v, features, kernel, causal, scale, eps, key_lengths : as in :func:`performer_attention`.

    Returns
    -------
    ``(dq, dk, dv)`` shaped like ``q``, ``k``, ``v`` in ``q``'s dtype (GQA: ``dk``, ``dv`` summed over
    the group's query heads).

    Raises
    ------
    ValueError, TypeError
        As :func:`performer_attention`; ``dout`` of the wrong shape or dtype.
    """
    call = Call()
    bp = _core.PerformerBackwardParams()
    bp.fwd = _performer_params(call, q, k, v, features, kernel, causal, scale, eps, key_lengths)
    bp.dout = call.tensor(dout, "dout")
    grads = call.outputs(bp, _core.performer_attention_backward_outputs, "dq", "dk", "dv")
    _core.performer_attention_backward(bp)
    return tuple(grads)
