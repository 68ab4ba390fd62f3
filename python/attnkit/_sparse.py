"""Block-sparse attention (BlockLayout) and LSH (Reformer) attention."""

from __future__ import annotations

import numpy as np

from . import _core
from ._array import Call, as_bool, as_float, as_int, as_seed, checked_alloc

__all__ = ["BlockLayout", "block_sparse_attention", "lsh_buckets", "lsh_attention"]


def _pair(x, name):
    """An int or a pair (a tuple, list or 1-d array of two ints, as ``window`` takes) -> (rows, keys)."""
    if isinstance(x, (tuple, list)) or getattr(x, "ndim", None) == 1:
        if len(x) != 2:
            raise ValueError(f"{name} must be an int or a pair (rows, keys), got {x!r}")
        return as_int(x[0], f"{name}[0]"), as_int(x[1], f"{name}[1]")
    v = as_int(x, name)
    return v, v


def _index_array(x, name, dtype):
    """x as a 1-D C-contiguous array of `dtype`: integer arrays only (a float or bool array would be
    truncated), every value representable (a cast would wrap it)."""
    a = np.asarray(x)
    if a.dtype.kind not in "iu" and not (a.size == 0 and a.dtype.kind == "f"):
        raise TypeError(f"{name} must be an integer array, got dtype {a.dtype}")
    if a.size and a.dtype != dtype:
        info = np.iinfo(dtype)
        lo, hi = int(a.min()), int(a.max())
        if lo < info.min or hi > info.max:
            raise ValueError(f"{name} holds {lo if lo < info.min else hi}, outside the {np.dtype(dtype)} range "
                             f"[{info.min}, {info.max}]")
    return np.ascontiguousarray(a, dtype=dtype)


class BlockLayout:
    """Which key blocks each query block may attend to, per head (or shared by all heads).

    Stored as CSR: for row ``h * num_q_blocks + i`` (head ``h``, query block ``i``) the allowed key blocks
    are ``col_idx[row_ptr[row]:row_ptr[row + 1]]``, sorted. A layout of ``num_q_blocks x num_k_blocks``
    blocks of ``block_size = (bq, bk)`` serves every ``Sq`` with ``ceil(Sq / bq) == num_q_blocks`` and
    ``Sk`` with ``ceil(Sk / bk) == num_k_blocks`` (the last blocks may be ragged): query ``i`` may see key
    ``j`` when block ``(i // bq, j // bk)`` is allowed. ``num_heads`` is 1 (shared) or the number of query
    heads.

    Build one with :meth:`from_dense` or the constructors of :mod:`attnkit.layouts`; ``a | b`` is the union.
    The constructor ``BlockLayout(row_ptr, col_idx, *, block_size, num_heads, num_blocks)`` takes the CSR
    (``row_ptr`` int ``[num_heads * num_q_blocks + 1]``, ``col_idx`` int), ``block_size`` an int or
    ``(bq, bk)`` and ``num_blocks = (num_q_blocks, num_k_blocks)``, and validates it: ``ValueError`` for an
    unsorted or out-of-range CSR, sizes below 1 or values an index type cannot hold, ``TypeError`` for
    non-integer index arrays or sizes.
    """

    __slots__ = ("_impl", "_device_refs")

    def __init__(self, row_ptr, col_idx, *, block_size, num_heads, num_blocks):
        bq, bk = _pair(block_size, "block_size")
        nqb, nkb = _pair(num_blocks, "num_blocks")
        heads = as_int(num_heads, "num_heads")
        row_ptr = _index_array(row_ptr, "row_ptr", np.int64)
        col_idx = _index_array(col_idx, "col_idx", np.int32)
        self._wrap(_core.Layout(row_ptr, col_idx, bq, bk, heads, nqb, nkb))

    def _wrap(self, core_layout):
        self._impl = core_layout  # the C++ layout (validated); row_ptr / col_idx are read-only views of it
        self._device_refs = {}
        return self

    @classmethod
    def _from_core(cls, core_layout):
        return cls.__new__(cls)._wrap(core_layout)

    def _ref(self, call: Call):
        """The layout as the call's backend reads it: host arrays on the CPU; on a CUDA device, copies made
        once per device and cached with the layout (``Layout.ref_on``)."""
        if not call.cuda:
            return self._impl.ref()
        ref = self._device_refs.get(call.device_index)
        if ref is None:
            ref = self._device_refs[call.device_index] = self._impl.ref_on(call.device_index, call.stream)
        return ref

    @classmethod
    def from_dense(cls, blocks, block_size):
        """Layout from a bool block mask ``blocks`` ``[H, nQb, nKb]`` (``H`` = 1 or the query heads) or
        ``[nQb, nKb]`` (shared); ``block_size`` is an int or ``(bq, bk)``. ``TypeError`` for a mask that is not
        bool or a non-integer block size, ``ValueError`` for another rank or a block size below 1."""
        blocks = np.asarray(blocks)
        if blocks.dtype != np.bool_:
            raise TypeError(f"blocks must be a bool array, got {blocks.dtype}")
        if blocks.ndim == 2:
            blocks = blocks[None]
        if blocks.ndim != 3:
            raise ValueError(f"blocks must be [H, nQb, nKb] or [nQb, nKb], got shape {blocks.shape}")
        bq, bk = _pair(block_size, "block_size")
        return cls._from_core(_core.Layout.from_dense(blocks.astype(np.uint8), bq, bk))

    def to_dense(self) -> np.ndarray:
        """The bool block mask ``[num_heads, num_q_blocks, num_k_blocks]``."""
        heads, (nqb, nkb) = self.num_heads, self.num_blocks
        d = checked_alloc(np.zeros, (heads * nqb, nkb), bool, "to_dense()")
        rows = np.repeat(np.arange(heads * nqb), np.diff(self.row_ptr))
        d[rows, self.col_idx] = True
        return d.reshape(heads, nqb, nkb)

    @property
    def block_size(self):
        """``(bq, bk)``: query rows and keys per block."""
        return (self._impl.block_q, self._impl.block_k)

    @property
    def num_heads(self) -> int:
        """1 (shared by all query heads) or the number of query heads."""
        return self._impl.num_heads

    @property
    def num_blocks(self):
        """``(num_q_blocks, num_k_blocks)``."""
        return (self._impl.num_q_blocks, self._impl.num_k_blocks)

    @property
    def seq_lens(self):
        """``((Sq_min, Sq_max), (Sk_min, Sk_max))``: the sequence lengths this layout serves."""
        (bq, bk), (nqb, nkb) = self.block_size, self.num_blocks
        return (((nqb - 1) * bq + 1 if nqb else 0, nqb * bq), ((nkb - 1) * bk + 1 if nkb else 0, nkb * bk))

    @property
    def nnz(self) -> int:
        """Number of allowed blocks (over all heads)."""
        return int(self.col_idx.size)

    @property
    def density(self) -> float:
        """Allowed blocks / all blocks."""
        total = self.num_heads * self.num_blocks[0] * self.num_blocks[1]
        return self.nnz / total if total else 0.0

    @property
    def row_ptr(self) -> np.ndarray:
        """CSR row pointers, int64 ``[num_heads * num_q_blocks + 1]`` (read-only)."""
        return self._impl.row_ptr

    @property
    def col_idx(self) -> np.ndarray:
        """CSR key-block indices, int32 ``[nnz]`` (read-only)."""
        return self._impl.col_idx

    def __or__(self, other):
        if not isinstance(other, BlockLayout):
            return NotImplemented
        return BlockLayout._from_core(_core.Layout.unite([self._impl, other._impl]))

    def __eq__(self, other):
        if not isinstance(other, BlockLayout):
            return NotImplemented
        return (self.block_size == other.block_size and self.num_blocks == other.num_blocks
                and self.num_heads == other.num_heads and np.array_equal(self.row_ptr, other.row_ptr)
                and np.array_equal(self.col_idx, other.col_idx))

    __hash__ = None

    def __repr__(self):
        return (f"BlockLayout(block_size={self.block_size}, num_blocks={self.num_blocks}, "
                f"num_heads={self.num_heads}, density={self.density:.4f})")


def block_sparse_attention(q, k, v, layout, *, causal=False, scale=None, key_lengths=None, return_lse=False):
    """Attention restricted to the key blocks a :class:`BlockLayout` allows.

    Equals ``attention(q, k, v, mask=M, causal=causal, scale=scale, key_lengths=key_lengths)`` with
    ``M[b, h, i, j] = layout.to_dense()[h or 0, i // bq, j // bk]``, at a cost that follows the number of
    allowed blocks (the kernel visits only them; memory stays O(threads * tile)).

    Parameters
    ----------
    q, k, v : arrays as in :func:`attnkit.attention` (ranks 2-4, GQA, every float dtype, any strides).
    layout : BlockLayout
        ``num_heads`` 1 or ``Hq``; ``num_blocks`` must equal ``(ceil(Sq / bq), ceil(Sk / bk))``.
    causal : bool
        Causal masking (bottom-right aligned) inside the allowed blocks.
    scale : float, optional
        Default ``1/sqrt(D)``; the range of :func:`attnkit.attention`'s ``scale``.
    key_lengths : int array ``[B]`` or int, optional
        Valid keys per batch entry.
    return_lse : bool
        Also return the log-sum-exp ``[B, Hq, Sq]``.

    Returns
    -------
    out, or ``(out, lse)``; rows with no allowed key give 0 and ``-inf``.

    Raises
    ------
    ValueError
        Layout geometry or head count that does not fit q/k, and every error of :func:`attnkit.attention`.
    TypeError
        ``layout`` that is not a BlockLayout; bad dtypes.
    """
    call = Call()
    p = _block_sparse_params(call, q, k, v, layout, causal, scale, key_lengths)
    return _run(call, p, _core.block_sparse_attention, _core.block_sparse_attention_outputs, return_lse)


def _block_sparse_params(call, q, k, v, layout, causal, scale, key_lengths):
    """BlockSparseParams with the inputs of a block-sparse call (forward or backward), outputs unset."""
    if not isinstance(layout, BlockLayout):
        raise TypeError(f"layout must be an attnkit.BlockLayout, got {type(layout).__name__}")
    p = _core.BlockSparseParams()
    call.qkv(p, q, k, v)
    p.causal = as_bool(causal, "causal")
    if scale is not None:
        p.scale = as_float(scale, "scale")
    p.key_lengths = call.lengths(key_lengths)
    p.stream = call.stream
    p.layout = layout._ref(call)
    return p


def _run(call, p, fn, query, return_lse):
    """Allocates out (and lse) from the core's output query, runs fn(p), returns out or (out, lse)."""
    if as_bool(return_lse, "return_lse"):
        out, lse = call.outputs(p, query, "out", "lse")
        fn(p)
        return out, lse
    out, = call.outputs(p, query, "out")
    fn(p)
    return out


def lsh_buckets(x, *, num_buckets, num_hashes=1, seed=0):
    """Angular LSH bucket ids (Reformer), ``int32 [B, H, num_hashes, S]`` (rank follows ``x``:
    ``[H, R, S]`` for 3-D, ``[R, S]`` for 2-D).

    Round ``r`` draws a Gaussian rotation ``R_r: [D, num_buckets / 2]`` from the counter-based generator
    (``R_r[d, c]`` = normal number ``d * num_buckets / 2 + c`` of Philox stream ``kStreamLsh + r`` under
    ``seed``; identical on every platform) and assigns ``argmax([x R_r, -x R_r])`` (ties: the lowest
    bucket). Projections are computed in float64.

    Parameters
    ----------
    x : array ``[B, H, S, D]`` (or ``[H, S, D]``, ``[S, D]``), any float dtype.
    num_buckets : int, even, >= 2.
    num_hashes : int >= 1, the number of rounds.
    seed : int in ``[0, 2**64)``.

    Raises
    ------
    ValueError
        Odd or too small ``num_buckets``, ``num_hashes < 1``, bad shapes.
    TypeError
        Non-float ``x``.
    """
    call = Call()
    p = _core.LshBucketsParams()
    p.x = call.tensor(x, "x")
    p.num_buckets = as_int(num_buckets, "num_buckets")
    p.num_hashes = as_int(num_hashes, "num_hashes")
    p.seed = as_seed(seed)
    p.stream = call.stream
    out, = call.outputs(p, _core.lsh_buckets_outputs, "out")
    _core.lsh_buckets(p)
    return out


def lsh_attention(q, k, v, *, num_buckets, num_hashes=1, seed=0, causal=False, scale=None, return_lse=False):
    """Reformer (LSH) attention.

    For each round ``r`` (``num_hashes`` of them), each query attends exactly (softmax) to the keys hashed
    to its own round-``r`` bucket (:func:`lsh_buckets` with the same ``seed`` hashes ``q`` and ``k`` with
    the same rotations), and to no others; with ``causal``, also only to keys ``j <= i + (Sk - Sq)``. The
    rounds are combined with :func:`attnkit.merge_attention`: a key sharing the query's bucket in several
    rounds counts once per round, and ``lse`` is the log-sum-exp over the rounds (``num_hashes`` identical
    rounds give the one-round output and ``lse + log(num_hashes)``). Rows whose bucket holds no allowed
    key in any round give 0 and ``-inf``.

    Cost: hashing O(S * D * num_buckets) and, per round, O(sum over buckets of |queries| * |keys| * D):
    O(S * bucket size * D) with balanced buckets, O(S^2 * D) when everything lands in one bucket.

    Parameters
    ----------
    q, k, v : arrays as in :func:`attnkit.attention` (GQA allowed; kv head ``h // (Hq // Hkv)`` is hashed
        with the same rotations).
    num_buckets : int, even, >= 2.
    num_hashes : int >= 1.
    seed : int in ``[0, 2**64)``.
    causal : bool
    scale : float, optional (default ``1/sqrt(D)``; the range of :func:`attnkit.attention`'s ``scale``).
    return_lse : bool

    Returns
    -------
    out, or ``(out, lse)``.

    Raises
    ------
    ValueError, TypeError
        As :func:`attnkit.attention`, plus bad ``num_buckets`` / ``num_hashes`` / ``seed``.
    """
    call = Call()
    p = _core.LshAttentionParams()
    call.qkv(p, q, k, v)
    p.num_buckets = as_int(num_buckets, "num_buckets")
    p.num_hashes = as_int(num_hashes, "num_hashes")
    p.seed = as_seed(seed)
    p.causal = as_bool(causal, "causal")
    if scale is not None:
        p.scale = as_float(scale, "scale")
    p.stream = call.stream
    return _run(call, p, _core.lsh_attention, _core.lsh_attention_outputs, return_lse)
