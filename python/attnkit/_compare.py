"""``attnkit compare``: every mechanism on one workload, against exact attention. Relative error, time,
peak extra memory and, on the MiniLM workload, the sentence-embedding cosine to the exact model; a
table, JSON and an optional matplotlib figure. Not part of the stable API."""

from __future__ import annotations

import gc
import math
import os
import pathlib
import tracemalloc

import numpy as np

from . import _bench, _core, layouts
from ._array import BFLOAT16
from ._exact import attention, attention_weights
from ._mha import _run_mechanism

MECHANISM_ORDER = ["exact", "block_sparse", "lsh", "linear", "performer", "linformer", "dla"]


# ------------------------------------------------------------------------------------------ configurations
class Config:
    """One mechanism setting: ``options(S)`` gives the mechanism's options for sequence length S."""

    def __init__(self, mechanism, knob, value, options, default=False, causal_only=False):
        self.mechanism, self.knob, self.value, self.default = mechanism, knob, value, default
        self.options, self.causal_only = options, causal_only

    @property
    def label(self):
        return self.mechanism if self.knob is None else f"{self.mechanism} {self.knob}={self.value}"


def block_size_for(S):
    """64 for long sequences, smaller so that short ones (MiniLM's) still have ~16 blocks."""
    return int(min(64, max(4, 2 ** round(math.log2(max(S, 1) / 16)))))


def buckets_for(S):
    """An even bucket count giving a mean bucket of about 64 keys (Reformer's choice), at least 2."""
    return int(max(2, 2 * round(S / 128)))


def configs(quick=False):
    """Defaults and a sweep of each mechanism's main knob."""
    out = [Config("exact", None, None, lambda S: {}, default=True)]
    for w in ([1, 4] if quick else [1, 2, 4, 8]):
        out.append(Config("block_sparse", "window_blocks", w, lambda S, w=w: {"layout": layouts.bigbird(
            S, block_size_for(S), seed=0, window_blocks=w, global_blocks=1, random_blocks=2)}, default=w == 1))
    for r in ([1, 4] if quick else [1, 2, 4, 8]):
        out.append(Config("lsh", "rounds", r, lambda S, r=r: {"num_buckets": buckets_for(S), "num_hashes": r,
                                                             "seed": 0}, default=r == 2 or (quick and r == 1)))
    for fm in ("elu1", "relu"):
        out.append(Config("linear", "feature_map", fm, lambda S, fm=fm: {"feature_map": fm}, default=fm == "elu1"))
    for m in ([64, 256] if quick else [16, 64, 256, 1024]):
        out.append(Config("performer", "m", m, lambda S, m=m: {"num_features": m, "seed": 0}, default=m == 256))
    for P in ([64, 256] if quick else [16, 64, 128, 256]):
        out.append(Config("linformer", "P", P, lambda S, P=P: {"proj_len": P, "seed": 0}, default=P == 256))
    for C in ([4, 16] if quick else [1, 4, 16, 64]):
        out.append(Config("dla", "capacity", C, lambda S, C=C: {"capacity": C}, default=C == 16, causal_only=True))
    return out


# ------------------------------------------------------------------------------------------------ measuring
def _peak_reset():
    """Returns freed heap memory to the system (glibc malloc_trim, so that reused pages count again) and
    resets the peak resident set size (Linux); False where that is not possible."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _status_kib(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def peak_extra_bytes(fn):
    """Peak memory fn() adds on top of what the process holds when it starts, output included: the peak
    resident set (VmHWM, reset first) on Linux, which sees the C++ scratch memory too; elsewhere
    tracemalloc (NumPy allocations only)."""
    gc.collect()
    if _peak_reset():
        base = _status_kib("VmRSS")
        out = fn()
        peak = _status_kib("VmHWM")
        del out
        return max(0, peak - base) * 1024
    tracemalloc.start()
    out = fn()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    del out
    return peak


def rel_error(out, ref):
    out, ref = np.asarray(out, np.float64), np.asarray(ref, np.float64)
    return float(np.linalg.norm(out - ref) / max(np.linalg.norm(ref), 1e-300))


def _runner(cfg, q, k, v, causal, key_lengths):
    opts = cfg.options(q.shape[2])
    causal = causal or cfg.causal_only
    return lambda: _run_mechanism(cfg.mechanism, q, k, v, causal, key_lengths, opts)


def _not_applicable(cfg, causal, key_lengths=None):
    if causal and cfg.mechanism == "linformer":
        return "not defined for causal attention"
    if key_lengths is not None and cfg.mechanism in ("lsh", "dla"):
        return "no key_lengths support"
    return None


def measure(q, k, v, *, causal=False, key_lengths=None, reps=3, quick=False, progress=None):
    """Rows of {mechanism, knob, value, default, rel_error, seconds, speedup, peak_mib, reference}."""
    exact_out = {c: attention(q, k, v, causal=c, key_lengths=key_lengths) for c in {causal, True}}
    rows = []
    cfgs = configs(quick)
    exact_fn = lambda: attention(q, k, v, causal=causal, key_lengths=key_lengths)  # noqa: E731
    for cfg in cfgs:
        c = causal or cfg.causal_only
        why = _not_applicable(cfg, causal, key_lengths)
        if why:
            rows.append({"mechanism": cfg.mechanism, "knob": cfg.knob, "value": cfg.value, "default": cfg.default,
                         "skipped": why})
            continue
        fn = _runner(cfg, q, k, v, causal, key_lengths)
        out = fn()
        times = _bench.timeit_many({"m": fn, "exact": exact_fn}, reps=reps)
        rows.append({"mechanism": cfg.mechanism, "knob": cfg.knob, "value": cfg.value, "default": cfg.default,
                     "reference": "causal exact" if c else "exact", "rel_error": rel_error(out, exact_out[c]),
                     "seconds": times["m"], "speedup": times["exact"] / times["m"],
                     "peak_mib": peak_extra_bytes(fn) / 2**20})
        if progress:
            progress()
    return rows


def scaling(B, H, D, sizes, *, causal=False, reps=3, progress=None):
    """Time of each mechanism's default setting vs sequence length on random data of the workload's B, H, D."""
    rng = np.random.default_rng(0)
    rows = []
    for S in sizes:
        q, k, v = (rng.standard_normal((B, H, S, D)).astype(np.float32) for _ in range(3))
        for cfg in configs():
            if not cfg.default or _not_applicable(cfg, causal):
                continue
            fn = _runner(cfg, q, k, v, causal, None)
            rows.append({"mechanism": cfg.mechanism, "S": S, "seconds": _bench.timeit(fn, reps=reps)})
            if progress:
                progress()
    return rows


def attention_maps(q, k, *, causal=False, n=96):
    """{label: [n, n] map} for batch 0, head 0, the first n tokens: the exact probabilities from
    attention_weights, and for each default approximation its effective weights, read off as its output
    for one-hot values (v = identity), which every mechanism here is linear in."""
    n = min(n, q.shape[2])
    q1, k1 = np.ascontiguousarray(q[:1, :1, :n]), np.ascontiguousarray(k[:1, :1, :n])
    eye = np.eye(n, dtype=q.dtype)[None, None]
    maps = {"exact": attention_weights(q1, k1, causal=causal)[0, 0]}
    for cfg in configs():
        if cfg.default and cfg.mechanism != "exact" and not _not_applicable(cfg, causal):
            maps[cfg.label] = np.asarray(_runner(cfg, q1, k1, eye, causal, None)())[0, 0]
    return maps


# ------------------------------------------------------------------------------------------------- MiniLM
def minilm_workload(sentences=None):
    """(model, sentences, q, k, v): MiniLM's layer-0 attention inputs for its longest sentence (one
    sequence, no padding, so every mechanism applies)."""
    from .models.minilm import MiniLM

    model = MiniLM()
    if sentences is None:
        sentences = default_sentences()
    longest = max(sentences, key=lambda s: len(model.tokenize([s])[0][0]))
    q, k, v, _ = model.attention_inputs([longest])
    return model, sentences, q, k, v


def default_sentences():
    here = pathlib.Path(__file__).resolve()
    for d in (here.parents[2] / "tests" / "data", pathlib.Path.cwd() / "tests" / "data"):
        f = d / "minilm_embeddings.npz"
        if f.exists():
            return [str(s) for s in np.load(f)["sentences"]]
    return ["Attention is all you need.", "The quick brown fox jumps over the lazy dog. " * 20,
            "Sparse, low-rank and kernelized attention trade fidelity for speed."]


def embedding_cosines(model, sentences, rows, *, quick=False, progress=None):
    """Adds each row's min and mean embedding cosine to the exact model over the sentences (one sentence
    per call, so every mechanism applies and each gets options for its own length)."""
    lengths = [model.tokenize([s])[1][0] for s in sentences]
    exact = model.encode(sentences)
    by_label = {c.label: c for c in configs(quick)}
    for row in rows:
        if "skipped" in row:
            continue
        cfg = by_label[Config(row["mechanism"], row["knob"], row["value"], None).label]
        if cfg.mechanism in ("block_sparse", "lsh", "dla"):
            # options that depend on the length (layouts, buckets) or no key_lengths support: one at a time
            emb = np.concatenate([model.encode([s], mechanism=cfg.mechanism, causal=cfg.causal_only,
                                               **cfg.options(int(n))) for s, n in zip(sentences, lengths)])
        else:
            emb = model.encode(sentences, mechanism=cfg.mechanism, causal=cfg.causal_only, **cfg.options(0))
        cos = (emb * exact).sum(-1)
        row["cosine_min"], row["cosine_mean"] = float(cos.min()), float(cos.mean())
        if progress:
            progress()


# ------------------------------------------------------------------------------------------------ output
def format_table(rows, with_cosine):
    head = f"{'mechanism':13s} {'knob':>16s} {'rel.err':>9s} {'time ms':>9s} {'x exact':>8s} {'peak MiB':>9s}"
    if with_cosine:
        head += f" {'cos min':>9s}"
    lines = [head, "-" * len(head)]
    for r in rows:
        knob = "" if r["knob"] is None else f"{r['knob']}={r['value']}"
        mark = "*" if r["default"] else " "
        if "skipped" in r:
            lines.append(f"{r['mechanism']:13s} {knob:>16s}{mark} skipped: {r['skipped']}")
            continue
        line = (f"{r['mechanism']:13s} {knob:>16s}{mark}{r['rel_error']:9.2e} {1e3 * r['seconds']:9.3f} "
                f"{r['speedup']:8.2f} {r['peak_mib']:9.2f}")
        if with_cosine:
            line += f" {r['cosine_min']:9.6f}"
        lines.append(line)
    lines.append("* default setting; rel.err = ||out - exact|| / ||exact|| (Frobenius; dla vs causal exact)")
    return "\n".join(lines)


def plot(path, rows, scale_rows, maps, title):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    swept = [m for m in MECHANISM_ORDER[1:] if any(r["mechanism"] == m and "rel_error" in r for r in rows)]
    ncols = max(len(swept), len(maps))
    fig = plt.figure(figsize=(2.6 * ncols, 8.4))
    gs = fig.add_gridspec(3, ncols, height_ratios=[1, 1.1, 1], hspace=0.55, wspace=0.45)
    for i, m in enumerate(swept):
        ax = fig.add_subplot(gs[0, i])
        rs = [r for r in rows if r["mechanism"] == m and "rel_error" in r]
        xs = [str(r["value"]) for r in rs]
        ax.plot(xs, [r["rel_error"] for r in rs], "o-")
        ax.set_yscale("log")
        ax.set_title(m, fontsize=9)
        ax.set_xlabel(rs[0]["knob"], fontsize=8)
        ax.tick_params(which="both", labelsize=6)
        if i == 0:
            ax.set_ylabel("relative error vs exact", fontsize=8)
    ax = fig.add_subplot(gs[1, :])
    for m in MECHANISM_ORDER:
        pts = [(r["S"], r["seconds"]) for r in scale_rows if r["mechanism"] == m]
        if pts:
            ax.plot(*zip(*pts), "o-", label=m)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("sequence length S (random data, default settings)", fontsize=8)
    ax.set_ylabel("seconds", fontsize=8)
    ax.tick_params(which="both", labelsize=7)
    ax.legend(fontsize=7, ncol=4)
    for i, (label, w) in enumerate(maps.items()):
        ax = fig.add_subplot(gs[2, i])
        ax.imshow(np.asarray(w, np.float32), cmap="viridis", aspect="auto")
        ax.set_title(label, fontsize=7)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(title, fontsize=10)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def load_qkv(paths):
    """q, k, v from one .npz (arrays q, k, v) or three .npy files; float arrays of rank 2-4."""
    if len(paths) == 1:
        z = np.load(paths[0])
        if not hasattr(z, "files"):  # one .npy array, not an .npz archive
            raise ValueError(f"{paths[0]} holds one array; give one .npz with arrays q, k, v or three .npy files")
        with z:
            missing = [n for n in "qkv" if n not in z]
            if missing:
                raise ValueError(f"{paths[0]} must hold arrays named q, k and v; missing {', '.join(missing)}")
            arrs = [z["q"], z["k"], z["v"]]
    elif len(paths) == 3:
        arrs = [np.load(p) for p in paths]
    else:
        raise ValueError("inputs: one .npz file with q, k, v or three .npy files q k v")
    for name, a in zip("qkv", arrs):
        if a.ndim not in (2, 3, 4) or (a.dtype.kind != "f" and a.dtype != BFLOAT16):
            raise ValueError(f"{name} must be a float array of rank 2, 3 or 4, got {a.dtype} of shape {a.shape}")
    return [a.reshape((1,) * (4 - a.ndim) + a.shape) if a.ndim in (2, 3) else a for a in arrs]


def environment():
    env = _bench.environment(_core.get_num_threads())
    env["load"] = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    return env
