"""The command line runs and reports what it should (tiny sizes; timings are not asserted)."""

from __future__ import annotations

import json

from attnkit import cli


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
    payload = json.loads(path.read_text())
    assert set(payload["sections"]) == set(cli.SECTIONS)
    assert payload["sections"]["exact"][0]["attnkit_s"] > 0
    env = payload["env"]  # every results file says where it ran and the machine's matmul yardstick
    assert env["cpu_model"] and env["cpu_isa"] in ("generic", "avx2", "avx512", "avx512bf16")
    assert env["matmul_2048_gflops"]["numpy"] > 0
