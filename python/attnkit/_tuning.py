"""Backend tuning options (internal): switches that change speed, never a result beyond rounding, set
process-wide in the core (``attnkit/runtime.h``: ``set_tuning``). Tests and benchmarks use them to run
every code path; users have no reason to.

    linear_chunk   linear attention / Performer chunk length: 0 = tuned default, else 1..1024
    dla_chunk      DLA: 0 = automatic, L >= 1 = chunks of L tokens (1: token by token)
    cuda_decode         CUDA decode kernel: 0 = automatic (v3, else v2, where enabled), 1 = the v1 kernel,
                        2 = v2 (never v3)
    cuda_decode_keys    CUDA decode v2: keys per lane group and step, 0 = default, else 1, 2 or 4
    cuda_decode_blocks  CUDA decode v2: target grid size (sets the split count), 0 = default, else 64..65536
    cuda_decode_stages  CUDA decode v3: cp.async stages per warp, 0 = default, else 2, 3 or 4
    cuda_decode3_blocks CUDA decode v3: target grid size (sets the split count), 0 = default, else 64..65536
    cuda_decode3_pdl    CUDA decode v3: its split merge by programmatic dependent launch (sm_90+), 0 = default
                        (on), 1 = on, 2 = off
    cuda_scratch        CUDA kernels' scratch: from attnkit's pool per device (0) or the device's default pool (1)
    dla_split      DLA prefill on CUDA (v4, cuda/dla_prefill_v4.cuh): blocks per (batch, head) of its state
                   pass, each owning a slice of the output columns; 0 = automatic (about one block per SM),
                   else 1..8 (the same bits for every split; v5's fused pass, cuda/dla_prefill_v5.cuh, takes
                   them for its column slices); -1 = the first CUDA prefill kernel (cuda/dla_prefill.cu),
                   -2 = v4's passes C1 + C2 instead of v5's fused pass (both for side-by-side measurements)
    dla_decode     DLA decode step on CUDA: 0 = automatic (the one-kernel step of cuda/dla_decode_v3.cu where
                   enabled, else the two-kernel step of cuda/dla_decode_v2.cu), 2 = the two-kernel step (for
                   side-by-side measurements; 1, the first kernel, is gone since session 27)
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
