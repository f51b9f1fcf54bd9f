"""The default job of ``attnarena run``: a speed sweep over every mechanism and a short
training of a tiny causal LM per mechanism on the copy task, with a markdown summary."""
from __future__ import annotations

import csv
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from attnarena.arena.environment import environment
from attnarena.arena.speed import SpeedConfig, run_speed
from attnarena.arena.speed_report import write_speed
from attnarena.models import CausalLM
from attnarena.registry import list_mixers, mixer_info
from attnarena.tasks.copy import CopyTask


@dataclass
class CopyRun:
    mixer: str
    steps: int = 600
    batch: int = 32
    dim: int = 64
    depth: int = 2
    heads: int = 4
    lr: float = 3e-3
    vocab: int = 16
    length: int = 8
    seed: int = 0


def train_copy(run: CopyRun) -> dict:
    """Train a tiny CausalLM on the copy task; returns plain metrics."""
    torch.manual_seed(run.seed)
    task = CopyTask(run.vocab, run.length)
    model = CausalLM(task.vocab_size, dim=run.dim, depth=run.depth, heads=run.heads,
                     mixer=run.mixer, max_len=task.sequence_length)
    optimizer = torch.optim.AdamW(model.parameters(), lr=run.lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=run.lr,
                                                   total_steps=run.steps, pct_start=0.1)
    data = torch.Generator().manual_seed(run.seed)
    start = time.perf_counter()
    model.train()
    for _ in range(run.steps):
        inputs, targets, weights = task.batch(run.batch, data)
        logits = model(inputs)
        loss = (F.cross_entropy(logits.transpose(1, 2), targets, reduction="none")
                * weights).sum() / weights.sum()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
    seconds = time.perf_counter() - start
    model.eval()
    test = torch.Generator().manual_seed(run.seed + 10_000)
    inputs, targets, weights = task.batch(512, test)
    with torch.no_grad():
        predictions = model(inputs).argmax(-1)
    correct = ((predictions == targets).float() * weights).sum() / weights.sum()
    return {**asdict(run), "accuracy": float(correct), "final_loss": float(loss.detach()),
            "train_seconds": seconds,
            "params": sum(p.numel() for p in model.parameters())}


def run_quick(out_dir="results", mixers=None, lengths=(256, 1024, 4096), steps=600,
              device="cpu", progress=True) -> dict:
    """Speed sweep + copy-task training for each mixer; writes results under out_dir."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    mixers = list(mixers or list_mixers())
    speed = run_speed(SpeedConfig(mixers=mixers, lengths=list(lengths), pass_="fwd",
                                  device=device), progress=progress)
    speed_paths = write_speed(speed, out, stem="speed-fwd")
    decoders = [m for m in mixers if mixer_info(m).decodes]
    decode = run_speed(SpeedConfig(mixers=decoders, lengths=list(lengths), pass_="decode",
                                   device=device), progress=progress)
    decode_paths = write_speed(decode, out, stem="speed-decode")
    copies = []
    for name in mixers:
        if progress:
            print(f"copy task: training {name} ...", flush=True)
        copies.append(train_copy(CopyRun(mixer=name, steps=steps)))
    copy_path = out / "copy.csv"
    with copy_path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(copies[0]))
        writer.writeheader()
        writer.writerows(copies)
    summary = out / "leaderboard.md"
    summary.write_text(_summary(speed, decode, copies))
    return {"speed": speed_paths, "decode": decode_paths, "copy": copy_path,
            "leaderboard": summary}


def _summary(speed, decode, copies) -> str:
    env = environment()
    lines = ["# attnarena quick run", "",
             f"Hardware: {env['hardware']}, {env['threads']} threads, torch {env['torch']}, "
             f"commit {env['git_commit']}.", "",
             "## Copy task (tiny causal LM, accuracy on the copied half)", "",
             "| mixer | accuracy | final loss | train s | params |", "|---|---|---|---|---|"]
    for c in sorted(copies, key=lambda c: -c["accuracy"]):
        lines.append(f"| {c['mixer']} | {c['accuracy']:.3f} | {c['final_loss']:.3f} | "
                     f"{c['train_seconds']:.1f} | {c['params']:,} |")
    for title, result in (("Causal forward", speed), ("Decode step", decode)):
        lengths = result["meta"]["config"]["lengths"]
        lines += ["", f"## {title}: median ms (batch 1, 4 heads x 64, float32)", "",
                  "| mixer | " + " | ".join(f"L={n}" for n in lengths) + " |",
                  "|---" * (len(lengths) + 1) + "|"]
        for label in dict.fromkeys(r["mixer"] for r in result["rows"]):
            cells = []
            for n in lengths:
                row = next(r for r in result["rows"] if r["mixer"] == label and r["length"] == n)
                cells.append(f"{row['median_ms']:.2f}" if row["status"] == "ok"
                             else row["status"])
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
