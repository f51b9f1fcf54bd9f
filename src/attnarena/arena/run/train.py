"""The training and evaluation loop: a pure function of a resolved run config.

AdamW with linear warmup then cosine or inverse-square-root decay, gradient clipping,
validation every ``eval_every`` steps, and the test metric of the best validation
checkpoint at the end. Every kind of task (language modelling, classification, matching,
regression) goes through the task's own ``build_model`` and ``score``; the best checkpoint
is the one with the best validation metric (highest accuracy, lowest error). Batches come
from a generator seeded by (seed, step), so a run is deterministic given its seed, and a
run resumed from a checkpoint continues exactly where it stopped. Under ``torchrun`` each
rank trains on its slice of every global batch (DistributedDataParallel; gloo on CPU, nccl
on CUDA) and only rank 0 writes.
"""
from __future__ import annotations

import math
import os
import time

import torch

from attnarena._validate import NonFiniteError
from attnarena.arena.run.artifacts import save_run
from attnarena.arena.run.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from attnarena.arena.run.config import ResolvedRun
from attnarena.arena.measure.environment import resolve_device
from attnarena.arena.measure.memory import PeakMemory
from attnarena.options import DTYPES
from attnarena.seeds import batch_seed, eval_seed
from attnarena.tasks import create_task


class DivergedError(RuntimeError):
    """Training produced a non-finite loss, gradient or activation: the run's outcome, not a
    crash (its status is 'diverged', and it never ranks)."""


def lr_at(step: int, train: dict) -> float:
    """Learning rate at 0-based ``step``: linear warmup, then the schedule's decay."""
    lr, warmup, total = train["lr"], train["warmup"], train["steps"]
    if warmup and step < warmup:
        return lr * (step + 1) / warmup
    if train["schedule"] == "cosine":
        progress = (step - warmup) / max(1, total - warmup)
        return lr * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    if train["schedule"] == "rsqrt":
        return lr * math.sqrt(max(1, warmup) / max(step + 1, warmup, 1))
    return lr


def _distributed():
    """(rank, world size), initializing the process group under torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), world


def build_model(resolved: dict, task):
    return task.build_model(resolved["mixer"], resolved["mixer_options"], resolved["model"])


def _to(batch: dict, device, rows=None) -> dict:
    return {k: (v if rows is None else v[rows]).to(device) for k, v in batch.items()}


def evaluate(model, task, examples: int, seed: int, device, split: str = "val") -> dict:
    """Loss and the task's metric over a fixed evaluation set of ``split``
    (``Task.evaluate``)."""
    return task.evaluate(model, examples, seed, device, split)


def _tokens(batch: dict) -> int:
    """Real tokens in a batch: masked positions do not count."""
    masks = [batch[k] for k in ("mask", "mask2") if k in batch]
    if masks:
        return sum(int(m.sum()) for m in masks)
    return batch["inputs"].shape[0] * batch["inputs"].shape[1]


def _throughput(state) -> float:
    """Tokens per second of the steps timed after each process's first (all steps when a
    run trained too few to leave any out)."""
    if state["timed_seconds"] > 0:
        return state["timed_tokens"] / state["timed_seconds"]
    return state["tokens"] / max(state["train_seconds"], 1e-9)


def train(resolved, checkpoint_dir=None, progress: bool = True, save_dir=None) -> dict:
    """Train and evaluate one run; returns plain metrics.

    Args:
        resolved: the run, a ``ResolvedRun`` (``RunConfig.resolve()``) or its plain
            mapping.
        checkpoint_dir: where checkpoints go; a run finds its own there and resumes.
        progress: show a progress bar with loss, accuracy and tokens/s.
        save_dir: where the trained model goes (weights of the best validation checkpoint,
            config and metrics; ``artifacts.load_run`` rebuilds it).
    """
    from tqdm import tqdm

    rank, world = _distributed()
    resolved = ResolvedRun.of(resolved).as_dict()
    train_cfg, seed = resolved["train"], resolved["seed"]
    device = torch.device(resolve_device(resolved["device"]))
    dtype = DTYPES[resolved["dtype"]]
    if train_cfg["batch"] % world:
        raise ValueError(f"batch {train_cfg['batch']} does not split over {world} processes")
    task = create_task(resolved["task"], **resolved["task_options"])
    task.prepare()
    torch.manual_seed(seed)
    model = build_model(resolved, task).to(device=device, dtype=dtype)
    params = sum(p.numel() for p in model.parameters())
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": train_cfg["weight_decay"]},
                                   {"params": no_decay, "weight_decay": 0.0}],
                                  lr=train_cfg["lr"])
    sign = 1.0 if task.higher_is_better else -1.0
    # Throughput is timed over the steps after the first of each process (warm-up: first
    # allocations, compilation), so a run resumed many times is timed like one that was not.
    state = {"step": 0, "history": [], "best_score": -math.inf, "train_seconds": 0.0,
             "tokens": 0, "timed_seconds": 0.0, "timed_tokens": 0, "resumptions": 0}
    best = None
    loaded = load_checkpoint(checkpoint_dir, model=model, steps=train_cfg["steps"],
                             eval_every=train_cfg["eval_every"]) if checkpoint_dir else None
    if loaded is not None:
        weights, best, state = loaded
        model.load_state_dict(weights)
        try:
            optimizer.load_state_dict(state.pop("optimizer"))
        except (ValueError, KeyError, RuntimeError) as error:
            raise CheckpointError(f"the checkpoint in {checkpoint_dir} holds an optimizer "
                                  f"state that does not fit the model ({error}); delete that "
                                  "folder to restart the run") from None
        torch.set_rng_state(state.pop("rng"))
        for key, empty in (("timed_seconds", 0.0), ("timed_tokens", 0), ("resumptions", 0)):
            state.setdefault(key, empty)  # checkpoints written before these were kept
        state["resumptions"] += 1
    warm = False  # whether this process has trained a step yet
    wrapped = model
    if world > 1:
        wrapped = torch.nn.parallel.DistributedDataParallel(model)
    steps, every = train_cfg["steps"], train_cfg["eval_every"]
    local = train_cfg["batch"] // world
    bar = tqdm(total=steps, initial=state["step"], disable=not progress or rank != 0,
               desc=f"{resolved['task']}/{resolved['mixer']}", dynamic_ncols=True,
               mininterval=0.5)
    model.train()
    with PeakMemory(device) as memory:
        while state["step"] < steps:
            step = state["step"]
            start = time.perf_counter()
            generator = torch.Generator().manual_seed(batch_seed(seed, step))
            batch = _to(task.batch(train_cfg["batch"], generator, "train"), device,
                        slice(rank * local, (rank + 1) * local))
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step, train_cfg)
            try:
                loss, _ = task.score(wrapped, batch, stats=False)
            except NonFiniteError as error:  # NaN weights reach a mixer as NaN inputs
                raise DivergedError(f"training diverged at step {step + 1}: {error}") from None
            if not bool(torch.isfinite(loss.detach())):
                raise DivergedError(f"training diverged at step {step + 1}: the loss is "
                                    f"{loss.item()} (learning rate {lr_at(step, train_cfg):g})")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if train_cfg["clip"]:
                norm = torch.nn.utils.clip_grad_norm_(model.parameters(), train_cfg["clip"])
                if not bool(torch.isfinite(norm)):
                    raise DivergedError(f"training diverged at step {step + 1}: the gradient "
                                        f"norm is {norm.item()}")
            optimizer.step()
            elapsed, tokens = time.perf_counter() - start, _tokens(batch) * world
            state["train_seconds"] += elapsed
            state["tokens"] += tokens
            if warm:
                state["timed_seconds"] += elapsed
                state["timed_tokens"] += tokens
            warm = True
            state["step"] = step + 1
            bar.update(1)
            if state["step"] % every == 0 or state["step"] == steps:
                metrics = evaluate(model, task, train_cfg["eval_examples"],
                                   eval_seed(seed, "val"), device, "val")
                state["history"].append({"step": state["step"], "train_loss": loss.item(),
                                         "val_loss": metrics["loss"],
                                         f"val_{task.metric}": metrics["metric"]})
                if sign * metrics["metric"] > state["best_score"]:
                    state["best_score"] = sign * metrics["metric"]
                    best = {k: v.detach().clone() for k, v in model.state_dict().items()}
                bar.set_postfix({"loss": f"{loss.item():.3f}",
                                 task.metric: f"{metrics['metric']:.3f}",
                                 "tok_s": f"{state['tokens'] / state['train_seconds']:.0f}"})
                if checkpoint_dir and rank == 0:
                    save_checkpoint(checkpoint_dir, model, best,
                                    {**state, "optimizer": optimizer.state_dict(),
                                     "rng": torch.get_rng_state()})
    bar.close()
    if best is not None:
        model.load_state_dict(best)
    test = evaluate(model, task, train_cfg["eval_examples"], eval_seed(seed, "test"), device,
                    "test")
    by_length = {}
    for length in task.generalization_lengths():
        variant = task.at_length(length)  # the task itself at the training length: tested
        by_length[str(length)] = test["metric"] if variant is task else evaluate(
            model, variant, train_cfg["eval_examples"], eval_seed(seed, "test"), device,
            "test")["metric"]
    best_val = sign * state["best_score"]
    baselines = task.baselines(train_cfg["eval_examples"], eval_seed(seed, "test"))
    extra = {} if baselines is None else {"baselines": baselines}
    if by_length:
        extra["test_by_length"] = by_length
    metrics = {**extra, "metric": task.metric, f"test_{task.metric}": test["metric"],
            "test_loss": test["loss"], f"best_val_{task.metric}": best_val,
            "test_examples": test["count"], "steps": state["step"],
            "train_seconds": state["train_seconds"],
            "tokens_per_s": _throughput(state), "resumptions": state["resumptions"],
            "peak_mem_mb": None if memory.peak_bytes is None else memory.peak_bytes / 2**20,
            "params": params, "history": state["history"], "world_size": world}
    if save_dir is not None and rank == 0:
        save_run(save_dir, model, resolved, metrics)
    return metrics
