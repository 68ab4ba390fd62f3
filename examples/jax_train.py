"""Training with attnkit in JAX: a one-layer attention model learns to copy a sequence backwards.

The attention layer is attnkit.jax.attention (attnkit's C++ kernel as an XLA custom call); jax.grad runs
attnkit's FlashAttention-2-style backward kernel through the same FFI; the training step is jax.jit-ted;
Adam is written out in a few lines (no optax). Run it: ``python examples/jax_train.py``.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

import attnkit.jax as akj

VOCAB, SEQ, DIM, HEADS = 16, 12, 64, 4


def init(rng):
    """Parameters (NumPy's generator: nothing to compile), scaled by 1/sqrt(fan-in)."""
    shapes = {"tok": (VOCAB, DIM), "pos": (SEQ, DIM), "wq": (DIM, DIM), "wk": (DIM, DIM), "wv": (DIM, DIM),
              "wo": (DIM, VOCAB)}
    return {name: jnp.asarray(rng.standard_normal(s, np.float32) / np.sqrt(s[0])) for name, s in shapes.items()}


def model(params, tokens):
    """tokens [B, SEQ] -> logits [B, SEQ, VOCAB]: embeddings, one multi-head attention layer, a projection."""
    h = params["tok"][tokens] + params["pos"]                                    # [B, S, DIM]
    heads = lambda w: (h @ w).reshape(*h.shape[:2], HEADS, DIM // HEADS).swapaxes(1, 2)  # noqa: E731
    out = akj.attention(heads(params["wq"]), heads(params["wk"]), heads(params["wv"]))  # [B, H, S, DIM / H]
    return out.swapaxes(1, 2).reshape(h.shape) @ params["wo"]


def loss_fn(params, tokens):
    targets = tokens[:, ::-1]  # the task: the input sequence, backwards
    logp = jax.nn.log_softmax(model(params, tokens))
    return -jnp.take_along_axis(logp, targets[..., None], axis=-1).mean()


def adam(lr=3e-3, b1=0.9, b2=0.99, eps=1e-8):
    def init_state(params):
        zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
        return (zeros, zeros, 0)

    def update(params, grads, state):
        m, v, t = state
        t += 1
        m = jax.tree_util.tree_map(lambda m, g: b1 * m + (1 - b1) * g, m, grads)
        v = jax.tree_util.tree_map(lambda v, g: b2 * v + (1 - b2) * g * g, v, grads)
        step = lambda p, m, v: p - lr * (m / (1 - b1**t)) / (jnp.sqrt(v / (1 - b2**t)) + eps)  # noqa: E731
        return jax.tree_util.tree_map(step, params, m, v), (m, v, t)

    return init_state, update


def train(steps=300, batch=64, seed=0, log=True):
    """Trains for `steps` steps and returns the losses."""
    rng = np.random.default_rng(seed)
    params = init(rng)
    init_state, update = adam()
    state = init_state(params)

    @jax.jit
    def step(params, state, tokens):
        loss, grads = jax.value_and_grad(loss_fn)(params, tokens)
        params, state = update(params, grads, state)
        return params, state, loss

    losses = []
    start = time.perf_counter()
    for i in range(steps):
        tokens = rng.integers(0, VOCAB, (batch, SEQ), dtype=np.int32)
        params, state, loss = step(params, state, tokens)
        losses.append(float(loss))
        if log and (i % 50 == 0 or i == steps - 1):
            print(f"step {i:4d}  loss {losses[-1]:.4f}  ({time.perf_counter() - start:.1f} s)")
    return losses


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    print(f"attnkit.jax.attention in a one-layer model, {HEADS} heads: copy {SEQ} tokens backwards")
    train(a.steps, seed=a.seed)
