"""attnkit.distributed, linear-time part: linear attention and Performer by state passing, DLA pipelining."""

from __future__ import annotations

import hashlib

import numpy as np

from . import _linear, _mpi
from ._array import acc_dtype, as_bool, as_float, is_cuda_array
from ._dla import DLACache, dynamic_linear_attention
from ._mpi import agree, array_module, check_comm, same_everywhere, to4


def _lengths_list(key_lengths):
    if key_lengths is None:
        return None
    return np.asarray(key_lengths.get() if is_cuda_array(key_lengths) else key_lengths).tolist()


def _validate(comm, q, k, v, causal, check, extra):
    """Collective checks shared by linear_attention and performer_attention: ``check()`` runs the
    single-process function on empty pieces of this rank's arrays; ``extra()`` gives the options that must
    be equal on every rank, key_lengths (as a list, or None) last (called inside the collective check, so
    that a bad option on one rank raises on every rank). Returns (key lengths per rank, global key_lengths
    as int64 [B] or None)."""

    def local():
        metas = [_mpi.array_meta(x, n) for x, n in ((q, "q"), (k, "k"), (v, "v"))]
        check()
        opts = extra()
        if causal and q.shape[-2] != k.shape[-2]:
            raise ValueError(f"causal attention pairs query t with key t: k must have q's length on every rank, "
                             f"got q {list(q.shape)} and k {list(k.shape)}")
        q4, k4, v4 = (to4(x)[0] for x in (q, k, v))
        return dict(module=metas[0][0], dtype=metas[0][1],
                    dims=(q.ndim, q4.shape[0], q4.shape[1], k4.shape[1], q4.shape[3], v4.shape[3]),
                    opts=opts, S=q4.shape[2], Sk=k4.shape[2])

    metas = agree(comm, local)
    same_everywhere([m["module"] for m in metas], "the array type of q, k, v (NumPy or CuPy)", TypeError)
    same_everywhere([m["dtype"] for m in metas], "the dtype of q, k, v", TypeError)
    same_everywhere([m["dims"] for m in metas], "(ndim, B, Hq, Hkv, D, Dv) of q, k, v")
    same_everywhere([m["opts"] for m in metas], "the options (and key_lengths)")
    sk = [m["Sk"] for m in metas]
    lengths = metas[0]["opts"][-1]  # equal on every rank
    return sk, _mpi.global_lengths(None if lengths is None else np.asarray(lengths), metas[0]["dims"][1], sum(sk))


def _gather_states(comm, state, xp):
    """Every rank's (S, z), in rank order."""
    S, z = state
    transport = _mpi.Transport(comm, xp is not np)
    size = comm.Get_size()
    Ss = _mpi.gather_arrays(transport, S, [S.shape] * size, S.dtype)
    zs = _mpi.gather_arrays(transport, z, [z.shape] * size, z.dtype)
    return list(zip(Ss, zs))


def _state_passing(comm, q4, k4, v4, lens, *, causal, initial, scales=None, **opts):
    """Sequence-parallel linear attention on 4-D shards: local state (the sums over this rank's keys), an
    exchange of every rank's state, then the local pass from the sum of the earlier ranks' states (causal)
    or with the sum of all (bidirectional). ``scales[s]`` multiplies rank s's state as seen by this rank
    (Performer's stabilizers). Returns (out, total state); the total is bitwise the same on every rank."""
    xp = array_module(q4)
    rank = comm.Get_rank()
    mine = _linear.linear_attention(q4[:, :, :0], k4, v4, causal=False, key_lengths=lens, return_state=True,
                                    feature_map=opts["feature_map"])[1]
    states = _gather_states(comm, mine, xp)
    if scales is not None:
        states = [(S * scales[s][..., None, None], z * scales[s][..., None]) for s, (S, z) in enumerate(states)]
    S_acc, z_acc = (None, None) if initial is None else (xp.asarray(initial[0]), xp.asarray(initial[1]))
    before = None if initial is None else (S_acc, z_acc)
    for s, (S, z) in enumerate(states):
        S_acc = S.copy() if S_acc is None else S_acc + S
        z_acc = z.copy() if z_acc is None else z_acc + z
        if s == rank - 1:
            before = (S_acc, z_acc)
    if causal:
        out = _linear.linear_attention(q4, k4, v4, causal=True, key_lengths=lens, initial_state=before, **opts)
    else:
        out = _linear.linear_attention(q4, k4[:, :, :0], v4[:, :, :0], causal=False,
                                       initial_state=(S_acc, z_acc), **opts)
    return out, (S_acc, z_acc)


def _offset(comm, sk):
    return int(sum(sk[:comm.Get_rank()]))


def linear_attention(q, k, v, comm, *, feature_map="elu1", causal=True, normalize=True, eps=1e-6,
                     key_lengths=None, initial_state=None, return_state=False):
    """Kernelized linear attention (:func:`attnkit.linear_attention`) over a sequence sharded across the
    ranks of ``comm`` in rank order (contiguous pieces, any length per rank): collective, every rank gets
    its rows of the single-process result on the gathered sequence.

    State passing: each rank computes the state of its own keys (``sum phi(k_j) v_j^T``, ``sum phi(k_j)``),
    the ranks exchange them (an allgather of the ``P`` states ``S [B, Hkv, F, Dv]``, ``z [B, Hkv, F]``), and rank
    ``r`` runs its local causal pass from ``initial_state`` plus the sum of the states of ranks ``< r``
    (an exclusive prefix sum in rank order). Bidirectional attention uses the sum of all states. The
    communication does not grow with the sequence.

    Parameters are those of :func:`attnkit.linear_attention` (``key_lengths`` of the global sequence, the
    same on every rank; ``initial_state`` the state before the global sequence, the same on every rank).
    ``return_state=True`` returns ``(out, state)`` with the state after the whole global sequence, bitwise
    the same on every rank.

    Raises ValueError / TypeError on every rank for any rank's bad argument, or B / H / D / dtypes / options
    that differ across ranks.
    """
    comm = check_comm(comm)
    opts = dict(feature_map=feature_map, normalize=normalize, eps=eps)

    def check():
        _linear.linear_attention(q[..., :0, :], k[..., :0, :], v[..., :0, :], causal=causal, initial_state=initial_state,
                                 **opts)

    sk, lengths = _validate(comm, q, k, v, causal, check,  # plain values: a 0-d array travels as its value
                            lambda: (feature_map, as_bool(causal, "causal"), as_bool(normalize, "normalize"),
                                     as_float(eps, "eps"), as_bool(return_state, "return_state"),
                                     _lengths_list(key_lengths)))
    q4, lead = to4(q)
    k4, v4 = to4(k)[0], to4(v)[0]
    init = None if initial_state is None else tuple(x.reshape((1,) * lead + tuple(x.shape)) for x in initial_state)
    lens = _mpi.local_lengths(lengths, _offset(comm, sk), k4.shape[2])
    out, state = _state_passing(comm, q4, k4, v4, lens, causal=causal, initial=init, **opts)
    out = out.reshape(tuple(q.shape[:-1]) + (v.shape[-1],))
    if not return_state:
        return out
    return out, tuple(x.reshape(x.shape[lead:]) for x in state)


def performer_attention(q, k, v, features, comm, *, kernel="softmax", causal=False, scale=None, eps=1e-6,
                        key_lengths=None):
    """Performer attention (:func:`attnkit.performer_attention`) over a sequence sharded across the ranks of
    ``comm`` in rank order: collective, every rank gets its rows of the single-process result.

    The random features are computed on each rank (``features`` must be the same on every rank), then
    linear attention runs by state passing as in :func:`linear_attention`. The softmax kernel's key
    stabilizer is exchanged too: bidirectional, the maximum over all allowed keys (as in the
    single-process function); causal, rank ``r``'s states are scaled by the running maximum up to the end
    of its shard (states of earlier ranks rescaled by ``exp(c_s - c_r) <= 1``) and each query's ``eps`` is
    measured against the denominator stabilized by the running maximum up to that query, as in the
    single-process function: no key of a later rank influences an output. Features are float32 (float64
    for float64 inputs); the result is in q's dtype.

    Raises ValueError / TypeError on every rank as :func:`linear_attention`; ``features`` must be equal on
    every rank.
    """
    comm = check_comm(comm)
    xp = array_module(q)

    def check():
        _linear.performer_attention(q[..., :0, :], k[..., :0, :], v[..., :0, :], features, kernel=kernel,
                                    causal=causal, scale=scale, eps=eps)

    # features must be equal everywhere: compare a digest of their bytes (any dtype, bfloat16 included)
    host = features.get() if is_cuda_array(features) else features
    digest = hashlib.sha1(_mpi.as_bytes(host).tobytes()).hexdigest() if isinstance(host, np.ndarray) else None
    sk, lengths = _validate(comm, q, k, v, causal, check,
                            lambda: (kernel, as_bool(causal, "causal"),
                                     None if scale is None else as_float(scale, "scale"), as_float(eps, "eps"),
                                     digest, _lengths_list(key_lengths)))
    size, rank = comm.Get_size(), comm.Get_rank()
    q4, lead = to4(q)
    k4, v4 = to4(k)[0], to4(v)[0]
    acc = acc_dtype(q.dtype)
    B, Hq, S, D = q4.shape
    Hkv, Dv = k4.shape[1], v4.shape[3]
    W = xp.asarray(features).astype(acc)
    m = W.shape[0]
    root = acc.type(np.sqrt(1.0 / np.sqrt(D) if scale is None else scale))
    qp, kp = root * q4.astype(acc), root * k4.astype(acc)
    qw, kw = qp @ W.T, kp @ W.T
    lens = _mpi.local_lengths(lengths, _offset(comm, sk), S)
    keys = (xp.arange(S)[None, :] < (S if lens is None else xp.asarray(lens)[:, None]))[:, None, :]   # [B, 1, S]
    opts = dict(feature_map="identity", normalize=True, eps=eps)
    if kernel == "relu":
        fq, fk = xp.maximum(qw, 0) + acc.type(1e-3), xp.maximum(kw, 0) + acc.type(1e-3)
        out, _ = _state_passing(comm, fq, fk, v4.astype(acc), lens, causal=causal, initial=None, **opts)
        return out.astype(q.dtype).reshape(tuple(q.shape[:-1]) + (Dv,))
    fq = xp.exp(qw - qw.max(-1, keepdims=True)) / acc.type(np.sqrt(m))
    e = kw - acc.type(0.5) * (kp * kp).sum(-1, keepdims=True)                        # key exponents [B, Hkv, S, m]
    emax = xp.where(keys, e.max(-1) if m else -np.inf, -np.inf)                # [B, Hkv, S], allowed keys only
    top = emax.max(-1) if S else xp.full((B, Hkv), -np.inf, dtype=acc)          # this rank's maximum
    tops = xp.stack(_mpi.gather_arrays(_mpi.Transport(comm, xp is not np), xp.ascontiguousarray(top),
                                       [top.shape] * size, top.dtype))
    if not causal:
        c = tops.max(0)
        c = xp.where(xp.isinf(c), 0, c)
        fk = xp.where(keys[..., None], xp.exp(xp.minimum(e - c[..., None, None], 0)), 0) / acc.type(np.sqrt(m))
        out, _ = _state_passing(comm, fq, fk, v4.astype(acc), lens, causal=False, initial=None, **opts)
        return out.astype(q.dtype).reshape(tuple(q.shape[:-1]) + (Dv,))
    ends = xp.maximum.accumulate(tops, axis=0)                                  # running max at each rank's end
    ref = xp.where(xp.isinf(ends), 0, ends)                                     # [P, B, Hkv]
    before = ends[rank - 1] if rank else xp.full((B, Hkv), -np.inf, dtype=acc)
    c = xp.maximum.accumulate(xp.concatenate([before[..., None], emax], -1), axis=-1)[..., 1:]   # c_t
    fk = xp.where(keys[..., None], xp.exp(xp.minimum(e - ref[rank][..., None, None], 0)), 0) / acc.type(np.sqrt(m))
    vaug = xp.concatenate([v4.astype(acc), xp.ones(v4.shape[:3] + (1,), dtype=acc)], -1)
    scales = [xp.where(xp.isinf(ends[s]), 0, xp.exp(xp.minimum(ref[s] - ref[rank], 0))) for s in range(size)]
    aug, _ = _state_passing(comm, fq, fk, vaug, lens, causal=True, initial=None, scales=scales,
                            feature_map="identity", normalize=False, eps=0.0)
    num, den = aug[..., :Dv], aug[..., Dv]
    floor = acc.type(eps) * xp.exp(xp.where(xp.isinf(c), -np.inf, c - ref[rank][..., None]))
    den = den + xp.repeat(floor, Hq // Hkv, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = xp.where(den[..., None] != 0, num / den[..., None], 0)
    return out.astype(q.dtype).reshape(tuple(q.shape[:-1]) + (Dv,))


# ------------------------------------------------------------------------------------------- DLA pipelining
_CACHE_FIELDS = ("states", "counts", "info", "starts", "size")


def send_cache(cache, comm, dest, *, tag=0):
    """Sends a :class:`attnkit.DLACache` (NumPy arrays) to rank ``dest`` (blocking; pair with
    :func:`recv_cache`). Point-to-point: a bad argument raises on the sending rank only."""
    comm = check_comm(comm)
    if not isinstance(cache, DLACache):
        raise TypeError(f"cache must be a DLACache, got {type(cache).__name__}")
    arrays = [np.ascontiguousarray(getattr(cache, f)) for f in _CACHE_FIELDS]
    comm.send(([(a.shape, str(a.dtype)) for a in arrays], int(cache.position)), dest=dest, tag=tag)
    MPI = _mpi.mpi()
    for a in arrays:
        comm.Send([_mpi.as_bytes(a), MPI.BYTE], dest=dest, tag=tag)


def recv_cache(comm, source, *, tag=0):
    """Receives a :class:`attnkit.DLACache` sent by :func:`send_cache` from rank ``source``."""
    comm = check_comm(comm)
    layout, position = comm.recv(source=source, tag=tag)
    MPI = _mpi.mpi()
    arrays = []
    for shape, dtype in layout:
        a = np.empty(shape, dtype=dtype)
        comm.Recv([_mpi.as_bytes(a), MPI.BYTE], source=source, tag=tag)
        arrays.append(a)
    return DLACache(*arrays, position)


def dla_pipeline(q, k, v, lam, comm, *, capacity, tau=0.6, log_decay=None, score="token_vs_state",
                 return_aux=False):
    """Dynamic linear attention over a sequence sharded across the ranks of ``comm`` in rank order, by
    *pipelining*: rank ``r`` waits for the :class:`DLACache` of rank ``r - 1``, runs
    :func:`attnkit.dynamic_linear_attention` on its tokens from that cache, and sends its cache on.

    DLA's boundary and merge decisions are sequential (each depends on the states before it), so one
    sequence gets no speedup from more ranks: the ranks run one after another, each holding only its part
    of the inputs and outputs. Throughput comes from several independent sequences in flight (rank ``r``
    works on sequence ``n`` while rank ``r + 1`` works on sequence ``n - 1``). The result equals the
    single-process call on the gathered sequence as a prefill in pieces does (to rounding).

    NumPy arrays only (device arrays are a TypeError). Returns ``(y, cache)`` or ``(y, cache, aux)`` for this
    rank's tokens; ``cache`` is the cache after this
    rank's last token (on the last rank: after the whole sequence). Raises ValueError / TypeError on every
    rank for any rank's bad argument, or shapes / dtypes / options that differ across ranks.
    """
    comm = check_comm(comm)
    kw = dict(capacity=capacity, tau=tau, score=score)

    def local():
        metas = [_mpi.array_meta(x, n) for x, n in ((q, "q"), (k, "k"), (v, "v"), (lam, "lam"))]
        if metas[0][0] != "numpy":
            raise TypeError("dla_pipeline runs on NumPy arrays only (its caches travel between the ranks as host "
                            "arrays), got device arrays for q: pass cupy.asnumpy(q) and the others")
        g = None if log_decay is None else log_decay[..., :0]
        dynamic_linear_attention(q[..., :0, :], k[..., :0, :], v[..., :0, :], lam[..., :0, :], log_decay=g, **kw)
        # the one value check the empty call cannot make: a failure mid-pipeline would leave the next
        # ranks waiting for a cache
        g = None if log_decay is None else np.asarray(log_decay, dtype=np.float64)
        if g is not None and not bool(np.all(np.isfinite(g) & (g <= 0))):
            raise ValueError("log_decay must be finite and <= 0 (a positive value would grow the states)")
        return dict(dtype=metas[0][1], dims=(q.ndim,) + tuple(q.shape[:-2]) + (q.shape[-1], v.shape[-1]),
                    opts=(capacity, as_float(tau, "tau"), score, log_decay is None, as_bool(return_aux, "return_aux")))

    metas = agree(comm, local)
    same_everywhere([m["dtype"] for m in metas], "the dtype of q, k, v, lam", TypeError)
    same_everywhere([m["dims"] for m in metas], "(ndim, leading dims, Dk, Dv) of q, k, v")
    same_everywhere([m["opts"] for m in metas], "(capacity, tau, score, log_decay given, return_aux)")
    size, rank = comm.Get_size(), comm.Get_rank()
    cache = recv_cache(comm, rank - 1, tag=77) if rank else None
    result = dynamic_linear_attention(q, k, v, lam, log_decay=log_decay, cache=cache, return_aux=return_aux, **kw)
    if rank < size - 1:
        send_cache(result[1], comm, rank + 1, tag=77)
    return result
