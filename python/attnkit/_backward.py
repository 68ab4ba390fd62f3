"""Backward passes (gradients) of exact and block-sparse attention."""

from __future__ import annotations

from . import _core
from ._array import Call, acc_dtype, as_bool, as_float
from ._exact import _set_masking, _with_masking_doc
from ._sparse import BlockLayout

__all__ = ["attention_backward", "block_sparse_attention_backward"]


def _grads(call: Call, dout, q, k, v):
    """The AttentionGrads of a call: dout in, dq / dk / dv allocated like q / k / v."""
    g = _core.AttentionGrads()
    g.dout = call.tensor(dout, "dout")
    dq, g.dq = call.empty(q.shape, q.dtype)
    dk, g.dk = call.empty(k.shape, q.dtype)
    dv, g.dv = call.empty(v.shape, q.dtype)
    return g, (dq, dk, dv)


def _reduce_to(full, shape, dtype):
    """Sums a [B, Hq, Sq, Sk] gradient over the dimensions a bias of `shape` was broadcast along."""
    lead = full.ndim - len(shape)
    axes = tuple(range(lead)) + tuple(lead + d for d, n in enumerate(shape) if n == 1 and full.shape[lead + d] != 1)
    red = full.sum(axis=axes, keepdims=True) if axes else full
    return red.reshape(shape).astype(dtype)


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
    g, grads = _grads(call, dout, q, k, v)
    dbias_full = None
    if return_dbias and q.ndim >= 2 and k.ndim >= 2:
        q4 = (1,) * (4 - q.ndim) + tuple(q.shape) if q.ndim <= 4 else tuple(q.shape)
        dbias_full, g.dbias = call.empty(q4[:3] + (k.shape[-2],), acc_dtype(q.dtype))
    _core.attention_backward(p, g)
    if not return_dbias:
        return grads
    b = call.array(bias, "bias", coerce=True)
    return grads + (_reduce_to(dbias_full, b.shape, b.dtype),)


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
    if not isinstance(layout, BlockLayout):
        raise TypeError(f"layout must be an attnkit.BlockLayout, got {type(layout).__name__}")
    call = Call()
    p = _core.BlockSparseParams()
    p.q = call.tensor(q, "q")
    p.k = call.tensor(k, "k")
    p.v = call.tensor(v, "v")
    p.out = call.tensor(out, "out")
    p.lse = call.tensor(lse, "lse")
    p.layout = layout._ref()
    p.causal = as_bool(causal, "causal")
    if scale is not None:
        p.scale = as_float(scale, "scale")
    p.key_lengths = call.lengths(key_lengths)
    p.stream = call.stream
    g, grads = _grads(call, dout, q, k, v)
    _core.block_sparse_attention_backward(p, g)
    return grads
