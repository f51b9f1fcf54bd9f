"""Linearizing the arena's own trained softmax models by the two stages of
``attnarena.compress.linearize``: each block's softmax mixer is replaced by a mechanism
that takes over its query, key, value and output projections; stage 1 trains the new
parameters so each new mixer's output matches the softmax mixer's on the teacher's own
inputs (mean squared error); stage 2 trains low-rank adapters on the projections with the
task's own loss, then merges them.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from attnarena.compress.lora import add_lora, lora_parameters, merge_lora, train_only
from attnarena.models.block import Block
from attnarena.pretrained.swap import PROJECTIONS, mixer_taking_over, resolve_layers
from attnarena.registry import mixer_info
from attnarena.seeds import batch_seed


def mixer_blocks(model) -> list[Block]:
    """The model's blocks, in order (self-attention and mixing blocks, not cross attention)."""
    return [m for m in model.modules() if isinstance(m, Block)]


def swap_mixers(model, mechanism: str, *, keep_softmax=(), **options) -> list[int]:
    """Replace every block's mixer (except the indices in ``keep_softmax``) by
    ``mechanism``, reusing its q, k, v and output projections; returns the indices."""
    info = mixer_info(mechanism)
    if not info.reuses_attention_weights:
        raise ValueError(f"mixer {mechanism!r} cannot reuse the trained query, key, value and "
                         "output weights (it has no such projections)")
    blocks = mixer_blocks(model)
    chosen = resolve_layers(len(blocks), None, keep_softmax)
    for index in chosen:
        old = blocks[index].mixer
        if not all(isinstance(getattr(old, n, None), nn.Linear) for n in PROJECTIONS):
            raise ValueError(f"block {index} holds {old.info.name}, which has no query, key, "
                             "value and output projections to hand over")
        blocks[index].mixer, _ = mixer_taking_over(
            mechanism, {n: getattr(old, n) for n in PROJECTIONS}, heads=old.heads,
            causal=old.causal, options=options)
    return chosen


def new_mixer_parameters(mixer) -> list[nn.Parameter]:
    return [p for name, p in mixer.named_parameters()
            if not name.startswith(tuple(f"{n}." for n in PROJECTIONS))]


def _teacher_mixers(teacher, task, batch, indices):
    """Inputs, masks and outputs of the teacher's mixers at ``indices`` on one batch."""
    blocks = mixer_blocks(teacher)
    captured, handles = {}, []
    for index in indices:
        def hook(module, args, kwargs, output, index=index):
            captured[index] = (args[0], kwargs.get("mask"), output)
        handles.append(blocks[index].mixer.register_forward_hook(hook, with_kwargs=True))
    try:
        with torch.no_grad():
            task.score(teacher, batch, stats=False)
    finally:
        for handle in handles:
            handle.remove()
    return captured


def _batch(task, size, seed, step, device):
    generator = torch.Generator().manual_seed(batch_seed(seed, step))
    return {k: v.to(device) for k, v in task.batch(size, generator, "train").items()}


def transfer_mixers(teacher, student, task, swapped, *, steps, batch_size, lr, seed,
                    device="cpu") -> dict:
    """Stage 1 on an arena model: each swapped mixer matches the teacher's mixer output on
    the teacher's input to it."""
    blocks = mixer_blocks(student)
    params = train_only(student,
                        (p for i in swapped for p in new_mixer_parameters(blocks[i].mixer)))
    if not params or not steps:
        return {"steps": 0, "trained_parameters": 0}
    optimizer = torch.optim.Adam(params, lr=lr)
    teacher.eval()
    for step in range(steps):
        batch = _batch(task, batch_size, seed, step, device)
        captured = _teacher_mixers(teacher, task, batch, swapped)
        losses = []
        for index in swapped:
            x, mask, target = captured[index]
            out = blocks[index].mixer(x, mask=mask)
            real = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device) \
                if mask is None else mask
            losses.append(F.mse_loss(out[real], target[real]))
        optimizer.zero_grad(set_to_none=True)
        sum(losses).backward()
        optimizer.step()
    return {"steps": steps, "trained_parameters": sum(p.numel() for p in params)}


def finetune_task(student, task, swapped, *, steps, batch_size, lr, rank, seed,
                  device="cpu") -> dict:
    """Stage 2 on an arena model: LoRA on the swapped mixers' projections, the task's own
    loss, adapters merged at the end."""
    if not steps:
        return {"steps": 0, "trained_parameters": 0}
    blocks = mixer_blocks(student)
    names = {id(m): n for n, m in student.named_modules()}
    targets = {f"{names[id(blocks[i].mixer)]}.{p}" for i in swapped for p in PROJECTIONS}
    train_only(student, ())
    add_lora(student, targets.__contains__, rank=min(rank, blocks[swapped[0]].mixer.dim))
    params = lora_parameters(student)
    optimizer = torch.optim.Adam(params, lr=lr)
    student.train()
    try:
        for step in range(steps):
            # batches continue where stage 1's left off: the same budget, fresh data
            batch = _batch(task, batch_size, seed, 10**6 + step, device)
            loss, _ = task.score(student, batch, stats=False)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    finally:
        merge_lora(student)
        student.eval()
    return {"steps": steps, "trained_parameters": sum(p.numel() for p in params)}
