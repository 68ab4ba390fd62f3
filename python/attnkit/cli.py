"""The ``attnkit`` command line: ``attnkit info``, ``attnkit bench``, and the C/C++ SDK locations
(``attnkit --cmake-dir``, ``--include-dir``, ``--libs``, ...; also as ``python -m attnkit``)."""

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


def _cmd_info(args) -> int:
    facts = info()
    if args.json:
        print(json.dumps(facts, indent=2))
        return 0
    print(f"attnkit {facts['version']}")
    print(f"  CPU backend : built, micro-kernels {facts['cpu_isa']}, {facts['threads']} thread(s) "
          "(OMP_NUM_THREADS or attnkit.set_num_threads)")
    if facts["cuda_built"]:
        print(f"  CUDA backend: built, {facts['cuda_devices']} device(s) visible")
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
    print(f"attnkit {_core.version()} on {_core.get_num_threads()} thread(s), CPU kernels {_core.cpu_isa()}")
    results = {}
    for name in args.only or list(SECTIONS):
        results[name] = SECTIONS[name](args)
    if args.json:
        payload = {"env": _bench.environment(_core.get_num_threads()), "sections": results}
        print(f"wrote {_bench.write_json('.', args.json, payload)}")
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
    p.add_argument("--sizes", type=int, nargs="+", help="sequence lengths (each section has its defaults)")
    p.add_argument("--reps", type=int, default=3, help="timed repetitions per cell (median)")
    p.add_argument("--no-torch", action="store_true", help="skip the PyTorch column")
    p.add_argument("--no-numpy", action="store_true", help="skip the NumPy columns")
    p.add_argument("--json", metavar="FILE", help="also write the rows as JSON")
    p.set_defaults(func=_cmd_bench)
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
