"""The command line runs and reports what it should (tiny sizes; timings are not asserted)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import attnkit
from attnkit import _bench, cli

RESULTS = Path(__file__).resolve().parents[1] / "bench" / "results"


def test_info(capsys):
    assert cli.main(["info"]) == 0
    out = capsys.readouterr().out
    assert "attnkit" in out and "CPU backend" in out and "CUDA backend" in out
    assert cli.main(["info", "--json"]) == 0
    facts = json.loads(capsys.readouterr().out)
    assert {"version", "cpu_isa", "threads", "cuda_built", "cuda_devices", "cuda_kernels"} <= set(facts)
    if not facts["cuda_built"]:  # a build without CUDA runs nothing on the GPU
        assert facts["cuda_kernels"] == []


def test_bench_sections(capsys, tmp_path):
    path = tmp_path / "b.json"
    assert cli.main(["bench", "--sizes", "128", "--reps", "1", "--no-torch", "--json", str(path)]) == 0
    out = capsys.readouterr().out
    assert "exact attention" in out and "S=   128" in out and "lsh" in out
    first = out.splitlines()[0]  # the table says where it ran before anything else
    assert _bench.cpu_model() in first and f"CPU kernels {attnkit.info()['cpu_isa']}" in first
    payload = json.loads(path.read_text())
    assert set(payload["sections"]) == set(cli.SECTIONS)
    assert payload["sections"]["exact"][0]["attnkit_s"] > 0
    env = payload["env"]  # every results file says where it ran and the machine's matmul yardstick
    assert env["cpu_model"] and env["cpu_isa"] in ("generic", "avx2", "avx512", "avx512bf16")
    assert env["matmul_2048_gflops"]["numpy"] > 0


def test_environment_in_reports_another_package(tmp_path):
    """The record of the build-comparing scripts (bench_lowp_builds.py): environment() run by the package
    in a directory, in a fresh interpreter on `threads` threads."""
    env = _bench.environment_in(Path(attnkit.__file__).resolve().parents[1], 1)
    assert env["cpu_model"] == _bench.cpu_model() and env["cpu_isa"] == attnkit.info()["cpu_isa"]
    assert env["threads"] == 1 and env["clock"] == "process CPU time" and env["matmul_2048_gflops"]["numpy"] > 0
    path = _bench.write_json(tmp_path, "history/x.json", {"env": env})
    assert "loadavg_after" in json.loads(path.read_text())["env"]


BENCH = Path(__file__).resolve().parents[1] / "bench"


@pytest.mark.skipif(not (BENCH / "bench_decode.py").is_file(), reason="bench/ not beside the tests")
def test_bench_decode_ceiling_and_blas_spin():
    """bench_decode.py: the ceiling has the BLAS dot at one thread too (on as many BLAS threads as attnkit),
    and the BLAS threads do not spin after a call (OPENBLAS_THREAD_TIMEOUT set before NumPy loads): a spinning
    thread took a core from 2-thread decode timed just after the dot. A fresh process (NumPy not loaded yet)
    imports the script, runs a 2-thread dot and sleeps: no CPU time may pass while it sleeps."""
    import subprocess
    import sys

    code = (f"import sys, time; sys.path.insert(0, {str(BENCH)!r}); import bench_decode as b; import numpy as np\n"
            "fns, nbytes, nblas = b.ceiling_fns(0.01, 1)\n"
            "assert set(fns) == {'ceiling_add_reduce', 'ceiling_dot'} and nblas in (1, None), (fns, nblas)\n"
            "fns['ceiling_dot'](); n = b.blas_threads(2); a = np.ones((1 << 14, 1024), np.float32)\n"
            "spun = []\n"
            "for _ in range(3):\n"
            "    a @ np.ones(1024, np.float32); c0 = time.process_time(); time.sleep(0.05)\n"
            "    spun.append(time.process_time() - c0)\n"
            "print(n, min(spun))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out[0] in ("2", "None")
    if out[0] == "2":
        assert float(out[1]) < 0.005, f"BLAS threads spun {out[1]} s of CPU time in a 0.05 s sleep"


@pytest.mark.skipif(not RESULTS.is_dir(), reason="bench/results not beside the tests")
def test_results_files_follow_the_rule():
    """bench/results/README.md: one <bench>_<isa>.json per benchmark and ISA path at the top level (GPU files
    by device), per-session files in history/; a top-level file written since the rule says where it ran."""
    isa = "(generic|avx2|avx512|avx512bf16)"
    for p in RESULTS.glob("*.json"):
        if p.name.startswith("gpu_"):
            continue
        assert re.fullmatch(rf"[a-z]+(_[a-z]+)*_{isa}\.json", p.name), \
            f"{p.name}: per-session files go in bench/results/history/ (bench/results/README.md)"
        payload = json.loads(p.read_text())
        env = payload.get("env", payload.get("environment"))
        if isinstance(env, dict) and "loadavg_after" in env:
            assert env["cpu_model"] and env["cpu_isa"] and env["matmul_2048_gflops"], p.name
    assert all(re.fullmatch(r"[a-z0-9_]+\.json", p.name) for p in (RESULTS / "history").glob("*"))


def test_ml_dtypes_imported_before_the_core():
    """``import attnkit`` loads ml_dtypes before attnkit._core (the other order crashed ml_dtypes 0.6.0 under
    NumPy 2.5.2 on a CUDA build: python/attnkit/__init__.py)."""
    code = ("import sys\n"
            "order = []\n"
            "class Hook:\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        order.append(name)\n"
            "        return None\n"
            "sys.meta_path.insert(0, Hook())\n"
            "import attnkit\n"
            "print(order.index('ml_dtypes') < order.index('attnkit._core'))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)))
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "True", out.stdout
