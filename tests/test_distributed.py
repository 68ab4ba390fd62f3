"""attnkit.distributed under a real MPI launcher (mpiexec -n 2, 3, 4 on this machine, oversubscribed),
plus in-process checks of the block geometry and of single-rank communicators.

MPI comes from the test extra (mpi4py and the mpich wheel); the launcher tests skip only when no MPI can
exist here (mpi4py or mpiexec missing)."""

import itertools
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import attnkit

MPI = pytest.importorskip("mpi4py.MPI", reason="mpi4py is not installed (pip install mpi4py mpich)")

from attnkit import distributed as dist  # noqa: E402
from attnkit.distributed import _block_plan  # noqa: E402

WORKER = Path(__file__).with_name("mpi_worker.py")


def _mpiexec():
    here = Path(sys.executable).parent
    for name in ("mpiexec", "mpirun"):
        if (here / name).exists():
            return str(here / name)
    return shutil.which("mpiexec") or shutil.which("mpirun")


def _launch(n, timeout=300):
    exe = _mpiexec()
    if exe is None:
        pytest.skip("no mpiexec on PATH (pip install mpich, or install an MPI)")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [exe, "-n", str(n), sys.executable, str(WORKER)]
    # its own process group, so that a hang is ended with every rank it started
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                            text=True, env=env, start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        pytest.fail(f"{' '.join(cmd)} did not finish in {timeout}s (a hang?)\n{stdout}\n{stderr}")
    res = subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)
    report = res.stdout + res.stderr
    assert res.returncode == 0 and "ALL OK" in res.stdout, f"{' '.join(cmd)} -> {res.returncode}\n{report}"
    return res.stdout


_digests = {}


@pytest.mark.parametrize("n", [2, 3, 4])
def test_mpirun_matches_single_process(n):
    out = _launch(n)
    _digests[n] = [line for line in out.splitlines() if line.startswith("digest")]


@pytest.mark.parametrize("n", [2, 4])
def test_mpirun_same_bits_run_to_run(n):
    first = _digests.get(n) or [line for line in _launch(n).splitlines() if line.startswith("digest")]
    again = [line for line in _launch(n).splitlines() if line.startswith("digest")]
    assert first == again and first


def _allowed(qn, kn, d, left, right):
    i = np.arange(qn)[:, None]
    j = np.arange(kn)[None, :]
    return (j >= i + d - left) & (j <= i + d + right)


@pytest.mark.parametrize("qn,kn", [(1, 1), (3, 7), (7, 3), (5, 5)])
def test_block_plan_matches_the_global_mask(qn, kn):
    """The sliced pieces plus attention's bottom-right window select exactly the pairs of the global
    constraint, for every diagonal offset and window."""
    inf = float("inf")
    for d, left, right in itertools.product(range(-10, 11), (0, 1, 3, inf), (0, 2, inf)):
        want = _allowed(qn, kn, d, left, right)
        plan = _block_plan(qn, kn, d, left, right)
        got = np.zeros_like(want)
        if plan is not None:
            i0, i1, j0, j1, win = plan
            a = (j1 - j0) - (i1 - i0)
            wl, wr = (inf, inf) if win is None else (inf if win[0] is None else win[0], inf if win[1] is None else win[1])
            assert wl >= 0 and wr >= 0
            got[i0:i1, j0:j1] = _allowed(i1 - i0, j1 - j0, a, wl, wr)
        assert np.array_equal(got, want), (qn, kn, d, left, right, plan)


def test_single_rank_communicator():
    rng = np.random.default_rng(0)
    q, k, v = (rng.standard_normal((1, 2, 19, 8), dtype=np.float32) for _ in range(3))
    out = dist.ring_attention(q, k, v, MPI.COMM_SELF, causal=True, key_lengths=11)
    np.testing.assert_array_equal(out, attnkit.attention(q, k, v, causal=True, key_lengths=11))
    out = dist.linear_attention(q, k, v, MPI.COMM_SELF)
    np.testing.assert_array_equal(out, attnkit.linear_attention(q, k, v))
    assert np.array_equal(dist.unshard(dist.shard(q, MPI.COMM_SELF, layout="zigzag"), MPI.COMM_SELF,
                                       layout="zigzag"), q)


def test_bad_communicator():
    q = np.zeros((1, 1, 4, 8), np.float32)
    with pytest.raises(TypeError, match="comm must be an mpi4py communicator"):
        dist.ring_attention(q, q, q, object())
    with pytest.raises(ValueError, match="comm is MPI.COMM_NULL"):
        dist.performer_attention(q, q, q, attnkit.random_features(4, 8), MPI.COMM_NULL)
    with pytest.raises(TypeError, match="rank 0: q must be a NumPy or CuPy array"):
        dist.ring_attention([1.0], q, q, MPI.COMM_SELF)
    with pytest.raises(ValueError, match="rank 0: layout must be"):
        dist.shard(q, MPI.COMM_SELF, layout="rows")


def test_device_arrays_without_nccl_or_cuda_aware_mpi(monkeypatch):
    """CuPy buffers need NCCL or a declared CUDA-aware MPI; the choice is collective, and without either
    the error says what to install."""
    from attnkit import _mpi

    monkeypatch.setattr(_mpi, "_have_nccl", lambda: False)
    monkeypatch.delenv("ATTNKIT_CUDA_AWARE_MPI", raising=False)
    with pytest.raises(TypeError, match="NCCL .* or a CUDA-aware MPI"):
        _mpi.Transport(MPI.COMM_SELF, True)
    monkeypatch.setenv("ATTNKIT_CUDA_AWARE_MPI", "1")
    assert _mpi.Transport(MPI.COMM_SELF, True).nccl is None   # MPI takes the device buffers
