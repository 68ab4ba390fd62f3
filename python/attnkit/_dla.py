"""Dynamic linear attention (DLA): dynamic_linear_attention, DLACache, DLAAux."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple


from . import _core
from ._array import Call, as_bool, as_choice, as_float, as_int

__all__ = ["dynamic_linear_attention", "DLACache", "DLAAux"]

_SCORES = {"token_vs_state": _core.DLAScore.TokenVsState, "state_drift": _core.DLAScore.StateDrift}
_CACHE_FIELDS = ("states", "counts", "info", "starts", "size")
_OUTPUTS = ("out",) + tuple(f"cache_out.{n}" for n in _CACHE_FIELDS)  # + DLAAux._fields with return_aux


@dataclass(frozen=True, eq=False)
class DLACache:
    """The state cache of :func:`dynamic_linear_attention`, one per (batch, head), after ``position`` tokens.

    Entries are chronological (oldest first); entry ``i < size[b, h]`` summarises the contiguous span of
    tokens ``[starts[b, h, i], starts[b, h, i] + counts[b, h, i])``, with ``starts[b, h, 0] = 0``. The
    last used entry is the *open* state. Entries at ``i >= size[b, h]`` are unused and hold zeros.

    Attributes
    ----------
    states : array ``[B, H, C, Dk, Dv]``
        The states ``S_i`` (the decayed sums of ``k_j v_j^T`` over each span): float32, float64 for
        float64 inputs.
    counts : int64 array ``[B, H, C]``
        Tokens per entry.
    info : array ``[B, H, C]``
        Summed information scores of each entry's tokens (dtype of ``states``).
    starts : int64 array ``[B, H, C]``
        Position of the first token of each span.
    size : int64 array ``[B, H]``
        Entries in use, in ``[0, C]``.
    position : int
        Tokens seen (the sum of the counts of every (batch, head)).

    Arrays belong to the array module of the call that made them (NumPy or CuPy). attnkit never modifies
    a cache: each call returns a new one.
    """

    states: Any
    counts: Any
    info: Any
    starts: Any
    size: Any
    position: int

    @property
    def capacity(self) -> int:
        """C, the most states an entry list holds."""
        return int(self.states.shape[2])

    def __repr__(self) -> str:
        B, H, C, Dk, Dv = self.states.shape
        return (f"DLACache(B={B}, H={H}, capacity={C}, Dk={Dk}, Dv={Dv}, dtype={self.states.dtype}, "
                f"position={self.position})")


class DLAAux(NamedTuple):
    """Per-token diagnostics of :func:`dynamic_linear_attention` (rank follows ``q`` without its last dim).

    scores : ``[B, H, T]`` information scores ``I_t`` (dtype of the states; 0 for the first token of an
        empty cache).
    boundaries : bool ``[B, H, T]``: token ``t`` opened a new state (``I_t >= tau``, or the cache was
        empty).
    merged : int64 ``[B, H, T]``: ``i`` when the pair ``(i, i+1)`` was merged at step ``t`` (chronological
        index before the merge), ``-1`` when nothing merged.
    """

    scores: Any
    boundaries: Any
    merged: Any


def dynamic_linear_attention(q, k, v, lam, *, capacity, tau=0.6, log_decay=None, score="token_vs_state",
                             cache=None, return_aux=False):
    """Dynamic linear attention (DLA): multi-state linear attention with information-aware state merging
    and a capacity-bounded cache (``shared/specs/dla.md``).

    Per (batch, head) the cache holds at most ``C = capacity`` states, each the (decayed) sum of
    ``k_j v_j^T`` over a contiguous span of tokens; the newest is the *open* state. Token ``t``:

    1. with ``log_decay``, every state is multiplied by ``a_t = exp(g_t)`` first;
    2. ``s_t = k_t v_t^T``;
    3. information score, with ``N(X) = X / sqrt(||X||_F^2 / (Dk Dv) + 1e-6)`` and ``S`` the open state:
       ``"token_vs_state"``: ``I_t = ||N(s_t) - N(S)|| / (||N(S)|| + 1e-6)``;
       ``"state_drift"``: ``I_t = ||N(S + s_t) - N(S)|| / (||N(S)|| + 1e-6)``;
       an empty cache gives ``I_t = 0`` and the token opens state 0;
    4. if ``I_t >= tau`` (never when ``C == 1``) the token opens a new state ``(s_t, 1, I_t, t)``, after
       merging, when the cache is full, the adjacent pair with the smallest ``(I_i + I_{i+1}) /
       (n_i + n_{i+1})`` (ties: the oldest pair); otherwise it joins the open state;
    5. ``y_t = sum_j lam_t[j] * q_t^T S_{m-1-j}`` over the ``m`` states after the insert: ``lam_t[0]``
       weights the newest state.

    With ``lam = 1`` everywhere this is (decayed) causal linear attention ``q_t^T sum_{j<=t} k_j v_j^T``,
    unnormalized, with the identity feature map (apply a feature map to q and k yourself).

    Parameters
    ----------
    q, k : arrays ``[B, H, T, Dk]`` (or ``[H, T, Dk]``, ``[T, Dk]``)
        Queries and keys: NumPy (CPU backend); float32, float64, float16 or ``ml_dtypes.bfloat16``, one
        dtype for q, k, v and lam. Any strides are read in place.
    v : array ``[B, H, T, Dv]``
        Values.
    lam : array ``[B, H, T, C]``
        Readout weights, recency-indexed (``lam[..., t, 0]`` weights the newest state). Weights of
        entries the cache does not hold yet are ignored.
    capacity : int
        ``C >= 1``, the most states per (batch, head); must equal ``lam.shape[-1]``.
    tau : float
        Boundary threshold (default 0.6). Any value but NaN: ``+inf`` never opens a state (one state,
        plain linear attention), ``<= 0`` opens one at every token.
    log_decay : array ``[B, H, T]`` or None
        Log-decay ``g_t``, finite and ``<= 0``, any float dtype. ``None``: no decay.
    score : ``"token_vs_state"`` or ``"state_drift"``
        The information score.
    cache : DLACache or None
        The cache returned by an earlier call, to continue from (prefill in pieces, then decode with
        ``T = 1``); ``None`` starts from an empty cache. It is not modified.
    return_aux : bool
        Also return a :class:`DLAAux` with the per-token scores, boundaries and merges.

    Returns
    -------
    (y, cache) or (y, cache, aux)
        ``y``: ``[B, H, T, Dv]`` in q's dtype (rank follows q); ``cache``: a new :class:`DLACache` after
        ``cache.position + T`` tokens (always with the B and H dims, states float32 or float64 for
        float64 inputs); ``aux``: see :class:`DLAAux`. ``T = 0`` returns an empty ``y`` and an unchanged
        copy of the cache.

    Notes
    -----
    Prefill runs the (batch, head) pairs in parallel, each in chunks whose Gram matrices ``K K^T`` and
    ``V V^T`` drive the scalar scan that decides boundaries and merges, with the outputs and states from
    matrix products. A decode step (``T = 1``) costs ``O(C Dk Dv)`` per head whatever the position.
    States are float32 (float64 for float64 inputs); results do not depend on the number of threads.

    Raises
    ------
    ValueError
        Shapes that do not fit together, ``capacity < 1``, ``lam.shape[-1] != capacity``, NaN ``tau``,
        an unknown ``score``, ``log_decay`` not finite or positive, a cache that does not match the inputs
        or is inconsistent (sizes outside ``[0, C]``, spans that do not tile ``[0, position)``).
    TypeError
        Unsupported or mismatched dtypes, non-array inputs, a ``cache`` that is not a DLACache.
    """
    call = Call()
    p = _core.DLAParams()
    call.qkv(p, q, k, v)
    p.lam = call.tensor(lam, "lam")
    if log_decay is not None:
        p.log_decay = call.tensor(log_decay, "log_decay", coerce=True)
    p.capacity = as_int(capacity, "capacity")
    p.tau = as_float(tau, "tau")
    p.score = as_choice(score, "score", _SCORES)
    return_aux = as_bool(return_aux, "return_aux")
    if cache is not None:
        if not isinstance(cache, DLACache):
            raise TypeError(f"cache must be a DLACache (returned by an earlier call) or None, got {type(cache).__name__}")
        cache_in = p.cache_in  # one wrapper of p's member for the five fields
        for name in _CACHE_FIELDS:
            setattr(cache_in, name, call.tensor(getattr(cache, name), f"cache.{name}"))
        p.position = as_int(cache.position, "cache.position")
    if call.cuda:
        p.stream = call.stream
    names = _OUTPUTS + DLAAux._fields if return_aux else _OUTPUTS
    y, *rest = call.outputs(p, _core.dynamic_linear_attention_outputs, *names)
    _core.dynamic_linear_attention(p)
    T = y.shape[-2]
    new_cache = DLACache(*rest[:5], p.position + T)
    return (y, new_cache, DLAAux(*rest[5:])) if return_aux else (y, new_cache)
