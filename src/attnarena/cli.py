"""The ``attnarena`` command: parses arguments, calls the library, prints plain data."""
from __future__ import annotations

import argparse
import sys

from attnarena.registry import list_mixers, mixer_info


def _ints(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}")
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def cmd_list(args) -> int:
    rows = [(i.name, i.family, i.complexity, ",".join(sorted(i.patterns)),
             ",".join(sorted(i.forms)), i.paper)
            for i in map(mixer_info, list_mixers(args.pattern))]
    header = ("name", "family", "complexity", "patterns", "forms", "paper")
    widths = [max(len(str(r[c])) for r in rows + [header]) for c in range(len(header) - 1)]
    for row in [header] + rows:
        print("  ".join(str(v).ljust(w) for v, w in zip(row, widths)) + "  " + row[-1])
    return 0


def cmd_speed(args) -> int:
    from attnarena.arena.speed import SpeedConfig, parse_mixers, run_speed
    from attnarena.arena.speed_report import write_speed

    cfg = SpeedConfig(mixers=parse_mixers(args.mixers or list_mixers()), lengths=args.lengths,
                      pass_=args.pass_, batch=args.batch, heads=args.heads,
                      head_dim=args.head_dim, dtype=args.dtype, device=args.device,
                      causal=not args.noncausal, repeats=args.repeats,
                      time_budget=args.time_budget)
    result = run_speed(cfg, progress=not args.quiet)
    paths = write_speed(result, args.out, stem=f"speed-{args.pass_}")
    print(f"matmul throughput ({args.dtype}): {result['meta']['matmul_gflops']:.1f} GFLOP/s")
    print(f"{'mixer':<28} {'length':>7} {'status':<10} {'median ms':>10} {'tokens/s':>12} "
          f"{'peak MiB':>9}")
    for r in result["rows"]:
        def fmt(key, spec):
            return format(r[key], spec) if r.get(key) is not None else "-"
        print(f"{r['mixer']:<28} {r['length']:>7} {r['status'][:10]:<10} "
              f"{fmt('median_ms', '10.3f')} {fmt('tokens_per_s', '12.0f')} "
              f"{fmt('peak_mem_mb', '9.1f')}")
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


def cmd_run(args) -> int:
    from attnarena.arena.quick import run_quick

    mixers = args.mixers.split(",") if args.mixers else None
    for name in mixers or []:
        mixer_info(name)
    paths = run_quick(args.out, mixers=mixers, steps=args.steps, device=args.device,
                      progress=not args.quiet)
    print(paths["leaderboard"].read_text())
    print("wrote " + ", ".join(str(p) for group in paths.values()
                               for p in (group.values() if isinstance(group, dict) else [group])))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="attnarena",
                                     description="The efficient-Transformer arena.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("list", help="mechanisms and what each supports")
    p.add_argument("pattern", nargs="?", default=None, help="glob on names, e.g. '*linear*'")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("speed", help="time and peak memory against sequence length")
    p.add_argument("--mixers", default=None,
                   help="comma-separated names, options as name:key=value (default: all)")
    p.add_argument("--lengths", type=_ints, default=[1024, 4096, 16384])
    p.add_argument("--pass", dest="pass_", choices=["fwd", "fwdbwd", "decode"], default="fwd")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--dtype", default="float32",
                   choices=["float32", "float64", "bfloat16", "float16"])
    p.add_argument("--device", default="cpu")
    p.add_argument("--noncausal", action="store_true", help="noncausal self attention")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--time-budget", type=float, default=60.0,
                   help="seconds for one call before the case counts as a timeout")
    p.add_argument("--out", default="results")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_speed)

    p = sub.add_parser("run", help="the main job: speed sweep + short training per mechanism")
    p.add_argument("--mixers", default=None, help="comma-separated names (default: all)")
    p.add_argument("--steps", type=int, default=600, help="copy-task training steps")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default="results")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_run)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, TypeError) as error:
        print(f"attnarena {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
