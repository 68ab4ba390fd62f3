"""Backend tuning options (internal): switches that change speed, never a result beyond rounding, set
process-wide in the core (``attnkit/runtime.h``: ``set_tuning``). Tests and benchmarks use them to run
every code path; users have no reason to.

    linear_chunk   linear attention / Performer chunk length: 0 = tuned default, else 1..1024
    dla_chunk      DLA: 0 = automatic, L >= 1 = chunks of L tokens (1: token by token)
    cuda_decode         CUDA decode kernel: 0 = automatic (v2 where enabled), 1 = the v1 kernel
    cuda_decode_keys    CUDA decode v2: keys per lane group and step, 0 = default, else 1, 2 or 4
    cuda_decode_blocks  CUDA decode v2: target grid size (sets the split count), 0 = default, else 64..65536
    cuda_scratch        CUDA kernels' scratch: from attnkit's pool per device (0) or the device's default pool (1)
    dla_split      DLA prefill on CUDA (the v2 / v3 kernels): blocks per (batch, head), each owning a slice
                   of the output columns; 0 = automatic (about one block per SM), else 1..8; -1 = the first
                   CUDA prefill kernel, -2 = the second (for side-by-side measurements)
"""

from __future__ import annotations

import contextlib

from . import _core
from ._array import as_int


@contextlib.contextmanager
def tuning(**options):
    """Sets the given options for the duration of the ``with`` block, then restores them."""
    old = {name: _core.get_tuning(name) for name in options}
    try:
        for name, value in options.items():
            _core.set_tuning(name, as_int(value, name))
        yield
    finally:
        for name, value in old.items():
            _core.set_tuning(name, value)
