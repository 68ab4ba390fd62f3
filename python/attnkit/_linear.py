"""Kernelized linear attention, Performer (FAVOR+) and Linformer."""

from __future__ import annotations

import numpy as np

from . import _core
from ._array import Call, as_bool, as_choice, as_float, as_int, as_seed, core_dtype, float_dtype

__all__ = ["linear_attention", "random_features", "performer_attention", "linformer_projection",
           "linformer_attention"]

_FEATURE_MAPS = {"elu1": _core.FeatureMap.elu1, "relu": _core.FeatureMap.relu,
                 "identity": _core.FeatureMap.identity}
_KERNELS = {"softmax": _core.PerformerKernel.softmax, "relu": _core.PerformerKernel.relu}
_SCALINGS = {"chi": _core.FeatureScaling.chi, "sqrt_d": _core.FeatureScaling.sqrt_d}


def _state_pair(call, state, name):
    """TensorRefs of a state pair (S, z) given as argument `name`."""
    if not isinstance(state, (tuple, list)) or len(state) != 2:
        raise ValueError(f"{name} must be a pair (S, z), as returned with return_state=True")
    return call.tensor(state[0], f"{name}[0]"), call.tensor(state[1], f"{name}[1]")


def _linear_params(call, q, k, v, feature_map, causal, normalize, eps, key_lengths, initial_state):
    """The LinearAttentionParams of a call's inputs (shared with linear_attention_backward)."""
    p = _core.LinearAttentionParams()
    call.qkv(p, q, k, v)
    p.feature_map = as_choice(feature_map, "feature_map", _FEATURE_MAPS)
    p.causal = as_bool(causal, "causal")
    p.normalize = as_bool(normalize, "normalize")
    p.eps = as_float(eps, "eps")
    if key_lengths is not None:
        p.key_lengths = call.lengths(key_lengths)
    if initial_state is not None:
        p.initial_state, p.initial_normalizer = _state_pair(call, initial_state, "initial_state")
    if call.cuda:
        p.stream = call.stream
    return p


def linear_attention(q, k, v, *, feature_map="elu1", causal=True, normalize=True, eps=1e-6, key_lengths=None,
                     initial_state=None, return_state=False):
    """Kernelized linear attention (Katharopoulos et al., "Transformers are RNNs", 2020).

    With a feature map ``phi`` applied to each row of ``q`` and ``k`` (``F = D`` features) and the
    state ``(S_0, z_0)`` (zero unless ``initial_state`` is given), per batch ``b`` and query head ``h``::

        causal:         S_t = S_0 + sum_{j <= t} phi(k_j) v_j^T,   z_t = z_0 + sum_{j <= t} phi(k_j)
        bidirectional:  S_t = S_0 + sum_{all j} phi(k_j) v_j^T,    z_t = z_0 + sum_{all j} phi(k_j)
        normalize:      y_t = phi(q_t)^T S_t / (phi(q_t)^T z_t + eps)   (0 where that denominator is 0)
        otherwise:      y_t = phi(q_t)^T S_t

    Causal attention runs in the chunked form (masked quadratic products inside a chunk of keys, a
    running state between chunks), so it costs O(S) time and O(1) extra memory in S; bidirectional
    attention computes ``phi(Q) (phi(K)^T V)``.

    Parameters
    ----------
    q : array ``[B, Hq, S, D]`` (or ``[H, S, D]``, ``[S, D]``)
        Queries: NumPy (CPU backend) or CuPy (CUDA backend); float32, float64, float16 or
        ``ml_dtypes.bfloat16``. Any strides are read in place.
    k : array ``[B, Hkv, Sk, D]``
        Keys, same dtype and rank as ``q``; ``Hq % Hkv == 0`` (query head ``h`` uses kv head
        ``h // (Hq // Hkv)``). Causal attention pairs query ``t`` with key ``t``: ``Sk == S``.
    v : array ``[B, Hkv, Sk, Dv]``
        Values.
    feature_map : {"elu1", "relu", "identity"}
        ``elu(x) + 1`` (positive, the default), ``max(x, 0)`` or ``x``. With ``"relu"`` a query or a
        state can give a zero denominator; such rows are 0. ``"identity"`` is meant for
        ``normalize=False``.
    causal : bool
        Prefix sums (query ``t`` sees keys ``j <= t``) or every key.
    normalize : bool
        Divide by ``phi(q)^T z + eps``.
    eps : float
        Added to the denominator, finite and ``>= 0``.
    key_lengths : int array ``[B]`` or int, optional
        Valid keys per batch entry (right padding): keys ``j >= key_lengths[b]`` are left out of every
        sum and of the returned state, and are never read. A causal query at ``t >= key_lengths[b]``
        sees the state after the last allowed key.
    initial_state : (S, z), optional
        The state to start from, as returned with ``return_state=True``: ``S [B, Hkv, F, Dv]`` and
        ``z [B, Hkv, F]`` (their rank drops the leading dims ``q`` drops: ``[Hkv, F, Dv]`` for 3-D
        inputs, ``[F, Dv]`` for 2-D), float32 (float64 for float64 inputs). Bidirectional attention adds
        it to the sums over all keys.
    return_state : bool
        Also return the state after the last allowed key (initial state included). Causal streaming:
        ``linear_attention(x[..., :T1, :])`` then ``linear_attention(x[..., T1:, :],
        initial_state=state)`` equals one call over the whole sequence up to rounding, and so does
        decoding token by token.

    Returns
    -------
    out : array ``[B, Hq, S, Dv]`` in ``q``'s dtype (rank follows ``q``), or ``(out, (S, z))``.
    Accumulation and state are float32 (float64 for float64 inputs).

    Raises
    ------
    ValueError
        Shapes that do not fit together (``Sk != S`` when causal, a state of the wrong shape), an unknown
        ``feature_map``, a negative or non-finite ``eps``, bad ``key_lengths``.
    TypeError
        Unsupported or mismatched dtypes (a state that is not float32 / float64 as above), non-array
        inputs, arrays on different devices.
    """
    call = Call()
    p = _linear_params(call, q, k, v, feature_map, causal, normalize, eps, key_lengths, initial_state)
    if as_bool(return_state, "return_state"):
        out, s, z = call.outputs(p, _core.linear_attention_outputs, "out", "final_state", "final_normalizer")
        _core.linear_attention(p)
        return out, (s, z)
    out, = call.outputs(p, _core.linear_attention_outputs, "out")
    _core.linear_attention(p)
    return out


def random_features(num_features, head_dim, *, seed=0, orthogonal=True, scaling="chi", dtype=np.float32):
    """Random feature matrix ``W [m, D]`` for :func:`performer_attention` (FAVOR+).

    Blocks of ``D`` rows (the last block truncated when ``m % D != 0``). With ``orthogonal=True`` the rows
    of a block are orthonormal directions: the Gram-Schmidt orthonormalization (QR with the sign
    correction ``diag(R) > 0``, so the directions are Haar-uniform) of a Gaussian block; with
    ``orthogonal=False`` they are i.i.d. Gaussian rows. Row norms: ``"chi"`` draws them from the
    chi(D) distribution independently of the directions (unbiased softmax-kernel estimates; for i.i.d.
    rows this is simply the rows as drawn), ``"sqrt_d"`` sets every norm to ``sqrt(D)``.

    ``W`` is a pure function of ``(seed, num_features, head_dim, orthogonal, scaling)``: the same on
    every platform, thread count and backend (counter-based Philox4x32-10 generator; built in float64
    and rounded once to ``dtype``). ``W`` for ``m`` rows is the first ``m`` rows of ``W`` for any larger
    ``m``. The exact construction is documented in ``attnkit/linear.h``.

    Parameters
    ----------
    num_features : int
        ``m >= 1``, the number of random features.
    head_dim : int
        ``D >= 1``, the head dim of the queries and keys the features will map.
    seed : int
        Any integer in ``[0, 2**64)``.
    orthogonal : bool
        Orthogonal blocks (lower-variance estimates) or i.i.d. rows.
    scaling : {"chi", "sqrt_d"}
        Row norms, see above.
    dtype : float32, float64, float16 or bfloat16
        Element type of the result.

    Returns
    -------
    W : NumPy array ``[m, D]`` (use ``cupy.asarray(W)`` for GPU inputs).

    Raises
    ------
    ValueError
        ``num_features < 1``, ``head_dim < 1``, an unknown ``scaling``, a seed outside ``[0, 2**64)``.
    TypeError
        Non-integer sizes or seed, an unsupported ``dtype``.
    """
    p = _core.RandomFeaturesParams()
    p.num_features = as_int(num_features, "num_features")
    p.head_dim = as_int(head_dim, "head_dim")
    p.seed = as_seed(seed)
    p.orthogonal = as_bool(orthogonal, "orthogonal")
    p.scaling = as_choice(scaling, "scaling", _SCALINGS)
    p.dtype = core_dtype(float_dtype(dtype))
    w, = Call().outputs(p, _core.random_features_outputs, "out")
    _core.random_features(p)
    return w


def _performer_params(call, q, k, v, features, kernel, causal, scale, eps, key_lengths):
    """The PerformerParams of a call's inputs (shared with performer_attention_backward)."""
    p = _core.PerformerParams()
    call.qkv(p, q, k, v)
    p.features = call.tensor(features, "features")
    p.kernel = as_choice(kernel, "kernel", _KERNELS)
    p.causal = as_bool(causal, "causal")
    if scale is not None:
        p.scale = as_float(scale, "scale")
    p.eps = as_float(eps, "eps")
    p.key_lengths = call.lengths(key_lengths)
    p.stream = call.stream
    return p


def performer_attention(q, k, v, features, *, kernel="softmax", causal=False, scale=None, eps=1e-6,
                        key_lengths=None):
    """Performer attention (Choromanski et al., "Rethinking Attention with Performers", ICLR 2021): FAVOR+
    random features in front of normalized linear attention.

    With ``W = features [m, D]`` and ``x' = sqrt(scale) * x``::

        "softmax":  phi(x) = m^-1/2 exp(W x' - |x'|^2 / 2 - c)     (E[phi(q) . phi(k)] ~ exp(q' . k'))
        "relu":     phi(x) = relu(W x') + 1e-3
        y_t = sum_j phi(q_t) . phi(k_j) v_j / (sum_j phi(q_t) . phi(k_j) + eps)

    over the allowed keys ``j`` (``j <= t`` when causal; ``j < key_lengths[b]``). The softmax kernel's
    stabilizer ``c`` keeps ``exp`` in range: for a query row, the largest ``w_f . q'`` minus
    ``|q'|^2 / 2``; for keys, the largest key exponent ``w_f . k' - |k'|^2 / 2`` over the allowed keys
    (bidirectional: over the whole sequence; causal: over the keys up to the query, a running maximum, so
    no future key influences a past output). It multiplies numerator and denominator alike: with
    ``eps = 0`` the result does not depend on it and equals the textbook formula up to rounding; with
    ``eps > 0``, ``eps`` is measured against the stabilized denominator.

    Parameters
    ----------
    q, k, v : arrays as in :func:`linear_attention` (causal attention needs ``Sk == S``).
    features : array ``[m, D]``
        Random features, e.g. from :func:`random_features`; any float dtype (used in float32, float64 for
        float64 inputs).
    kernel : {"softmax", "relu"}
        The kernel the features approximate.
    causal : bool
        Prefix sums or bidirectional.
    scale : float, optional
        Score scale, default ``1/sqrt(D)``: the softmax kernel approximates ``exp(scale * q . k)``.
        Finite and ``>= 0``.
    eps : float
        Added to the denominator, finite and ``>= 0``.
    key_lengths : int array ``[B]`` or int, optional
        Valid keys per batch entry; the others are never read.

    Returns
    -------
    out : array ``[B, Hq, S, Dv]`` in ``q``'s dtype (rank follows ``q``). Rows without allowed keys
    are 0.

    Raises
    ------
    ValueError
        Shapes that do not fit together, ``features`` whose second dim is not ``D``, an unknown
        ``kernel``, a negative or non-finite ``scale`` or ``eps``, bad ``key_lengths``.
    TypeError
        Unsupported or mismatched dtypes, non-array inputs, arrays on different devices.
    """
    call = Call()
    p = _performer_params(call, q, k, v, features, kernel, causal, scale, eps, key_lengths)
    out, = call.outputs(p, _core.performer_attention_outputs, "out")
    _core.performer_attention(p)
    return out


def linformer_projection(proj_len, seq_len, *, seed=0, num_heads=None, dtype=np.float32):
    """Random Linformer projection ``E`` with i.i.d. ``N(0, 1/proj_len)`` entries.

    Entry ``(h, p, j)`` is standard normal number ``j * proj_len + p`` of Philox stream
    ``kStreamLinformer + h`` under ``seed``, divided by ``sqrt(proj_len)`` (``attnkit/linear.h``). So the
    projection for a shorter sequence is a column prefix of the one for a longer sequence, a shared
    projection equals head 0 of a per-head one, and the result is the same on every platform.

    Parameters
    ----------
    proj_len : int
        ``P >= 1``, the projected length.
    seq_len : int
        ``Sk >= 0``, the key length the projection reads.
    seed : int
        Any integer in ``[0, 2**64)``.
    num_heads : int, optional
        ``None``: one projection ``[P, Sk]`` shared by every head; ``H >= 1``: ``[H, P, Sk]`` (one per kv
        head).
    dtype : float32, float64, float16 or bfloat16

    Returns
    -------
    E : NumPy array ``[P, Sk]`` or ``[H, P, Sk]``.

    Raises
    ------
    ValueError
        ``proj_len < 1``, ``seq_len < 0``, ``num_heads < 1``, a seed outside ``[0, 2**64)``.
    TypeError
        Non-integer arguments, an unsupported ``dtype``.
    """
    p = _core.LinformerProjectionParams()
    p.proj_len = as_int(proj_len, "proj_len")
    p.seq_len = as_int(seq_len, "seq_len")
    p.seed = as_seed(seed)
    p.dtype = core_dtype(float_dtype(dtype))
    if num_heads is not None:
        p.num_heads = as_int(num_heads, "num_heads")
        if p.num_heads < 1:  # 0 means "shared" in the core: name what this argument accepts instead
            raise ValueError(f"num_heads must be >= 1 (or None for a shared projection), got {p.num_heads}")
    e, = Call().outputs(p, _core.linformer_projection_outputs, "out")
    _core.linformer_projection(p)
    return e


class _Unset:
    """Default of arguments whose mere presence means something."""

    def __repr__(self):
        return "<not given>"


_CAUSAL_UNSET = _Unset()


def _linformer_params(call, q, k, v, E, F, scale, key_lengths):
    """The LinformerParams of a call's inputs (shared with attnkit.jax)."""
    p = _core.LinformerParams()
    call.qkv(p, q, k, v)
    p.E = call.tensor(E, "E")
    p.F = call.tensor(F, "F")
    if scale is not None:
        p.scale = as_float(scale, "scale")
    p.key_lengths = call.lengths(key_lengths)
    p.stream = call.stream
    return p


def linformer_attention(q, k, v, E, F=None, *, scale=None, key_lengths=None, return_lse=False,
                        causal=_CAUSAL_UNSET):
    """Linformer attention (Wang et al., "Linformer: Self-Attention with Linear Complexity", 2020): exact
    attention over keys and values projected along the sequence.

    Per batch ``b`` and kv head ``g``: ``K' = E_g k`` and ``V' = F_g v`` (``[P, D]`` and ``[P, Dv]``),
    then the result is ``attention(q, K', V', scale=scale)`` (attnkit's exact kernel, float32
    accumulation). Keys ``j >= key_lengths[b]`` count as zero rows before the projection (and are never
    read). Cost O(S * P) instead of O(S^2). For float16 / bfloat16 inputs ``K'`` and ``V'`` are
    accumulated in float32 and rounded to the input dtype.

    Parameters
    ----------
    q, k, v : arrays as in :func:`attnkit.attention` (``Sq`` and ``Sk`` may differ).
    E : array ``[P, Sk]`` (shared by every head) or ``[Hkv, P, Sk]`` (one per kv head)
        Key projection, any float dtype, e.g. from :func:`linformer_projection`.
    F : array like ``E``, optional
        Value projection with ``E``'s ``P``; defaults to ``E``.
    scale : float, optional
        Score scale, default ``1/sqrt(D)``; the range of :func:`attnkit.attention`'s ``scale``.
    key_lengths : int array ``[B]`` or int, optional
        Valid keys per batch entry (right padding).
    return_lse : bool
        Also return the log-sum-exp over the ``P`` projected keys, ``[B, Hq, Sq]``.
    causal :
        Not defined for Linformer (every projected key mixes every position): passing it, with any
        value, raises ``ValueError``.

    Returns
    -------
    out : array ``[B, Hq, Sq, Dv]`` in ``q``'s dtype (rank follows ``q``), or ``(out, lse)``.

    Raises
    ------
    ValueError
        ``causal`` given, ``E`` / ``F`` shapes that do not match ``Sk``, ``Hkv`` or each other, other bad
        shapes or values as in :func:`attnkit.attention`.
    TypeError
        Unsupported or mismatched dtypes, non-array inputs, arrays on different devices.
    """
    call = Call()
    p = _linformer_params(call, q, k, v, E, F, scale, key_lengths)
    p.causal = causal is not _CAUSAL_UNSET  # any value given is an error the core names
    if as_bool(return_lse, "return_lse"):
        out, lse = call.outputs(p, _core.linformer_attention_outputs, "out", "lse")
        _core.linformer_attention(p)
        return out, lse
    out, = call.outputs(p, _core.linformer_attention_outputs, "out")
    _core.linformer_attention(p)
    return out
