"""Positional encodings: rope (C++ kernel), sinusoidal_positions and alibi_slopes."""

from __future__ import annotations

import math

import numpy as np

from . import _core
from ._array import Call, as_bool, as_float, as_int, checked_alloc, float_dtype

__all__ = ["rope", "sinusoidal_positions", "alibi_slopes"]


def rope(x, *, positions=None, base=10000.0, rotary_dim=None, interleaved=False):
    """Rotary position embedding (RoPE; Su et al. 2021) of queries or keys.

    Pair ``p`` (``0 <= p < r/2``, ``r = rotary_dim``) of the row at position ``t`` is rotated by
    ``theta = t * base**(-2p/r)``: ``(a, b) -> (a cos(theta) - b sin(theta), b cos(theta) + a sin(theta))``.
    Rotating q and k this way makes ``q_i . k_j`` depend on positions only through ``i - j``.

    Parameters
    ----------
    x : array ``[B, H, S, D]`` (or ``[H, S, D]``, ``[S, D]``)
        NumPy (CPU backend) or CuPy (CUDA backend); float32, float64, float16 or ``ml_dtypes.bfloat16``.
        Any strides (e.g. heads as a transposed view of a ``[B, S, H*D]`` projection) are read in place.
    positions : int array ``[S]`` or ``[B, S]``, optional
        Position of each row, in ``[0, 2**31 - 1]``; default ``arange(S)``. A decoding step passes its
        offset, e.g. ``positions=[t]``; padded batches pass per-sequence positions as ``[B, S]``.
    base : float
        Frequency base, finite and ``> 0`` (10000 in RoFormer and Llama 2, 500000 in Llama 3).
    rotary_dim : int, optional
        Rotate only the first ``r`` dims (even, ``2 <= r <= D``; GPT-J and GPT-NeoX use a fraction of
        ``D``); the rest pass through. Default ``D``, which must then be even.
    interleaved : bool
        ``False`` pairs dims ``(p, p + r/2)`` (GPT-NeoX, Llama, HF ``rotate_half``); ``True`` pairs
        ``(2p, 2p + 1)`` (GPT-J, the RoFormer paper).

    Returns
    -------
    array of ``x``'s shape and dtype (C-contiguous). Angles, sines and cosines are computed in double
    precision, the rotation in float32 (float64 for float64 inputs).

    Raises
    ------
    ValueError
        ``x`` not 2-, 3- or 4-D, an odd ``D`` without ``rotary_dim``, a bad ``rotary_dim`` or ``base``,
        ``positions`` of the wrong shape or with a value outside ``[0, 2**31 - 1]``.
    TypeError
        Non-floating ``x``, non-integer ``positions``, arrays on different devices.
    """
    call = Call()
    p = _core.RopeParams()
    p.x = call.tensor(x, "x")
    if positions is not None:
        pos = call.array(positions, "positions", coerce=True)
        if pos.dtype.kind not in "iu":
            raise TypeError(f"positions must be an integer array, got dtype {pos.dtype}")
        if pos.dtype not in (np.int32, np.int64):
            if pos.dtype == np.uint64 and pos.size and int(pos.max()) >= 2**63:
                raise ValueError("positions must lie in [0, 2**31 - 1], got a value above 2**63")
            pos = pos.astype(np.int64)
        p.positions = call.tensor(pos, "positions")
    p.base = as_float(base, "base")
    if rotary_dim is not None:
        p.rotary_dim = as_int(rotary_dim, "rotary_dim")
        if p.rotary_dim == 0:
            raise ValueError("rotary_dim must be even and >= 2, got 0")
    p.interleaved = as_bool(interleaved, "interleaved")
    p.stream = call.stream
    out, = call.outputs(p, _core.rope_outputs, "out")
    _core.rope(p)
    return out


def sinusoidal_positions(seq_len, dim, *, base=10000.0, dtype=np.float32):
    """The sinusoidal position table of "Attention Is All You Need" (Vaswani et al. 2017, section 3.5).

    ``PE[t, 2i] = sin(t / base**(2i/D))`` and ``PE[t, 2i+1] = cos(t / base**(2i/D))``; for an odd ``D``
    the last column is the ``sin`` of its pair. Computed in float64, rounded once to ``dtype``.

    Parameters
    ----------
    seq_len : int
        ``S >= 0`` positions ``0 .. S-1``.
    dim : int
        ``D >= 1`` model (embedding) dims.
    base : float
        Wavelength base, finite and ``> 0``.
    dtype : float32, float64, float16 or bfloat16

    Returns
    -------
    NumPy array ``[S, D]`` (add it to the token embeddings; ``cupy.asarray`` moves it to the GPU).

    Raises
    ------
    ValueError
        ``seq_len < 0``, ``dim < 1``, a bad ``base``, or a table too large to allocate (raised before any
        work). ``TypeError``: non-integer sizes, a bad dtype.
    """
    S = as_int(seq_len, "seq_len")
    D = as_int(dim, "dim")
    base = as_float(base, "base")
    dt = float_dtype(dtype)
    if S < 0:
        raise ValueError(f"seq_len must be >= 0, got {S}")
    if D < 1:
        raise ValueError(f"dim must be >= 1, got {D}")
    if not (math.isfinite(base) and base > 0):
        raise ValueError(f"base must be finite and > 0, got {base}")
    pe = checked_alloc(np.empty, (S, D), dt, "sinusoidal_positions(seq_len, dim)")
    div = base ** (np.arange(0, D, 2, dtype=np.float64) / D)  # base^(2i/D)
    rows = max(1, 2**20 // D)  # float64 scratch of ~8 MiB per block of rows, whatever S x D asks for
    for r0 in range(0, S, rows):
        angle = np.arange(r0, min(S, r0 + rows), dtype=np.float64)[:, None] / div
        pe[r0:r0 + rows, 0::2] = np.sin(angle)  # rounded once to dtype
        pe[r0:r0 + rows, 1::2] = np.cos(angle[:, : D // 2])
    return pe


def alibi_slopes(num_heads):
    """The per-head slopes of ALiBi (Press et al. 2022, "Train Short, Test Long"), for
    ``attention(..., alibi_slopes=...)``.

    For a power of two ``n``: ``slope[h] = 2**(-8 (h + 1) / n)``. Otherwise, with ``c`` the largest power
    of two below ``n``: the ``c`` slopes of ``c`` heads, then every other slope of ``2c`` heads
    (``2**(-8 (2j + 1) / (2c))``, ``j = 0 .. n - c - 1``), as in the paper's reference code.

    Parameters
    ----------
    num_heads : int
        ``H >= 1``.

    Returns
    -------
    NumPy float32 array ``[H]``.

    Raises
    ------
    ValueError
        ``num_heads < 1``, or more heads than an array can hold (raised at once). ``TypeError``: not an
        integer.
    """
    n = as_int(num_heads, "num_heads")
    if n < 1:
        raise ValueError(f"num_heads must be >= 1, got {n}")

    slopes = checked_alloc(np.empty, (n,), np.float32, "alibi_slopes(num_heads)")
    c = 1 << (n.bit_length() - 1)
    slopes[:c] = 2.0 ** (-8.0 * np.arange(1, c + 1, dtype=np.float64) / c)  # h + 1 over c heads
    slopes[c:] = 2.0 ** (-8.0 * np.arange(1, 2 * (n - c), 2, dtype=np.float64) / (2 * c))  # odd ones of 2c
    return slopes
