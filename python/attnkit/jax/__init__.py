"""attnkit as JAX operations: the C++ kernels as XLA custom calls (``jax.ffi``, typed FFI), with gradients.

``attention``, ``block_sparse_attention``, ``linear_attention``, ``performer_attention`` and
``linformer_attention`` take and return JAX arrays, and work under ``jax.jit``, ``jax.grad`` (a
``jax.custom_vjp`` whose backward pass runs attnkit's C++ backward kernels, again through the FFI) and
``jax.vmap`` (over any leading axes: the handlers loop over them; an argument that is not mapped is read
in place, not copied), on the CPU and, in builds with the CUDA backend, on CUDA devices (on the stream
XLA gives the call). Semantics and arguments are those of the NumPy functions of the same name in
:mod:`attnkit`; bad shapes and dtypes raise ``ValueError`` / ``TypeError`` naming the argument when the
function is traced (the C++ validators check the abstract shapes), and run-time values (``key_lengths``
out of range) raise JAX's runtime error with attnkit's message.

Importing this module imports JAX (``import attnkit`` never does). It needs an attnkit built with the
XLA FFI headers of jaxlib (``pip install attnkit`` brings jaxlib into the build environment); otherwise the
import raises ``ImportError`` saying how to rebuild.
"""

from __future__ import annotations

try:
    import jax
    import jax.numpy as jnp
except ImportError as e:  # pragma: no cover - exercised only without jax
    raise ImportError("attnkit.jax needs JAX: pip install jax") from e

import numpy as np
from jax.custom_derivatives import SymbolicZero

from .. import _core
from .._array import acc_dtype, as_bool
from .._exact import _set_masking, _with_masking_doc
from .._linear import _linear_params, _linformer_params, _performer_params
from .._sparse import _block_sparse_params
from . import _ffi
from ._ffi import Check, f64

__all__ = ["attention", "block_sparse_attention", "linear_attention", "performer_attention",
           "linformer_attention"]


# ---------------------------------------------------------------------------------------- helpers
def _array(x, name: str):
    """q / k / v and other main operands: JAX or NumPy arrays (not lists), as JAX arrays."""
    if x is None or not (isinstance(x, (jax.Array, np.ndarray, np.generic)) or hasattr(x, "__jax_array__")):
        raise TypeError(f"{name} must be a JAX or NumPy array, got {type(x).__name__}")
    return jnp.asarray(x)


def _aux(x):
    """Masks, biases, slopes, lengths: anything array-like (None stays None)."""
    return None if x is None else jnp.asarray(x)


def _lengths(x):
    if x is None:
        return None
    x = jnp.asarray(x)
    if jnp.issubdtype(x.dtype, jnp.integer) and x.dtype not in (jnp.int32, jnp.int64):
        x = x.astype(jnp.int32)
    return x


def _operands(q, k, v, key_lengths):
    """What every operation starts with: q, k, v and key_lengths as JAX arrays, and a fresh Check."""
    return _array(q, "q"), _array(k, "k"), _array(v, "v"), _lengths(key_lengths), Check()


def _primal(p):
    """(value, perturbed) of a custom_vjp forward-rule argument (symbolic_zeros=True); None stays None."""
    return (None, False) if p is None else (p.value, p.perturbed)


@jax.tree_util.register_static
class _Static:
    """Static (trace-time) facts carried from a forward rule to its backward rule as a residual."""

    def __init__(self, **kw):
        self.__dict__.update(kw)


def _reduce_to(full, shape, dtype):
    """Sums a gradient computed at the broadcast shape down to the shape of the argument it came from."""
    lead = full.ndim - len(shape)
    axes = tuple(range(lead)) + tuple(lead + d for d, n in enumerate(shape) if n == 1 and full.shape[lead + d] != 1)
    return (full.sum(axis=axes, keepdims=True) if axes else full).reshape(shape).astype(dtype)


def _grad_specs(q, k, v):
    """The results dq, dk, dv of a backward call: shaped like q, k, v, in q's dtype."""
    return dict(dq=jax.ShapeDtypeStruct(q.shape, q.dtype), dk=jax.ShapeDtypeStruct(k.shape, q.dtype),
                dv=jax.ShapeDtypeStruct(v.shape, q.dtype))


def _zero_cotangent(g, like):
    return jnp.zeros(like.shape, like.dtype) if isinstance(g, SymbolicZero) else g


# ---------------------------------------------------------------------------------------- attention
def attention(q, k, v, *, causal=False, window=None, mask=None, bias=None, key_lengths=None, scale=None,
              softcap=None, alibi_slopes=None):
    """Exact scaled-dot-product attention, :func:`attnkit.attention` as a JAX operation (O(S) memory).

    ``s_ij = scale * q_i . k_j`` (then softcap, ``+ bias``, ``- ALiBi``), ``out_i = sum_j softmax_j(s_i) v_j``
    over the allowed keys; rows with no allowed key give 0. Gradients (``jax.grad``, ``jax.vjp``) flow
    into ``q``, ``k``, ``v`` and, when they are differentiated, ``bias`` and ``alibi_slopes`` (the backward
    kernel then also writes the ``[B, Hq, Sq, Sk]`` score gradient, so only then does the backward pass
    use O(Sq * Sk) memory); the backward pass is FlashAttention-2's (:func:`attnkit.attention_backward`).

    Parameters
    ----------
    q : array ``[B, Hq, Sq, D]`` (or ``[H, S, D]``, ``[S, D]``)
        float32, float64 (with ``jax_enable_x64``), float16 or bfloat16.
    k : array ``[B, Hkv, Sk, D]``
        Same dtype and rank as ``q``; ``Hq % Hkv == 0`` (GQA: query head ``h`` uses kv head
        ``h // (Hq // Hkv)``).
    v : array ``[B, Hkv, Sk, Dv]``
    MASKING_ARGUMENTS
    Returns
    -------
    out : array ``[B, Hq, Sq, Dv]`` in ``q``'s dtype (rank follows ``q``).

    Raises
    ------
    ValueError, TypeError
        As :func:`attnkit.attention`, when the call is traced.
    """
    q, k, v, lens, check = _operands(q, k, v, key_lengths)
    mask, bias, alibi = _aux(mask), _aux(bias), _aux(alibi_slopes)
    p = _core.AttentionParams()
    p.q, p.k, p.v = check.ref(q, "q"), check.ref(k, "k"), check.ref(v, "v")
    _set_masking(p, check, causal, window, mask, bias, lens, scale, softcap, alibi)
    out, lse = check.outputs(_core.attention_outputs, p, "out", "lse")
    cfg = _Static(out=out, lse=lse, attrs=_masking_attrs(p))
    return _attention(cfg, q, k, v, mask, bias, lens, alibi)


attention = _with_masking_doc(attention)


def _masking_attrs(p):
    """The FFI attributes of an AttentionParams' validated masking scalars."""
    return dict(causal=bool(p.causal), window_left=np.int64(p.window_left), window_right=np.int64(p.window_right),
                scale=f64(p.scale), softcap=f64(p.softcap))


def _attention_forward(cfg, q, k, v, mask, bias, lens, alibi):
    return _ffi.call("attention", dict(q=q, k=k, v=v, mask=mask, bias=bias, key_lengths=lens, alibi_slopes=alibi),
                     dict(out=cfg.out, lse=cfg.lse), **cfg.attrs)


def _attention_backward(attrs, q, k, v, out, lse, dout, mask=None, bias=None, lens=None, alibi=None, dbias=False):
    """(dq, dk, dv) of exact attention from the C++ backward kernel, plus the ``[B, Hq, Sq, Sk]`` score
    gradient when ``dbias``."""
    results = _grad_specs(q, k, v)
    if dbias:
        q4 = (1,) * (4 - q.ndim) + tuple(q.shape)
        results["dbias"] = jax.ShapeDtypeStruct(q4[:3] + (k.shape[-2],), acc_dtype(q.dtype))
    return _ffi.call("attention_backward", dict(q=q, k=k, v=v, out=out, lse=lse, dout=dout, mask=mask, bias=bias,
                                                key_lengths=lens, alibi_slopes=alibi), results, **attrs)


@jax.custom_vjp
def _attention(cfg, q, k, v, mask, bias, lens, alibi):
    return _attention_forward(cfg, q, k, v, mask, bias, lens, alibi)[0]


def _attention_fwd(cfg, q, k, v, mask, bias, lens, alibi):
    (q, _), (k, _), (v, _), (mask, _), (bias, dbias), (lens, _), (alibi, dalibi) = map(
        _primal, (q, k, v, mask, bias, lens, alibi))
    out, lse = _attention_forward(cfg, q, k, v, mask, bias, lens, alibi)
    return out, (q, k, v, mask, bias, lens, alibi, out, lse, _Static(cfg=cfg, dbias=dbias, dalibi=dalibi))


def _attention_bwd(res, g):
    q, k, v, mask, bias, lens, alibi, out, lse, st = res
    want = st.dbias or st.dalibi
    grads = _attention_backward(st.cfg.attrs, q, k, v, out, lse, _zero_cotangent(g, out), mask, bias, lens, alibi,
                                dbias=want)
    dbias = dalibi = None
    if want:
        ds = grads[3]
        if st.dbias:
            dbias = _reduce_to(ds, bias.shape, bias.dtype)
        if st.dalibi:
            Sq, Sk = ds.shape[-2:]
            dist = jnp.abs(jnp.arange(Sq)[:, None] + (Sk - Sq) - jnp.arange(Sk)[None, :]).astype(ds.dtype)
            dalibi = _reduce_to(-(ds * dist).sum(axis=(-1, -2)), alibi.shape, alibi.dtype)
    return (None, *grads[:3], None, dbias, None, dalibi)


_attention.defvjp(_attention_fwd, _attention_bwd, symbolic_zeros=True)


# ---------------------------------------------------------------------------------------- block-sparse
def block_sparse_attention(q, k, v, layout, *, causal=False, scale=None, key_lengths=None):
    """Block-sparse attention, :func:`attnkit.block_sparse_attention` as a JAX operation.

    Exact attention restricted to the key blocks ``layout`` (an :class:`attnkit.BlockLayout`, a static
    argument: its CSR is compiled into the call) allows, at a cost that follows their number; gradients
    into ``q``, ``k``, ``v`` from :func:`attnkit.block_sparse_attention_backward`.

    Parameters
    ----------
    q, k, v : arrays as in :func:`attention`.
    layout : attnkit.BlockLayout
    causal, scale, key_lengths : as in :func:`attention`.

    Returns
    -------
    out : array ``[B, Hq, Sq, Dv]`` in ``q``'s dtype.

    Raises
    ------
    ValueError, TypeError
        As :func:`attnkit.block_sparse_attention`, when the call is traced.
    """
    q, k, v, lens, check = _operands(q, k, v, key_lengths)
    p = _block_sparse_params(check, q, k, v, layout, causal, scale, lens)
    out, lse = check.outputs(_core.block_sparse_attention_outputs, p, "out", "lse")
    lay = layout._impl
    cfg = _Static(out=out, lse=lse, attrs=dict(
        causal=bool(p.causal), scale=f64(p.scale), layout_row_ptr=np.asarray(lay.row_ptr, np.int64),
        layout_col_idx=np.asarray(lay.col_idx, np.int32), block_q=np.int64(lay.block_q),
        block_k=np.int64(lay.block_k), num_heads=np.int64(lay.num_heads), num_q_blocks=np.int64(lay.num_q_blocks),
        num_k_blocks=np.int64(lay.num_k_blocks)))
    # The CSR also as buffers: a CUDA handler's kernels read it from device memory (the CPU handler ignores them).
    csr = (jnp.asarray(cfg.attrs["layout_row_ptr"]), jnp.asarray(cfg.attrs["layout_col_idx"]))
    return _block_sparse(cfg, q, k, v, lens, csr)


def _block_sparse_forward(cfg, q, k, v, lens, csr):
    return _ffi.call("block_sparse_attention", dict(q=q, k=k, v=v, key_lengths=lens, row_ptr=csr[0], col_idx=csr[1]),
                     dict(out=cfg.out, lse=cfg.lse), **cfg.attrs)


@jax.custom_vjp
def _block_sparse(cfg, q, k, v, lens, csr):
    return _block_sparse_forward(cfg, q, k, v, lens, csr)[0]


def _block_sparse_fwd(cfg, q, k, v, lens, csr):
    q, k, v, lens = (_primal(a)[0] for a in (q, k, v, lens))
    csr = tuple(c.value for c in csr)
    out, lse = _block_sparse_forward(cfg, q, k, v, lens, csr)
    return out, (q, k, v, lens, csr, out, lse, cfg)


def _block_sparse_bwd(res, g):
    q, k, v, lens, csr, out, lse, cfg = res
    results = _grad_specs(q, k, v)
    dq, dk, dv = _ffi.call("block_sparse_attention_backward",
                           dict(q=q, k=k, v=v, out=out, lse=lse, dout=_zero_cotangent(g, out), key_lengths=lens,
                                row_ptr=csr[0], col_idx=csr[1]), results, **cfg.attrs)
    return None, dq, dk, dv, None, (None, None)


_block_sparse.defvjp(_block_sparse_fwd, _block_sparse_bwd, symbolic_zeros=True)


# ---------------------------------------------------------------------------------------- Linformer
def linformer_attention(q, k, v, E, F=None, *, scale=None, key_lengths=None):
    """Linformer attention, :func:`attnkit.linformer_attention` as a JAX operation.

    ``K' = E k`` and ``V' = F v`` per batch and kv head (``F = E`` when ``F`` is None), then exact attention
    of ``q`` over the ``P`` projected keys; keys ``j >= key_lengths[b]`` count as zero rows. Gradients flow
    into ``q``, ``k``, ``v``, ``E`` and ``F``: the exact backward kernel on ``(q, K', V')`` (from the
    forward's log-sum-exp), then the projections' chain rule (as :func:`attnkit.linformer_attention_backward`).

    Parameters
    ----------
    q, k, v : arrays as in :func:`attention`.
    E : array ``[P, Sk]`` (shared) or ``[Hkv, P, Sk]`` (per kv head), any float dtype.
    F : array like ``E``, optional.
    scale, key_lengths : as in :func:`attention`.

    Returns
    -------
    out : array ``[B, Hq, S, Dv]`` in ``q``'s dtype.

    Raises
    ------
    ValueError, TypeError
        As :func:`attnkit.linformer_attention`, when the call is traced.
    """
    q, k, v, lens, check = _operands(q, k, v, key_lengths)
    E, F = _array(E, "E"), (None if F is None else _array(F, "F"))
    p = _linformer_params(check, q, k, v, E, F, scale, lens)
    out, lse = check.outputs(_core.linformer_attention_outputs, p, "out", "lse")
    # The backward pass runs the exact kernel on (q, K', V'): its attributes are those of attention(scale=).
    attrs = dict(causal=False, window_left=np.int64(-1), window_right=np.int64(-1), scale=f64(p.scale),
                 softcap=np.float64(0))
    return _linformer(_Static(out=out, lse=lse, attrs=attrs), q, k, v, E, F, lens)


def _linformer_forward(cfg, q, k, v, E, F, lens):
    return _ffi.call("linformer_attention", dict(q=q, k=k, v=v, E=E, F=F, key_lengths=lens),
                     dict(out=cfg.out, lse=cfg.lse), scale=cfg.attrs["scale"])


@jax.custom_vjp
def _linformer(cfg, q, k, v, E, F, lens):
    return _linformer_forward(cfg, q, k, v, E, F, lens)[0]


def _linformer_fwd(cfg, q, k, v, E, F, lens):
    q, k, v, E, F, lens = (_primal(a)[0] for a in (q, k, v, E, F, lens))
    out, lse = _linformer_forward(cfg, q, k, v, E, F, lens)
    return out, (q, k, v, E, F, lens, out, lse, cfg)


def _projections(q, lens, k, v, E, F):
    """``(K', V')`` as the forward kernel forms them: accumulated in float32 (float64 for float64), padded
    keys as zero rows, rounded to ``q``'s dtype, in ``q``'s rank."""
    acc = acc_dtype(q.dtype)
    Sk = k.shape[-2]
    k4 = k.reshape((1,) * (4 - k.ndim) + k.shape).astype(acc)
    v4 = v.reshape((1,) * (4 - v.ndim) + v.shape).astype(acc)
    if lens is not None:
        keep = (jnp.arange(Sk)[None, :] < jnp.broadcast_to(lens.reshape(-1), (k4.shape[0],))[:, None])[:, None, :, None]
        k4, v4 = jnp.where(keep, k4, 0), jnp.where(keep, v4, 0)

    def project(P, x4):
        P3 = P.astype(acc)
        P3 = P3[None] if P3.ndim == 2 else P3       # [Hkv or 1, P, Sk]
        y = (P3[None] @ x4).astype(q.dtype)          # [B, Hkv, P, D]
        return y.reshape(y.shape[4 - q.ndim:])

    return project(E, k4), project(E if F is None else F, v4)


def _linformer_bwd(res, g):
    q, k, v, E, F, lens, out, lse, cfg = res
    (kp, vp), pull = jax.vjp(lambda k, v, E, F: _projections(q, lens, k, v, E, F), k, v, E, F)
    dq, dkp, dvp = _attention_backward(cfg.attrs, q, kp, vp, out, lse, _zero_cotangent(g, out))
    dk, dv, dE, dF = pull((dkp, dvp))
    return None, dq, dk, dv, dE, dF, None


_linformer.defvjp(_linformer_fwd, _linformer_bwd, symbolic_zeros=True)


# ---------------------------------------------------------------------------------------- linear / Performer
def linear_attention(q, k, v, *, feature_map="elu1", causal=True, normalize=True, eps=1e-6, key_lengths=None,
                     initial_state=None, return_state=False):
    """Kernelized linear attention, :func:`attnkit.linear_attention` as a JAX operation.

    ``y_t = phi(q_t)^T S_t / (phi(q_t)^T z_t + eps)`` with ``S_t = S_0 + sum_j phi(k_j) v_j^T``,
    ``z_t = z_0 + sum_j phi(k_j)`` over the keys ``j <= t`` (causal) or all keys; the chunked C++ kernel.
    Gradients flow into ``q``, ``k``, ``v`` and ``initial_state``, and from the returned state
    (:func:`attnkit.linear_attention_backward`: two chunked scans, O(S) memory).

    Parameters
    ----------
    q, k, v : arrays as in :func:`attention` (causal needs ``Sk == S``).
    feature_map, causal, normalize, eps, key_lengths : as in :func:`attnkit.linear_attention`.
    initial_state : (S, z), optional
        ``S [B, Hkv, F, Dv]`` and ``z [B, Hkv, F]``, float32 (float64 for float64 inputs).
    return_state : bool
        Also return the state after the last allowed key: ``(out, (S, z))``.

    Returns
    -------
    out : array ``[B, Hq, S, Dv]`` in ``q``'s dtype, or ``(out, (S, z))``.

    Raises
    ------
    ValueError, TypeError
        As :func:`attnkit.linear_attention`, when the call is traced.
    """
    q, k, v, lens, check = _operands(q, k, v, key_lengths)
    if initial_state is not None and isinstance(initial_state, (tuple, list)) and len(initial_state) == 2:
        initial_state = (_array(initial_state[0], "initial_state[0]"), _array(initial_state[1], "initial_state[1]"))
    p = _linear_params(check, q, k, v, feature_map, causal, normalize, eps, lens, initial_state)
    names = ("out", "final_state", "final_normalizer") if as_bool(return_state, "return_state") else ("out",)
    cfg = _Static(results=dict(zip(names, check.outputs(_core.linear_attention_outputs, p, *names))),
                  attrs=dict(feature_map=np.int64(int(p.feature_map)), causal=bool(p.causal),
                             normalize=bool(p.normalize), eps=np.float64(p.eps)))
    s0, z0 = (None, None) if initial_state is None else initial_state
    outs = _linear(cfg, q, k, v, lens, s0, z0)
    return outs[0] if len(outs) == 1 else (outs[0], tuple(outs[1:]))


def _linear_inputs(q, k, v, lens, s0, z0):
    return dict(q=q, k=k, v=v, key_lengths=lens, initial_state=s0, initial_normalizer=z0)


def _linear_forward(cfg, q, k, v, lens, s0, z0):
    return _ffi.call("linear_attention", _linear_inputs(q, k, v, lens, s0, z0), cfg.results, **cfg.attrs)


_linear = jax.custom_vjp(_linear_forward)


def _linear_fwd(cfg, q, k, v, lens, s0, z0):
    q, k, v, lens, s0, z0 = (_primal(a)[0] for a in (q, k, v, lens, s0, z0))
    return _linear_forward(cfg, q, k, v, lens, s0, z0), (q, k, v, lens, s0, z0, cfg)


def _linear_bwd(res, g):
    q, k, v, lens, s0, z0, cfg = res
    args = _linear_inputs(q, k, v, lens, s0, z0)
    args["dout"] = _zero_cotangent(g[0], cfg.results["out"])
    if len(g) == 3 and not (isinstance(g[1], SymbolicZero) and isinstance(g[2], SymbolicZero)):
        args["dfinal_state"] = _zero_cotangent(g[1], cfg.results["final_state"])
        args["dfinal_normalizer"] = _zero_cotangent(g[2], cfg.results["final_normalizer"])
    results = _grad_specs(q, k, v)
    if s0 is not None:
        results.update(dinitial_state=jax.ShapeDtypeStruct(s0.shape, s0.dtype),
                       dinitial_normalizer=jax.ShapeDtypeStruct(z0.shape, z0.dtype))
    grads = _ffi.call("linear_attention_backward", args, results, **cfg.attrs)
    return (None, *grads[:3], None, *(grads[3:] if s0 is not None else (None, None)))


_linear.defvjp(_linear_fwd, _linear_bwd, symbolic_zeros=True)


def performer_attention(q, k, v, features, *, kernel="softmax", causal=False, scale=None, eps=1e-6,
                        key_lengths=None):
    """Performer (FAVOR+) attention, :func:`attnkit.performer_attention` as a JAX operation.

    Normalized linear attention with the random features ``phi(x) = m^-1/2 exp(W x' - |x'|^2 / 2)``
    (``kernel="softmax"``) or ``relu(W x') + 1e-3``, ``x' = sqrt(scale) x``. Gradients flow into ``q``,
    ``k`` and ``v`` (:func:`attnkit.performer_attention_backward`); ``features`` (``W``, from
    :func:`attnkit.random_features`) are fixed: differentiating with respect to them raises ``ValueError``
    (wrap them in ``jax.lax.stop_gradient`` if they come from a traced value).

    Parameters
    ----------
    q, k, v : arrays as in :func:`attention`.
    features : array ``[m, D]``, any float dtype.
    kernel, causal, scale, eps, key_lengths : as in :func:`attnkit.performer_attention`.

    Returns
    -------
    out : array ``[B, Hq, S, Dv]`` in ``q``'s dtype.

    Raises
    ------
    ValueError, TypeError
        As :func:`attnkit.performer_attention`, when the call is traced.
    """
    q, k, v, lens, check = _operands(q, k, v, key_lengths)
    W = _array(features, "features")
    p = _performer_params(check, q, k, v, W, kernel, causal, scale, eps, lens)
    out, = check.outputs(_core.performer_attention_outputs, p, "out")
    cfg = _Static(out=out, attrs=dict(kernel=np.int64(int(p.kernel)), causal=bool(p.causal), scale=f64(p.scale),
                                      eps=np.float64(p.eps)))
    return _performer(cfg, q, k, v, W, lens)


def _performer_forward(cfg, q, k, v, W, lens):
    return _ffi.call("performer_attention", dict(q=q, k=k, v=v, features=W, key_lengths=lens), dict(out=cfg.out),
                     **cfg.attrs)[0]


_performer = jax.custom_vjp(_performer_forward)


def _performer_fwd(cfg, q, k, v, W, lens):
    if W.perturbed:
        raise ValueError("features: performer_attention has no gradient with respect to the random features "
                         "(they are fixed); wrap them in jax.lax.stop_gradient")
    q, k, v, W, lens = (_primal(a)[0] for a in (q, k, v, W, lens))
    return _performer_forward(cfg, q, k, v, W, lens), (q, k, v, W, lens, cfg)


def _performer_bwd(res, g):
    q, k, v, W, lens, cfg = res
    dq, dk, dv = _ffi.call("performer_attention_backward", dict(q=q, k=k, v=v, features=W, key_lengths=lens,
                                                                dout=_zero_cotangent(g, cfg.out)),
                           _grad_specs(q, k, v), **cfg.attrs)
    return None, dq, dk, dv, None, None


_performer.defvjp(_performer_fwd, _performer_bwd, symbolic_zeros=True)
