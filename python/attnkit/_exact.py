"""Exact attention: attention, attention_weights, merge_attention."""

from __future__ import annotations

from . import _core
from ._array import Call, as_bool, as_float, as_int, output_specs

__all__ = ["attention", "attention_weights", "merge_attention"]

_MASKING_DOC = """
    causal : bool
        Causal masking aligned bottom-right: query ``i`` sees key ``j`` when ``j <= i + (Sk - Sq)``
        (FlashAttention / cuDNN convention; with ``Sq == Sk`` the usual lower triangle).
    window : (left, right) or None
        Local attention: query ``i`` sees keys ``i + a - left <= j <= i + a + right`` with
        ``a = Sk - Sq``. A side that is ``None`` or negative is unbounded.
    mask : bool array or None
        ``True`` = attend. Broadcastable (NumPy rules) to ``[B, Hq, Sq, Sk]``.
    bias : float array or None
        Added to the scores (after ``softcap``). Broadcastable to ``[B, Hq, Sq, Sk]``; any float dtype.
        ``-inf`` entries behave like masked keys.
    key_lengths : int array ``[B]`` or int, optional
        Valid keys per batch entry (right padding): keys ``j >= key_lengths[b]`` are masked. Values
        must lie in ``[0, Sk]``.
    scale : float, optional
        Score scale, default ``1/sqrt(D)``. Any finite value the accumulation type holds
        (for float32, float16 and bfloat16 inputs, which compute in float32: ``|scale| <= 3.4e38``, and
        0 or ``|scale| > 2^-150``, which float32 would hold as 0). Block-sparse, LSH and Linformer
        attention take the same rule.
    softcap : float, optional
        Logit soft-capping ``s -> c * tanh(s / c)`` (Gemma 2, Grok), applied after scaling and before
        bias/ALiBi. ``None`` or ``0`` disables it; ``c`` must be ``>= 0``, with ``c`` and ``1/c`` finite
        in the accumulation type (float32 unless the inputs are float64).
    alibi_slopes : float array ``[Hq]`` or ``[B, Hq]``, optional
        ALiBi: the score of ``(i, j)`` gets ``-slope[h] * |i + a - j|``.
"""


def _set_masking(p, call: Call, causal, window, mask, bias, key_lengths, scale, softcap, alibi_slopes):
    # Arguments left at their defaults keep the params' own (absent tensors, no window, stream 0): every
    # call comes through here, most with nothing but q, k, v.
    if causal is not False:
        p.causal = as_bool(causal, "causal")
    if window is not None:
        try:
            left, right = window
        except (TypeError, ValueError):
            raise ValueError(f"window must be a pair (left, right) or None, got {window!r}") from None
        # A side past int64 allows what any side >= Sq + Sk allows (the validator clamps there too).
        p.window_left = -1 if left is None else max(-1, min(as_int(left, "window[0]", clamp=True), 2**62))
        p.window_right = -1 if right is None else max(-1, min(as_int(right, "window[1]", clamp=True), 2**62))
    if mask is not None:
        p.mask = call.tensor(mask, "mask", coerce=True)
    if bias is not None:
        p.bias = call.tensor(bias, "bias", coerce=True)
    if key_lengths is not None:
        p.key_lengths = call.lengths(key_lengths)
    if alibi_slopes is not None:
        p.alibi_slopes = call.tensor(alibi_slopes, "alibi_slopes", coerce=True)
    if scale is not None:
        p.scale = as_float(scale, "scale")
    if softcap is not None:
        p.softcap = as_float(softcap, "softcap")
    if call.cuda:
        p.stream = call.stream


def attention(q, k, v, *, causal=False, window=None, mask=None, bias=None, key_lengths=None, scale=None,
              softcap=None, alibi_slopes=None, return_lse=False):
    """Exact scaled-dot-product attention (flash-style, O(S) memory).

    Computes, per batch ``b`` and query head ``h``::

        s_ij = scale * q_i . k_j            (then softcap, + bias, - ALiBi)
        out_i = sum_{allowed j} softmax_j(s_i) v_j,   lse_i = log sum_{allowed j} exp(s_ij)

    Parameters
    ----------
    q : array ``[B, Hq, Sq, D]`` (or ``[H, S, D]``, ``[S, D]``)
        Queries: NumPy (CPU backend) or CuPy (CUDA backend); float32, float64, float16 or
        ``ml_dtypes.bfloat16``. Any strides (e.g. transposed ``[B, S, H, D]`` views) are read in place.
        PyTorch / JAX arrays work too (DLPack, zero-copy, answered in kind); bfloat16 on the GPU comes
        that way (``torch.bfloat16`` CUDA tensors, JAX bf16 GPU arrays): CuPy has no bfloat16.
    k : array ``[B, Hkv, Sk, D]``
        Keys, same dtype and rank as ``q``. ``Hq % Hkv == 0``: query head ``h`` uses kv head
        ``h // (Hq // Hkv)`` (grouped-query / multi-query attention).
    v : array ``[B, Hkv, Sk, Dv]``
        Values; ``Dv`` may differ from ``D``.
    MASKING_ARGUMENTS
    return_lse : bool
        Also return the log-sum-exp of the scores, ``[B, Hq, Sq]``.

    Returns
    -------
    out : array ``[B, Hq, Sq, Dv]`` in ``q``'s dtype (rank follows ``q``), or ``(out, lse)`` with ``lse``
    float32 (float64 for float64 inputs). Rows with no allowed key give ``out = 0`` and ``lse = -inf``,
    never NaN. Accumulation is float32 (float64 for float64 inputs). NaN / inf follow IEEE arithmetic over
    the allowed entries (a NaN query row gives NaN ``out`` and ``lse``; a NaN key, every row allowed to see
    it); masked entries (mask, ``-inf`` bias, causal, window, key_lengths) are never read.

    Raises
    ------
    ValueError
        Shapes that do not fit together, bad window / key_lengths / scale / softcap values.
    TypeError
        Unsupported or mismatched dtypes (arrays not in native byte order included), non-array inputs,
        arrays on different devices, non-bool flags, non-integer window sides or key_lengths, a
        ``scale`` / ``softcap`` that is not a real number (Python or NumPy scalars and 0-d arrays are).
    """
    call = Call()
    p = _core.AttentionParams()
    call.qkv(p, q, k, v)
    _set_masking(p, call, causal, window, mask, bias, key_lengths, scale, softcap, alibi_slopes)
    if as_bool(return_lse, "return_lse"):
        out, lse = call.outputs(p, _core.attention_outputs, "out", "lse")
        _core.attention(p)
        return out, lse
    out, = call.outputs(p, _core.attention_outputs, "out")
    _core.attention(p)
    return out


def _with_masking_doc(f):
    f.__doc__ = f.__doc__.replace("    MASKING_ARGUMENTS\n", _MASKING_DOC.lstrip("\n"))
    return f


attention = _with_masking_doc(attention)


def attention_weights(q, k, *, causal=False, window=None, mask=None, bias=None, key_lengths=None, scale=None,
                      softcap=None, alibi_slopes=None):
    """Attention probabilities ``p_ij = softmax_j(s_i)`` over the allowed keys, for inspection and plots.

    Same arguments and masking semantics as :func:`attention` (without ``v``). Returns
    ``[B, Hq, Sq, Sk]`` (rank follows ``q``) in ``q``'s dtype: exact zeros for keys that are not
    allowed, all-zero rows where no key is allowed. This materialises ``Sq * Sk`` values per head by
    design; use :func:`attention` to compute outputs.

    Parameters
    ----------
    q, k : arrays as in :func:`attention`.
    MASKING_ARGUMENTS
    Raises
    ------
    ValueError, TypeError
        As :func:`attention`.
    """
    call = Call()
    p = _core.AttentionParams()
    p.q = call.tensor(q, "q")
    p.k = call.tensor(k, "k")
    _set_masking(p, call, causal, window, mask, bias, key_lengths, scale, softcap, alibi_slopes)
    weights, wref = call.allocate(output_specs(_core.attention_weights_outputs, p)["weights"], "weights")
    _core.attention_weights(p, wref)
    return weights


attention_weights = _with_masking_doc(attention_weights)


def merge_attention(outs, lses):
    """Merges attention results computed over disjoint key sets (split-KV, ring attention, LSH rounds).

    ``lse = logaddexp_p lse_p`` and ``out = sum_p exp(lse_p - lse) * out_p``. Parts whose ``lse`` is
    ``-inf`` (no allowed key) contribute nothing, whatever their ``out``; when every part is empty the
    result is ``out = 0``, ``lse = -inf``.

    Parameters
    ----------
    outs : sequence of arrays ``[..., S, Dv]`` (or one array with the parts along axis 0)
        Partial outputs, one dtype and shape.
    lses : sequence of arrays ``[..., S]`` (or one array with the parts along axis 0)
        Their log-sum-exps: float32 (float64 when ``outs`` are float64), as returned by
        ``attention(..., return_lse=True)``.

    Returns
    -------
    (out, lse) : the merged output (dtype of ``outs``) and log-sum-exp.

    Raises
    ------
    ValueError
        No parts, a different number of outs and lses, mismatched shapes, a 0-d array for ``outs`` or
        ``lses``.
    TypeError
        Mismatched dtypes or devices, ``outs`` / ``lses`` that are neither a sequence nor an array.
    """
    call = Call()
    outs, lses = _parts(outs, "outs"), _parts(lses, "lses")
    p = _core.MergeParams()
    p.outs = [call.tensor(o, f"outs[{i}]") for i, o in enumerate(outs)]
    p.lses = [call.tensor(x, f"lses[{i}]") for i, x in enumerate(lses)]
    p.stream = call.stream
    out, lse = call.outputs(p, _core.merge_attention_outputs, "out", "lse")
    _core.merge_attention(p)
    return out, lse


def _parts(x, name: str) -> list:
    """The parts of merge_attention's `name`: a sequence of arrays, or one array's slices along axis 0."""
    shape = getattr(x, "shape", None)
    if shape is not None:
        if len(shape) == 0:
            raise ValueError(f"{name} must be a sequence of arrays or one array with the parts along axis 0, "
                             "got a 0-d array")
        return [x[i] for i in range(shape[0])]
    try:
        return list(x)
    except TypeError:
        raise TypeError(f"{name} must be a sequence of arrays or one array with the parts along axis 0, "
                        f"got {type(x).__name__}") from None
