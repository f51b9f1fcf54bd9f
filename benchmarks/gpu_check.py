"""The arena on a CUDA GPU, checked in one script of at most 8 minutes:

1. parity: every mechanism, in every pattern and form, on the GPU against the same weights
   on the CPU: outputs and gradients (of the input and of every parameter) within the
   float32 tolerance, and a bfloat16 forward on the GPU within the contract's bfloat16
   tolerance of the float32 CPU output; decoding (``step``) too for every decoder;
2. speed: the sweep of ``attnarena speed`` on the GPU at 1K-32K tokens (forward, forward +
   backward, decoding), softmax being SDPA (its flash kernel on a GPU);
3. ListOps at LRA's paper preset (4 layers of width 512, batch 32, length up to 2,000) for
   1,000 steps, with its training throughput.

    python benchmarks/gpu_check.py                      # on a machine with a CUDA GPU
    python benchmarks/gpu_check.py --device cpu --quick # the plumbing, on a CPU (tested)

Each part has its share of ``--budget`` seconds; what does not fit is listed as skipped,
never dropped. Results: ``OUT/gpu_check.json`` and the tables printed (markdown).
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

import attnarena as aa

# float32: the largest error relative to the CPU result's scale, ||a - b||_max / max(1,
# ||b||_max), for outputs and for gradients (GPU kernels sum in other orders; TF32 is off)
FLOAT32_TOLERANCE = {"output": 1e-4, "gradient": 1e-3}
# bfloat16: the mixer contract's (tests/test_mixer_contract.py): mean |difference| below
# 0.05 * mean |float32 output| + 0.01
BFLOAT16_TOLERANCE = (0.05, 0.01)
SPEED_MIXERS = ["softmax", "local", "linear", "performer", "retention", "gla", "deltanet",
                "gated_deltanet", "mamba", "mamba2", "rglru", "hedgehog"]
LENGTHS = [1024, 2048, 4096, 8192, 16384, 32768]
PASSES = ["fwd", "fwdbwd", "decode"]
SHARES = {"parity": 0.3, "speed": 0.5, "listops": 0.2}  # of --budget


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda", help="the device to check (default cuda)")
    p.add_argument("--budget", type=float, default=480.0,
                   help="seconds for the whole check (default 480: 8 minutes)")
    p.add_argument("--parts", default="parity,speed,listops",
                   help="comma-separated: parity, speed, listops")
    p.add_argument("--mechanisms", default=None,
                   help="parity: only these mechanisms (comma-separated; default all)")
    p.add_argument("--speed-mixers", default=",".join(SPEED_MIXERS))
    p.add_argument("--lengths", default=",".join(map(str, LENGTHS)))
    p.add_argument("--passes", default=",".join(PASSES))
    p.add_argument("--listops-mixer", default="softmax")
    p.add_argument("--steps", type=int, default=1000, help="ListOps training steps")
    p.add_argument("--quick", action="store_true",
                   help="tiny sizes everywhere: checks the script itself, on any device")
    p.add_argument("--out", default="results/gpu_check")
    args = p.parse_args(argv)
    args.parts = _names(args.parts, ("parity", "speed", "listops"), "--parts")
    args.passes = _names(args.passes, PASSES, "--passes")
    try:
        args.lengths = [int(n) for n in args.lengths.split(",") if n.strip()]
    except ValueError:
        p.error(f"--lengths takes comma-separated integers, got {args.lengths!r}")
    if not args.lengths or min(args.lengths) < 1:
        p.error(f"--lengths must be positive, got {args.lengths}")
    if args.budget <= 0 or args.steps < 1:
        p.error("--budget and --steps must be positive")
    known = aa.list_mixers()
    for option in ("mechanisms", "speed_mixers"):
        value = getattr(args, option)
        if value is None:
            continue
        names = [n.strip() for n in value.split(",") if n.strip()]
        unknown = [n for n in names if n.split("(")[0] not in known]
        if unknown:
            p.error(f"--{option.replace('_', '-')}: unknown mechanism(s) {', '.join(unknown)}; "
                    f"`attnarena list` names them")
        setattr(args, option, names)
    return args


def _names(value, allowed, flag):
    names = [n.strip() for n in value.split(",") if n.strip()]
    bad = [n for n in names if n not in allowed]
    if bad or not names:
        raise SystemExit(f"{flag}: expected some of {', '.join(allowed)}, got {value!r}")
    return names


# -- parity -------------------------------------------------------------------------------

def parity_cases(names=None) -> list[tuple[str, str, str | None]]:
    """(mechanism, pattern, form) for every registered mechanism's patterns and forms (form
    None: a mechanism with one training form)."""
    cases = []
    for name in names or aa.list_mixers():
        info = aa.mixer_info(name)
        forms = sorted(info.forms) if "form" in aa.mixer_options(name) else [None]
        for pattern in sorted(info.patterns):
            for form in forms:
                if form == "recurrent" and pattern not in ("causal", "self"):
                    continue
                cases.append((name, pattern, form))
    return cases


def _build(name, pattern, form, dim, heads, seed=0):
    torch.manual_seed(seed)
    options = {} if form is None else {"form": form}
    return aa.create_mixer(name, dim=dim, heads=heads,
                           causal=pattern in ("causal", "causal_cross"), **options).eval()


def _relative(a, b) -> float:
    return float((a.double() - b.double()).abs().max() / max(1.0, float(b.abs().max())))


def compare(reference: torch.nn.Module, other: torch.nn.Module, pattern: str, device: str,
            length: int = 40, context_length: int = 24, seed: int = 0) -> dict:
    """Run ``reference`` on the CPU and ``other`` (the same weights) on ``device``; returns
    the errors of outputs and gradients, relative to the CPU result's scale."""
    g = torch.Generator().manual_seed(seed)
    dim = reference.dim
    x = torch.randn(2, length, dim, generator=g)
    context = (torch.randn(2, context_length, dim, generator=g)
               if pattern in ("cross", "causal_cross") else None)
    weight = torch.randn(2, length, dim, generator=g)  # a loss that reaches every output
    results = []
    for mixer, where in ((reference, "cpu"), (other, device)):
        xs = x.to(where).requires_grad_(True)
        cs = None if context is None else context.to(where)
        mixer.zero_grad(set_to_none=True)
        y = mixer(xs, context=cs)
        (y * weight.to(where)).sum().backward()
        grads = {n: p.grad.detach().cpu() for n, p in mixer.named_parameters()
                 if p.grad is not None}
        results.append((y.detach().cpu(), xs.grad.detach().cpu(), grads))
    (y0, gx0, g0), (y1, gx1, g1) = results
    if set(g0) != set(g1):
        raise AssertionError(f"gradients reach other parameters: {sorted(set(g0) ^ set(g1))}")
    gradient = max([_relative(gx1, gx0)] + [_relative(g1[n], g0[n]) for n in g0])
    return {"output": _relative(y1, y0), "gradient": gradient}


def compare_decoding(reference, other, device, length=12, seed=0) -> float:
    """The largest relative error of ``step`` outputs on ``device`` against the CPU's."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, length, reference.dim, generator=g)
    outputs = []
    for mixer, where in ((reference, "cpu"), (other, device)):
        state, steps = None, []
        with torch.no_grad():
            for t in range(length):
                y_t, state = mixer.step(x[:, t].to(where), state)
                steps.append(y_t.cpu())
        outputs.append(torch.stack(steps, 1))
    return _relative(outputs[1], outputs[0])


def compare_bfloat16(reference, device, pattern, length=40, seed=0) -> float:
    """Mean |bfloat16 on device - float32 on CPU| over the contract's allowance (<= 1 passes)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, length, reference.dim, generator=g)
    context = (torch.randn(2, 24, reference.dim, generator=g)
               if pattern in ("cross", "causal_cross") else None)
    half = copy.deepcopy(reference).to(device, torch.bfloat16)
    with torch.no_grad():
        y32 = reference(x, context=context)
        y16 = half(x.to(device, torch.bfloat16),
                   context=None if context is None else context.to(device, torch.bfloat16))
    relative, absolute = BFLOAT16_TOLERANCE
    return float((y16.float().cpu() - y32).abs().mean()
                 / (relative * y32.abs().mean() + absolute))


def check_parity(device, names=None, deadline=float("inf"), dim=64, heads=2) -> list[dict]:
    rows = []
    for name, pattern, form in parity_cases(names):
        row = {"mechanism": name, "pattern": pattern, "form": form or "-"}
        if time.monotonic() > deadline:
            rows.append({**row, "status": "skipped (time)"})
            continue
        try:
            reference = _build(name, pattern, form, dim, heads)
            other = copy.deepcopy(reference).to(device)
            row.update(compare(reference, other, pattern, device))
            row["bfloat16"] = compare_bfloat16(reference, device, pattern)
            if pattern == "causal" and aa.mixer_info(name).decodes \
                    and form in (None, "recurrent"):
                row["decode"] = compare_decoding(reference, other, device)
            fails = [k for k, limit in FLOAT32_TOLERANCE.items() if row[k] > limit]
            fails += ["decode"] if row.get("decode", 0) > FLOAT32_TOLERANCE["output"] else []
            fails += ["bfloat16"] if row["bfloat16"] > 1 else []
            row["status"] = "ok" if not fails else "beyond tolerance: " + ", ".join(fails)
        except Exception as error:  # one mechanism must not stop the check
            row["status"] = f"error: {type(error).__name__}: {error}"
        rows.append(row)
    return rows


# -- speed --------------------------------------------------------------------------------

def check_speed(device, mixers, lengths, passes, deadline=float("inf")) -> list[dict]:
    from attnarena.arena.measure.speed import SpeedConfig, run_speed

    rows = []
    for pass_ in passes:
        for mixer in mixers:
            if pass_ == "decode" and not aa.mixer_info(mixer.split("(")[0]).decodes:
                continue
            if time.monotonic() > deadline:
                rows += [{"mixer": mixer, "pass": pass_, "length": n,
                          "status": "skipped (time)"} for n in lengths]
                continue
            left = max(1.0, deadline - time.monotonic())
            cfg = SpeedConfig(mixers=[mixer], lengths=lengths, pass_=pass_, device=device,
                              repeats=5, time_budget=min(20.0, left / 4))
            rows += run_speed(cfg, progress=False)["rows"]
    return rows


# -- ListOps ------------------------------------------------------------------------------

def check_listops(device, mixer, steps, quick=False, out=None) -> dict:
    """ListOps at the paper preset (the quick check: the cpu preset) for ``steps`` steps;
    trained on 8,000 generated trees (the throughput does not depend on how many)."""
    from attnarena.arena.run.config import RunConfig
    from attnarena.arena.run.runner import train_run

    task = ({"train_examples": 64, "val_examples": 16, "test_examples": 16} if quick else
            {"train_examples": 8000, "val_examples": 500, "test_examples": 500})
    config = RunConfig(task="listops", mixer=mixer, preset="cpu" if quick else "paper",
                       seed=0, task_options=task,
                       train={"steps": steps, "eval_every": steps}, device=device)
    with tempfile.TemporaryDirectory() as scratch:
        start = time.monotonic()
        _, metrics = train_run(config, out=out or scratch, store_path=None, progress=False)
    return {"mixer": mixer, "preset": "cpu" if quick else "paper", "steps": steps,
            "test_accuracy": metrics["test_accuracy"],
            "tokens_per_s": metrics["tokens_per_s"],
            "train_seconds": metrics["train_seconds"],
            "wall_seconds": time.monotonic() - start}


# -- report -------------------------------------------------------------------------------

def tables(result: dict) -> str:
    lines = [f"# GPU check on {result['device_name']} ({result['device']}), torch "
             f"{result['torch']}, {result['seconds']:.0f} s"]
    parity = result.get("parity") or []
    if parity:
        ok = sum(r["status"] == "ok" for r in parity)
        lines += ["", f"## Parity with the CPU: {ok} of {len(parity)} cases within tolerance",
                  "", "| mechanism | pattern | form | output | gradient | decode | bfloat16 "
                  "(1 = limit) | status |", "|---|---|---|---|---|---|---|---|"]
        for r in parity:
            cells = [f"{r[k]:.1e}" if isinstance(r.get(k), float) else "-"
                     for k in ("output", "gradient", "decode")]
            bf16 = f"{r['bfloat16']:.2f}" if isinstance(r.get("bfloat16"), float) else "-"
            lines.append(f"| {r['mechanism']} | {r['pattern']} | {r['form']} | "
                         f"{' | '.join(cells)} | {bf16} | {r['status']} |")
    speed = result.get("speed") or []
    if speed:
        lengths = sorted({r["length"] for r in speed})
        lines += ["", "## Speed (ms, median; batch 1, 4 heads of 64, float32, causal)"]
        for pass_ in dict.fromkeys(r["pass"] for r in speed):
            lines += ["", f"### {pass_}", "",
                      "| mechanism | " + " | ".join(f"L={n}" for n in lengths) + " |",
                      "|---|" + "---|" * len(lengths)]
            for mixer in dict.fromkeys(r["mixer"] for r in speed if r["pass"] == pass_):
                cells = []
                for n in lengths:
                    r = next((r for r in speed if r["pass"] == pass_ and r["mixer"] == mixer
                              and r["length"] == n), None)
                    if r is None:
                        cells.append("")
                    elif r.get("median_ms") is not None and r["status"] == "ok":
                        cells.append(f"{r['median_ms']:.2f}")
                    else:
                        cells.append(r["status"].split(":")[0])
                lines.append(f"| {mixer} | " + " | ".join(cells) + " |")
    listops = result.get("listops")
    if listops:
        lines += ["", "## ListOps", "",
                  f"{listops['mixer']} at the {listops['preset']} preset, {listops['steps']} "
                  f"steps: {listops['tokens_per_s']:,.0f} tokens/s in training, "
                  f"{listops['train_seconds']:.0f} s, test accuracy "
                  f"{listops['test_accuracy']:.3f}"]
    elif result.get("listops_error"):
        lines += ["", f"## ListOps: {result['listops_error']}"]
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    from attnarena.arena.measure.environment import resolve_device

    device = resolve_device(args.device)
    if device.startswith("cuda"):
        # the parity check compares float32 arithmetic: TF32 would round inputs to 10 bits
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    start = time.monotonic()
    shares = {p: SHARES[p] for p in args.parts}
    total = sum(shares.values())
    result = {"device": device, "torch": torch.__version__,
              "device_name": (torch.cuda.get_device_name(device) if device.startswith("cuda")
                              else "CPU")}
    spent = 0.0
    for part in args.parts:
        spent += shares[part] / total
        deadline = start + args.budget * spent
        if part == "parity":
            result["parity"] = check_parity(device, args.mechanisms, deadline,
                                            **({"dim": 16} if args.quick else {}))
        elif part == "speed":
            lengths = [64, 128] if args.quick else args.lengths
            result["speed"] = check_speed(device, args.speed_mixers, lengths, args.passes,
                                          deadline)
        else:
            try:
                result["listops"] = check_listops(device, args.listops_mixer, args.steps,
                                                  quick=args.quick)
            except Exception as error:
                result["listops_error"] = f"{type(error).__name__}: {error}"
    result["seconds"] = time.monotonic() - start
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_check.json").write_text(json.dumps(result, indent=1, default=str))
    text = tables(result)
    (out / "gpu_check.md").write_text(text + "\n")
    print(text)
    failed = [r for r in result.get("parity", []) if r["status"] not in ("ok",)
              and not r["status"].startswith("skipped")]
    return 1 if failed or result.get("listops_error") else 0


if __name__ == "__main__":
    sys.exit(main())
