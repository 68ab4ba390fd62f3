"""Imported first by the CPU benchmarks, before NumPy loads its OpenBLAS.

OpenBLAS's threads spin for 2^28 cycles (~0.1 s) after each BLAS call. A benchmark that calls BLAS (the matmul
ceiling of ``attnkit._bench.environment()``, a NumPy contender, a reduction ceiling) and then times attnkit at
several threads has one of its cores taken by that spinning thread: 2-thread decode read 11.8-13.0 GB/s after a
dot, 22.3-23.9 without one and 19.0-24.1 after one with this setting (session 26, Zen 3;
bench/results/history/decode_avx2_s26_threads_probe.json). With 2^4 cycles the threads sleep at once.
``environment()`` records the value that ran. A value set by the caller is kept.
"""

import os

os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")
