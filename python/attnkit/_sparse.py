"""Block-sparse attention (BlockLayout) and LSH (Reformer) attention."""

from __future__ import annotations

import numpy as np

from . import _core
from ._array import Call, acc_dtype, as_bool, as_float, as_int, as_seed, checked_alloc

__all__ = ["BlockLayout", "block_sparse_attention", "lsh_buckets", "lsh_attention"]


def _pair(x, name):
    if isinstance(x, (tuple, list)):
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
    The constructor validates the CSR (sorted, in range) and raises ``ValueError`` otherwise.
    """

    __slots__ = ("_row_ptr", "_col_idx", "_bq", "_bk", "_heads", "_nqb", "_nkb")

    def __init__(self, row_ptr, col_idx, *, block_size, num_heads, num_blocks):
        bq, bk = _pair(block_size, "block_size")
        nqb, nkb = _pair(num_blocks, "num_blocks")
        heads = as_int(num_heads, "num_heads")
        row_ptr = _index_array(row_ptr, "row_ptr", np.int64)
        col_idx = _index_array(col_idx, "col_idx", np.int32)
        self._set(row_ptr, col_idx, bq, bk, heads, nqb, nkb)
        _core.layout_validate(self._ref())

    def _set(self, row_ptr, col_idx, bq, bk, heads, nqb, nkb):
        row_ptr.setflags(write=False)
        col_idx.setflags(write=False)
        self._row_ptr, self._col_idx = row_ptr, col_idx
        self._bq, self._bk, self._heads, self._nqb, self._nkb = bq, bk, heads, nqb, nkb

    @classmethod
    def _from_core(cls, t):
        obj = cls.__new__(cls)
        rp, ci, bq, bk, heads, nqb, nkb = t
        obj._set(np.asarray(rp), np.asarray(ci), bq, bk, heads, nqb, nkb)
        return obj

    def _tuple(self):
        return (self._row_ptr, self._col_idx, self._bq, self._bk, self._heads, self._nqb, self._nkb)

    def _ref(self):
        call = Call()
        return _core.BlockLayoutRef(call.tensor(self._row_ptr, "layout.row_ptr"),
                                    call.tensor(self._col_idx, "layout.col_idx"), self._bq, self._bk,
                                    self._heads, self._nqb, self._nkb)

    @classmethod
    def from_dense(cls, blocks, block_size):
        """Layout from a bool block mask ``[H, nQb, nKb]`` (``H`` = 1 or the query heads) or ``[nQb, nKb]``
        (shared); ``block_size`` is an int or ``(bq, bk)``."""
        blocks = np.asarray(blocks)
        if blocks.dtype != np.bool_:
            raise TypeError(f"blocks must be a bool array, got {blocks.dtype}")
        if blocks.ndim == 2:
            blocks = blocks[None]
        if blocks.ndim != 3:
            raise ValueError(f"blocks must be [H, nQb, nKb] or [nQb, nKb], got shape {blocks.shape}")
        bq, bk = _pair(block_size, "block_size")
        return cls._from_core(_core.layout_from_dense(blocks.astype(np.uint8), bq, bk))

    def to_dense(self) -> np.ndarray:
        """The bool block mask ``[num_heads, num_q_blocks, num_k_blocks]``."""
        d = checked_alloc(np.zeros, (self._heads * self._nqb, self._nkb), bool, "to_dense()")
        rows = np.repeat(np.arange(self._heads * self._nqb), np.diff(self._row_ptr))
        d[rows, self._col_idx] = True
        return d.reshape(self._heads, self._nqb, self._nkb)

    @property
    def block_size(self):
        """``(bq, bk)``: query rows and keys per block."""
        return (self._bq, self._bk)

    @property
    def num_heads(self) -> int:
        """1 (shared by all query heads) or the number of query heads."""
        return self._heads

    @property
    def num_blocks(self):
        """``(num_q_blocks, num_k_blocks)``."""
        return (self._nqb, self._nkb)

    @property
    def seq_lens(self):
        """``((Sq_min, Sq_max), (Sk_min, Sk_max))``: the sequence lengths this layout serves."""
        return (((self._nqb - 1) * self._bq + 1 if self._nqb else 0, self._nqb * self._bq),
                ((self._nkb - 1) * self._bk + 1 if self._nkb else 0, self._nkb * self._bk))

    @property
    def nnz(self) -> int:
        """Number of allowed blocks (over all heads)."""
        return int(self._col_idx.size)

    @property
    def density(self) -> float:
        """Allowed blocks / all blocks."""
        total = self._heads * self._nqb * self._nkb
        return self.nnz / total if total else 0.0

    @property
    def row_ptr(self) -> np.ndarray:
        return self._row_ptr

    @property
    def col_idx(self) -> np.ndarray:
        return self._col_idx

    def __or__(self, other):
        if not isinstance(other, BlockLayout):
            return NotImplemented
        return BlockLayout._from_core(_core.layout_union([self._tuple(), other._tuple()]))

    def __eq__(self, other):
        if not isinstance(other, BlockLayout):
            return NotImplemented
        return (self._tuple()[2:] == other._tuple()[2:] and np.array_equal(self._row_ptr, other._row_ptr)
                and np.array_equal(self._col_idx, other._col_idx))

    __hash__ = None

    def __repr__(self):
        return (f"BlockLayout(block_size={self.block_size}, num_blocks={self.num_blocks}, "
                f"num_heads={self._heads}, density={self.density:.4f})")


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
        Default ``1/sqrt(D)``.
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
    if not isinstance(layout, BlockLayout):
        raise TypeError(f"layout must be an attnkit.BlockLayout, got {type(layout).__name__}")
    call = Call()
    p = _core.BlockSparseParams()
    p.q = call.tensor(q, "q")
    p.k = call.tensor(k, "k")
    p.v = call.tensor(v, "v")
    p.layout = layout._ref()
    p.causal = as_bool(causal, "causal")
    if scale is not None:
        p.scale = as_float(scale, "scale")
    p.key_lengths = call.lengths(key_lengths)
    p.stream = call.stream
    return_lse = as_bool(return_lse, "return_lse")
    out, lse = _alloc_out(call, p, q, v, return_lse)
    _core.block_sparse_attention(p)
    return (out, lse) if return_lse else out


def _alloc_out(call, p, q, v, return_lse):
    qs, vs = tuple(getattr(q, "shape", ())), tuple(getattr(v, "shape", ()))
    out = lse = None
    if len(qs) >= 2 and len(vs) >= 1:
        out, p.out = call.empty(qs[:-1] + (vs[-1],), q.dtype)
        if return_lse:
            lse, p.lse = call.empty(qs[:-1], acc_dtype(q.dtype))
    return out, lse


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
    xr = call.tensor(x, "x")
    shape = tuple(getattr(x, "shape", ()))
    nb = as_int(num_buckets, "num_buckets")
    nh = as_int(num_hashes, "num_hashes")
    # (an out-of-range num_hashes is rejected by the core before it looks at out: no huge allocation)
    out, oref = (call.empty(shape[:-2] + (min(max(nh, 0), 1025), shape[-2]), np.int32)
                 if 2 <= len(shape) <= 4 else (None, _core.TensorRef()))
    _core.lsh_buckets(xr, oref, nb, nh, as_seed(seed), call.stream)
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
    scale : float, optional (default ``1/sqrt(D)``).
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
    p.q = call.tensor(q, "q")
    p.k = call.tensor(k, "k")
    p.v = call.tensor(v, "v")
    p.num_buckets = as_int(num_buckets, "num_buckets")
    p.num_hashes = as_int(num_hashes, "num_hashes")
    p.seed = as_seed(seed)
    p.causal = as_bool(causal, "causal")
    if scale is not None:
        p.scale = as_float(scale, "scale")
    p.stream = call.stream
    return_lse = as_bool(return_lse, "return_lse")
    out, lse = _alloc_out(call, p, q, v, return_lse)
    _core.lsh_attention(p)
    return (out, lse) if return_lse else out
