"""Constructors of block layouts for :func:`attnkit.block_sparse_attention`.

Every rule below is exact, stated on block indices: ``n = ceil(seq_len / block_size)`` blocks per side,
query block ``i``, key block ``j``. All build square layouts (``Sq = Sk = seq_len``, square blocks); use
:meth:`attnkit.BlockLayout.from_dense` for anything else. ``causal=True`` additionally drops every block
with ``j > i`` (the kernel's element-level ``causal`` flag then trims the diagonal blocks). ``num_heads > 1``
repeats the layout per head (for :func:`bigbird`: with different random blocks per head).

Errors, for every constructor: ``TypeError`` for a non-integer size, count or seed (a Python or NumPy
integer or a 0-d integer array is fine) or a non-bool ``causal``; ``ValueError``, naming the argument, for
``block_size``, ``num_heads``, ``dilation`` or ``local_blocks`` below 1, a negative block count, a seed
outside ``[0, 2**64)``, a global token outside ``[0, seq_len)``, ``global_blocks > local_blocks``
(:func:`fixed`), or a layout past the limits (at most 2^27 block rows and 2^27 allowed blocks).

Compared with DeepSpeed's ``SparsityConfig`` family (``deepspeed.ops.sparse_attention``):

- :func:`sliding_window` counts ``window_blocks`` per side; DeepSpeed's
  ``LocalSlidingWindowSparsityConfig(num_sliding_window_blocks=w)`` counts the whole band (``w = 2 *
  window_blocks + 1``).
- :func:`longformer` takes global *token* positions (their blocks become global) and a dilation;
  ``BSLongformerSparsityConfig`` takes global *block* indices (or ranges) and has no dilation.
- :func:`bigbird` matches ``BigBirdSparsityConfig`` (first blocks global, band, random blocks per row) except
  that the band is counted per side, random blocks never repeat a block the row already has (DeepSpeed may
  draw a window or global block again), and draws come from Philox keyed by ``seed`` (identical on every
  platform) rather than the global ``random`` module.
- :func:`fixed` matches ``FixedSparsityConfig`` with ``horizontal_global_attention=False`` and
  ``num_different_global_patterns=1``.
"""

from __future__ import annotations

from . import _core
from ._array import as_bool, as_int, as_seed
from ._sparse import BlockLayout

__all__ = ["sliding_window", "longformer", "bigbird", "fixed", "union"]


def sliding_window(seq_len, block_size, window_blocks, *, causal=False, num_heads=1) -> BlockLayout:
    """Local band: block ``(i, j)`` allowed when ``|i - j| <= window_blocks``
    (causal: ``0 <= i - j <= window_blocks``), ``ceil(seq_len / block_size)`` blocks per side, ``num_heads``
    copies. Raises ``TypeError`` / ``ValueError`` as every constructor (see :mod:`attnkit.layouts`)."""
    return BlockLayout._from_core(_core.Layout.sliding_window(
        as_int(seq_len, "seq_len"), as_int(block_size, "block_size"), as_int(window_blocks, "window_blocks"),
        as_bool(causal, "causal"), as_int(num_heads, "num_heads")))


def longformer(seq_len, block_size, window_blocks, *, global_tokens=(), dilation=1, causal=False,
               num_heads=1) -> BlockLayout:
    """Longformer: a dilated band plus global blocks.

    Block ``(i, j)`` is allowed when ``j = i + dilation * t`` for an integer ``|t| <= window_blocks``
    (causal: ``-window_blocks <= t <= 0``), or when ``i`` or ``j`` is a global block, i.e. the block
    ``g // block_size`` of a token ``g`` in ``global_tokens`` (causal: only ``j <= i``). Global tokens
    make their whole block global (block granularity). ``ceil(seq_len / block_size)`` blocks per side,
    ``num_heads`` copies. Raises ``TypeError`` / ``ValueError`` as every constructor (see :mod:`attnkit.layouts`)."""
    try:
        tokens = list(global_tokens)
    except TypeError:
        raise TypeError(f"global_tokens must be a sequence of token positions (ints), got "
                        f"{type(global_tokens).__name__}") from None
    g = [as_int(t, f"global_tokens[{i}]") for i, t in enumerate(tokens)]
    return BlockLayout._from_core(_core.Layout.longformer(
        as_int(seq_len, "seq_len"), as_int(block_size, "block_size"), as_int(window_blocks, "window_blocks"), g,
        as_int(dilation, "dilation"), as_bool(causal, "causal"), as_int(num_heads, "num_heads")))


def bigbird(seq_len, block_size, *, seed, window_blocks=1, global_blocks=1, random_blocks=2, causal=False,
            num_heads=1) -> BlockLayout:
    """BigBird: band + global + random blocks.

    Block ``(i, j)`` is allowed when ``|i - j| <= window_blocks`` (causal: ``0 <= i - j <= window_blocks``),
    or ``i < global_blocks`` (global rows see every block; causal: ``j <= i``), or ``j < global_blocks``
    (causal: ``j <= i``), or ``j`` is one of the ``random_blocks`` random blocks of row ``i``: for each
    non-global row, distinct key blocks drawn uniformly from those not already allowed in that row
    (causal: among ``j <= i``), fewer when fewer remain. Draws come from the counter-based generator keyed
    by ``seed`` (Philox stream ``kStreamBigBird + h`` for head ``h``, word ``(i << 32) + t`` for draw ``t``):
    the same seed gives the same layout on every platform; with ``num_heads > 1`` each head has its own
    random blocks. ``seed`` is required. ``ceil(seq_len / block_size)`` blocks per side. Raises ``TypeError`` /
    ``ValueError`` as every constructor (see :mod:`attnkit.layouts`)."""
    return BlockLayout._from_core(_core.Layout.bigbird(
        as_int(seq_len, "seq_len"), as_int(block_size, "block_size"), as_int(window_blocks, "window_blocks"),
        as_int(global_blocks, "global_blocks"), as_int(random_blocks, "random_blocks"), as_seed(seed),
        as_bool(causal, "causal"), as_int(num_heads, "num_heads")))


def fixed(seq_len, block_size, *, local_blocks=4, global_blocks=1, causal=True, num_heads=1) -> BlockLayout:
    """Sparse Transformer "fixed" pattern (Child et al., 2019).

    Blocks form segments of ``local_blocks``; block ``(i, j)`` is allowed when ``i // local_blocks ==
    j // local_blocks`` (same segment) or when ``j % local_blocks >= local_blocks - global_blocks`` (``j`` is
    one of the last ``global_blocks`` "summary" blocks of its segment); causal (the default, as in the
    paper) keeps only ``j <= i``. ``ceil(seq_len / block_size)`` blocks per side, ``num_heads`` copies. Raises
    ``TypeError`` / ``ValueError`` as every constructor (see :mod:`attnkit.layouts`)."""
    return BlockLayout._from_core(_core.Layout.fixed(
        as_int(seq_len, "seq_len"), as_int(block_size, "block_size"), as_int(local_blocks, "local_blocks"),
        as_int(global_blocks, "global_blocks"), as_bool(causal, "causal"), as_int(num_heads, "num_heads")))


def union(*layouts) -> BlockLayout:
    """Union of layouts with one block size and block counts; one-head layouts broadcast to the others'
    head count. ``union(a, b) == a | b``. ``ValueError`` for no layout or layouts of different geometry
    (block size, block counts, head counts other than 1 and one other), ``TypeError`` for a non-layout."""
    if not layouts:
        raise ValueError("union needs at least one layout")
    for i, l in enumerate(layouts):
        if not isinstance(l, BlockLayout):
            raise TypeError(f"layouts[{i}] must be an attnkit.BlockLayout, got {type(l).__name__}")
    return BlockLayout._from_core(_core.Layout.unite([l._impl for l in layouts]))
