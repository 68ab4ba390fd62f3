"""attnkit.jax.attention vs jax.nn.dot_product_attention (XLA's own CPU attention) inside jax.jit.

float32, B=1, H=8, D=64, causal and not; forward alone, and forward + backward (jax.grad of
sum(out * dout) with respect to q, k, v). Both are jit-compiled and timed side by side (round-robin) in
one process after a warm-up; medians. attnkit's forward runs its C++ kernel as an XLA custom call (FFI)
and its backward its FlashAttention-2-style backward kernel; XLA's materialises the [S, S] scores.
Writes bench/results/jax_<isa>.json.

    python bench/bench_jax.py [--sizes 512 1024 2048] [--reps 5]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import attnkit
import attnkit.jax as akj
from attnkit._bench import causal_pairs, environment, progress, result_name, timeit_many, write_json

RESULTS = Path(__file__).resolve().parent / "results"


def xla_attention(q, k, v, causal):
    t = lambda x: x.swapaxes(1, 2)  # noqa: E731  (jax.nn takes [B, S, H, D])
    return t(jax.nn.dot_product_attention(t(q), t(k), t(v), is_causal=causal))


def rows_for(sizes, reps, H=8, D=64):
    rows = []
    for S in sizes:
        for causal in (False, True):
            rng = np.random.default_rng(0)
            q, k, v, dout = (jnp.asarray(rng.standard_normal((1, H, S, D), np.float32)) for _ in range(4))
            impls = {"attnkit": lambda q, k, v: akj.attention(q, k, v, causal=causal),
                     "xla": lambda q, k, v: xla_attention(q, k, v, causal)}
            fns = {}
            for name, f in impls.items():
                fwd = jax.jit(f)
                bwd = jax.jit(jax.grad(lambda q, k, v, f=f: jnp.sum(f(q, k, v) * dout), argnums=(0, 1, 2)))
                fns[f"{name} fwd"] = lambda fwd=fwd: fwd(q, k, v).block_until_ready()
                fns[f"{name} fwd+bwd"] = lambda bwd=bwd: jax.block_until_ready(bwd(q, k, v))
            t = timeit_many(fns, reps=reps, warmup=2, min_time=0.5)
            pairs = causal_pairs(S, causal) * H
            row = {"S": S, "causal": causal, "H": H, "D": D, "seconds": t,
                   "fwd_gflops": {n: 4 * D * pairs / t[f"{n} fwd"] / 1e9 for n in impls},
                   "fwd_vs_xla": t["xla fwd"] / t["attnkit fwd"],
                   "fwd_bwd_vs_xla": t["xla fwd+bwd"] / t["attnkit fwd+bwd"]}
            progress(f"S={S} causal={causal}: fwd {t['attnkit fwd'] * 1e3:.1f} ms vs xla {t['xla fwd'] * 1e3:.1f} ms "
                     f"({row['fwd_vs_xla']:.2f}x); fwd+bwd {t['attnkit fwd+bwd'] * 1e3:.1f} ms vs xla "
                     f"{t['xla fwd+bwd'] * 1e3:.1f} ms ({row['fwd_bwd_vs_xla']:.2f}x)")
            rows.append(row)
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[512, 1024, 2048])
    ap.add_argument("--reps", type=int, default=5)
    a = ap.parse_args()
    rows = rows_for(a.sizes, a.reps)
    env = environment(attnkit.get_num_threads())
    env["jax"] = jax.__version__
    print(write_json(RESULTS, result_name("jax", env), {"environment": env, "rows": rows}))


if __name__ == "__main__":
    main()
