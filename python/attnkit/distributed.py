"""Sequence parallelism across processes on MPI (mpi4py): ring attention, zig-zag sharding, linear
attention and Performer by state passing, and DLA pipelining.

Every rank holds a shard of the sequence (axis -2 of q, k, v); the functions are collective over ``comm``
(every rank calls them with its shard) and give each rank its rows of the result of the single-process
function on the gathered sequence. mpi4py is imported on first use: ``import attnkit`` never needs MPI.

Bad input (an invalid argument on any rank, shapes or dtypes or options that differ across ranks) raises
the same ValueError / TypeError on every rank, never a hang: the ranks first exchange a small description
of their arguments and decide together. A rank whose ``comm`` is not a usable communicator raises alone
(it cannot reach the others).
"""

from __future__ import annotations

import math
import time

import numpy as np

from . import _mpi
from ._array import acc_dtype, as_bool, as_float, is_cuda_array
from ._exact import attention, merge_attention
from ._mpi import agree, array_module, check_comm, check_layout, same_everywhere, to4
from ._dist_linear import dla_pipeline, linear_attention, performer_attention, recv_cache, send_cache

__all__ = ["ring_attention", "shard", "unshard", "linear_attention", "performer_attention", "send_cache",
           "recv_cache", "dla_pipeline"]


# ------------------------------------------------------------------------------------------- sharding
def shard(x, comm, *, layout="contiguous", axis=-2):
    """This rank's shard of the global array ``x`` (the same array on every rank), along ``axis``.

    ``"contiguous"``: rank ``r`` of ``P`` gets the ``r``-th of ``P`` nearly equal consecutive pieces (the
    first ``S % P`` one longer). ``"zigzag"``: the sequence is cut into ``2P`` nearly equal chunks and rank
    ``r`` gets chunks ``r`` and ``2P - 1 - r``, concatenated, so that under causal attention every rank has
    the same number of (query, key) pairs (one early and one late chunk).

    Returns a view (contiguous) or a new array (zigzag). Raises ValueError / TypeError on every rank when
    ``x``'s shape, dtype or the arguments differ across ranks.
    """
    check_comm(comm)

    def local():
        check_layout(layout)
        meta = _mpi.array_meta(x, "x")
        if not -x.ndim <= axis < x.ndim:
            raise ValueError(f"axis must lie in [-{x.ndim}, {x.ndim}), got {axis}")
        return meta, layout, axis % x.ndim

    metas = agree(comm, local)
    same_everywhere([m[0][1] for m in metas], "x.dtype", TypeError)
    same_everywhere(metas, "(x's array type, dtype, shape; layout; axis)")
    pieces = _mpi.local_pieces(x, layout, comm, axis)
    return pieces[0] if len(pieces) == 1 else array_module(x).concatenate(pieces, axis=axis)


def unshard(x, comm, *, layout="contiguous", axis=-2):
    """The global array from every rank's shard ``x`` (inverse of :func:`shard`), on every rank.

    With ``layout="contiguous"`` the shards may have any lengths along ``axis`` (rank order); with
    ``"zigzag"`` their lengths must be those :func:`shard` makes. Raises ValueError / TypeError on every
    rank when shapes (other than along ``axis``), dtypes or the arguments differ across ranks.
    """
    check_comm(comm)

    def local():
        check_layout(layout)
        module, dtype, shape = _mpi.array_meta(x, "x")
        if not -x.ndim <= axis < x.ndim:
            raise ValueError(f"axis must lie in [-{x.ndim}, {x.ndim}), got {axis}")
        ax = axis % x.ndim
        return module, dtype, shape[:ax] + shape[ax + 1:], layout, ax, shape[ax]

    metas = agree(comm, local)
    same_everywhere([m[1] for m in metas], "x.dtype", TypeError)
    same_everywhere([m[:5] for m in metas], "(x's array type, dtype, shape off the axis; layout; axis)")
    ax, lengths = metas[0][4], [m[5] for m in metas]
    pieces_of = [_mpi.segments_from_lengths(layout, lengths, r, "x") for r in range(len(lengths))]
    xp = array_module(x)
    front = xp.ascontiguousarray(xp.moveaxis(x, ax, 0))
    rest = front.shape[1:]
    transport = _mpi.Transport(comm, xp is not np)
    parts = _mpi.gather_arrays(transport, front, [(n,) + rest for n in lengths], x.dtype)
    out = xp.empty((sum(lengths),) + rest, dtype=x.dtype)
    for part, pieces in zip(parts, pieces_of):
        at = 0
        for offset, n in pieces:
            out[offset:offset + n] = part[at:at + n]
            at += n
    return xp.moveaxis(out, 0, ax)


# ------------------------------------------------------------------------------------------- ring attention
_INF = math.inf
_UNSUPPORTED = ("mask", "bias", "alibi_slopes")


def _side(x):
    """A window side as an int, or inf for unbounded (None or negative, as in attention)."""
    return _INF if x is None or x < 0 else int(x)


def _block_plan(qn, kn, d, left, right):
    """Rows ``[i0, i1)`` and keys ``[j0, j1)`` of a (query piece, key piece) pair that can interact under
    the global constraint ``i + d - left <= j <= i + d + right`` (local indices, ``d`` the offset of the
    diagonal), and the (left, right) window that expresses it on the sliced pieces with attention's
    bottom-right alignment (both sides >= 0, None = unbounded). None when nothing interacts."""
    i0 = 0 if right == _INF else max(0, -d - right)
    i1 = qn if left == _INF else min(qn, kn - d + left)
    j0 = 0 if left == _INF else max(0, d - left)
    j1 = kn if right == _INF else min(kn, qn + d + right)
    if i0 >= i1 or j0 >= j1:
        return None
    e, a = i0 + d - j0, (j1 - j0) - (i1 - i0)   # diagonal offset after slicing, attention's own offset
    win_left = None if left == _INF else int(a - e + left)
    win_right = None if right == _INF else int(e + right - a)
    window = None if win_left is None and win_right is None else (win_left, win_right)
    return i0, i1, j0, j1, window


def _pairs(plan, d, left, right, lengths, B):
    """Number of allowed (query, key) pairs of a planned block per head, summed over the batch."""
    i0, i1, j0, j1, _ = plan
    i = np.arange(i0, i1)
    lo = np.maximum(j0, i + d - left) if left != _INF else np.full_like(i, j0)
    hi = np.minimum(j1, i + d + right + 1) if right != _INF else np.full_like(i, j1)
    caps = [j1] * B if lengths is None else [j0 + int(n) for n in lengths]
    return int(sum(np.clip(np.minimum(hi, cap) - lo, 0, None).sum() for cap in caps))


def ring_attention(q, k, v, comm, *, causal=False, window=None, key_lengths=None, scale=None, softcap=None,
                   layout="contiguous", return_lse=False, progress_thread=True, stats=None, **attention_options):
    """Exact attention over a sequence sharded across the ranks of ``comm`` (ring attention, Liu et al.
    2023): collective, every rank gets its rows of ``attention`` on the gathered sequence.

    Rank ``r`` holds queries ``q [B, Hq, Sq_r, D]`` and keys / values ``k [B, Hkv, Sk_r, D]``,
    ``v [B, Hkv, Sk_r, Dv]`` (any lengths per rank with the contiguous layout; 3-D and 2-D as in
    :func:`attnkit.attention`). The K/V blocks travel around the ring: at each of ``P`` steps a rank sends
    the block it holds to rank ``r + 1`` and receives the next from rank ``r - 1`` with non-blocking MPI
    calls, overlapped with the local :func:`attnkit.attention` of its queries against the block it holds;
    the partial results are combined in a fixed order with :func:`attnkit.merge_attention` (in float32,
    float64 for float64 inputs), so a fixed rank count gives the same bits run to run. Blocks the masks
    leave empty are not computed. Each rank sends ``(P - 1)`` K/V blocks.

    Parameters
    ----------
    q, k, v : this rank's shards (NumPy, or CuPy with NCCL or a CUDA-aware MPI; see :mod:`attnkit._mpi`).
    comm : mpi4py intra-communicator, e.g. ``MPI.COMM_WORLD``.
    causal, window, scale, softcap :
        As in :func:`attnkit.attention`, for the global sequence: bottom-right alignment with
        ``a = Sk - Sq`` of the global lengths. The same on every rank.
    key_lengths : int array ``[B]`` or int, optional
        Valid keys per batch entry of the *global* key sequence; the same on every rank.
    layout : {"contiguous", "zigzag"}
        How the shards were cut: consecutive pieces in rank order, or :func:`shard` with
        ``layout="zigzag"`` (equal causal work per rank; q, k and v all zig-zag sharded).
    return_lse : bool
        Also return the log-sum-exp of this rank's rows.
    progress_thread : bool
        Drive the transfer from a helper thread that polls the requests during the local attention (most
        MPI libraries move a large message only inside MPI calls, so without it the transfer starts when
        the compute ends); used when MPI runs with ``MPI_THREAD_SERIALIZED`` or more (mpi4py asks for
        ``MPI_THREAD_MULTIPLE``); the caller makes no MPI call until the thread has ended.
    stats : dict, optional
        Filled with ``bytes_sent``, ``steps``, ``compute_s`` (local attention and merges), ``wait_s`` (time
        blocked on communication after the compute), ``pairs`` (allowed (query, key) pairs computed per
        head) and ``blocks`` (attention calls).
    **attention_options :
        ``mask``, ``bias`` and ``alibi_slopes`` are not supported (ValueError on every rank).

    Returns
    -------
    out : ``[B, Hq, Sq_r, Dv]`` in q's dtype, or ``(out, lse)`` with ``lse [B, Hq, Sq_r]`` float32 (float64
    for float64 inputs).

    Raises
    ------
    ValueError, TypeError
        On every rank: any rank's invalid argument (as :func:`attnkit.attention` would raise it), B / H / D
        or dtypes or options that differ across ranks, zig-zag shards of the wrong lengths.
    """
    comm = check_comm(comm)
    size, rank = comm.Get_size(), comm.Get_rank()

    def local():
        if attention_options:
            bad = sorted(attention_options)
            if any(name not in _UNSUPPORTED for name in bad):
                raise TypeError(f"ring_attention got unexpected keyword arguments {bad}")
            raise ValueError(f"{', '.join(bad)}: not supported by ring_attention (masks and biases are per "
                             "(query, key) pair of the global sequence); use causal, window or key_lengths")
        check_layout(layout)
        metas = [_mpi.array_meta(x, n) for x, n in ((q, "q"), (k, "k"), (v, "v"))]
        if not all(2 <= len(m[2]) <= 4 for m in metas):
            raise ValueError(f"q, k, v must be 2-, 3- or 4-D, got shapes {[list(m[2]) for m in metas]}")
        q4, k4, v4 = (to4(x)[0] for x in (q, k, v))
        # the single-process validator on empty pieces: shapes, dtypes and option values, no work
        attention(q4[:, :, :0], k4[:, :, :0], v4[:, :, :0], causal=causal, window=window, scale=scale,
                  softcap=softcap)
        opts = (as_bool(causal, "causal"), None if window is None else tuple(window),  # plain floats: a 0-d array
                None if scale is None else as_float(scale, "scale"),  # (NumPy or CuPy) travels as its value
                None if softcap is None else as_float(softcap, "softcap"), layout, as_bool(return_lse, "return_lse"))
        lens = None if key_lengths is None else np.asarray(
            key_lengths.get() if is_cuda_array(key_lengths) else key_lengths).tolist()
        return dict(module=metas[0][0], dtype=metas[0][1], ndim=q.ndim, B=q4.shape[0], Hq=q4.shape[1],
                    Hkv=k4.shape[1], D=q4.shape[3], Dv=v4.shape[3], opts=opts, key_lengths=lens,
                    Sq=q4.shape[2], Sk=k4.shape[2])

    metas = agree(comm, local)
    same_everywhere([m["module"] for m in metas], "the array type of q, k, v (NumPy or CuPy)", TypeError)
    same_everywhere([m["dtype"] for m in metas], "the dtype of q, k, v", TypeError)
    same_everywhere([(m["ndim"], m["B"], m["Hq"], m["Hkv"], m["D"], m["Dv"]) for m in metas],
                    "(ndim, B, Hq, Hkv, D, Dv) of q, k, v")
    same_everywhere([m["opts"] for m in metas], "(causal, window, scale, softcap, layout, return_lse)")
    same_everywhere([m["key_lengths"] for m in metas], "key_lengths")
    sq = [m["Sq"] for m in metas]
    sk = [m["Sk"] for m in metas]
    qsegs = _mpi.segments_from_lengths(layout, sq, rank, "q")
    ksegs = [_mpi.segments_from_lengths(layout, sk, r, "k") for r in range(size)]
    B, Sq_g, Sk_g = metas[0]["B"], sum(sq), sum(sk)
    lengths = _mpi.global_lengths(key_lengths, B, Sk_g)

    q4, lead = to4(q)
    k4, v4 = to4(k)[0], to4(v)[0]
    xp = array_module(q)
    acc = acc_dtype(q.dtype)
    Hq, Hkv, D, Dv = q4.shape[1], k4.shape[1], k4.shape[3], v4.shape[3]
    out = xp.zeros((B, Hq, q4.shape[2], Dv), dtype=acc)
    lse = xp.full((B, Hq, q4.shape[2]), -np.inf, dtype=acc)
    left = _INF if window is None else _side(window[0])
    right = _INF if window is None else _side(window[1])
    if causal:
        right = min(right, 0)
    a = Sk_g - Sq_g
    kbytes = [B * Hkv * n * D * q.dtype.itemsize for n in sk]
    vbytes = [B * Hkv * n * Dv * q.dtype.itemsize for n in sk]
    transport = _mpi.Transport(comm, xp is not np, progress_thread=progress_thread)
    buf = xp.concatenate([_mpi.as_bytes(k4), _mpi.as_bytes(v4)])
    info = dict(bytes_sent=0, steps=size, compute_s=0.0, wait_s=0.0, pairs=0, blocks=0)
    for step in range(size):
        src = (rank - step) % size
        wait = None
        if step < size - 1:
            nxt = (rank - step - 1) % size
            recv = xp.empty(kbytes[nxt] + vbytes[nxt], dtype=xp.uint8)
            wait = transport.exchange(buf, (rank + 1) % size, recv, (rank - 1) % size, step)
            info["bytes_sent"] += int(buf.size)
        t0 = time.perf_counter()
        kb = buf[:kbytes[src]].view(q.dtype).reshape(B, Hkv, sk[src], D)
        vb = buf[kbytes[src]:].view(q.dtype).reshape(B, Hkv, sk[src], Dv)
        qa = 0
        for qoff, qn in qsegs:
            ka = 0
            for koff, kn in ksegs[src]:
                d = qoff + a - koff
                plan = _block_plan(qn, kn, d, left, right)
                lens = None if plan is None else _mpi.local_lengths(lengths, koff + plan[2], plan[3] - plan[2])
                if plan is not None and (lens is None or lens.any()):
                    i0, i1, j0, j1, win = plan
                    o, l = attention(q4[:, :, qa + i0:qa + i1], kb[:, :, ka + j0:ka + j1],
                                     vb[:, :, ka + j0:ka + j1], window=win, key_lengths=lens, scale=scale,
                                     softcap=softcap, return_lse=True)
                    rows = slice(qa + i0, qa + i1)
                    out[:, :, rows], lse[:, :, rows] = merge_attention([out[:, :, rows], o.astype(acc, copy=False)],
                                                                       [lse[:, :, rows], l])
                    info["pairs"] += Hq * _pairs(plan, d, left, right, lens, B)
                    info["blocks"] += 1
                ka += kn
            qa += qn
        info["compute_s"] += time.perf_counter() - t0
        if wait is not None:
            t0 = time.perf_counter()
            wait()
            info["wait_s"] += time.perf_counter() - t0
            buf = recv
    if stats is not None:
        stats.update(info)
    shape = tuple(q.shape[:-1]) + (Dv,)
    result = out.astype(q.dtype, copy=False).reshape(shape)
    return (result, lse.reshape(shape[:-1])) if return_lse else result
