"""Linearizing a trained softmax model by attention transfer, after Hedgehog (Zhang et al.
2024, "The Hedgehog & the Porcupine") and LoLCATs (Zhang et al. 2025, "LoLCATs: On Low-Rank
Linearizing of Large Language Models"), on any subject (``attnarena.subject``): an arena
model or a pretrained encoder.

Stage 1, attention transfer: the teacher is frozen; each swapped layer's new parameters
(feature maps, gates) are trained so that its attention output matches the teacher's on
the teacher's own inputs to that layer (mean squared error, LoLCATs), or, for mechanisms
that expose attention weights, so that its weights match the teacher's softmax weights
(cross-entropy, Hedgehog). Every layer learns from the teacher's inputs, not from the
student's, so layers train independently: one optimizer over all of them, each loss only
reaching its own layer.

Stage 2, fine-tuning: low-rank adapters on the swapped layers' query, key, value and output
projections are trained on the subject's own loss (the task's; for an encoder, 1 - cosine
to the teacher's sentence embeddings), then merged into the weights.
"""
from __future__ import annotations

import copy
import time

import torch
import torch.nn.functional as F

from attnarena.linearize.config import LinearizeConfig
from attnarena.linearize.lora import add_lora, lora_parameters, merge_lora, train_only
from attnarena.mixers.takeover import new_parameters
from attnarena.progress import Progress
from attnarena.subject import resolve_layers


def swap(subject, config: LinearizeConfig) -> list[int]:
    """Put ``config.mixer`` in every attention layer of ``subject`` but those in
    ``config.keep_softmax``; returns the indices swapped."""
    subject.check_takes_over(config.mixer)
    count = len(subject.blocks())
    chosen = resolve_layers(count, None, config.keep_softmax)
    for index in chosen:
        subject.swap_attention(index, config.mixer, config.options)
    return chosen


def swapped_layers(subject) -> list[int]:
    """Indices of the layers holding a swapped-in mechanism."""
    return [i for i in range(len(subject.blocks())) if subject.is_swapped(i)]


def added_parameters(subject, swapped) -> int:
    """Parameters the swapped mechanisms add beyond the projections they took over."""
    return sum(p.numel() for i in swapped
               for p in new_parameters(subject.attention_module(i)))


def _layer_loss(student, index, inputs, mask, target, loss):
    """Stage 1 loss of one swapped layer on the teacher's input to it."""
    if loss == "attention":
        return student.attention_module(index).distillation_loss(inputs, mask=mask)
    output = student.attention_output(index, inputs, mask)
    if mask is None:
        return F.mse_loss(output, target)
    return F.mse_loss(output[mask], target[mask])


def _mechanism(module) -> str:
    return getattr(module, "mechanism", None) or module.info.name


def keep_worst(teacher, student, count: int, batches, loss="mse") -> tuple[list, dict]:
    """Put softmax attention back in the ``count`` swapped layers whose stage 1 loss on
    ``batches`` is largest; returns (those indices, every layer's loss)."""
    losses = transfer_losses(teacher, student, batches, loss)
    if count > len(losses):
        raise ValueError(f"cannot keep {count} layers softmax: {len(losses)} are swapped")
    worst = sorted(sorted(losses, key=losses.get, reverse=True)[:count])
    for index in worst:
        student.unswap_attention(index)
    return worst, losses


def transfer_losses(teacher, student, batches, loss="mse") -> dict[int, float]:
    """Mean stage 1 loss of each swapped layer of ``student`` over ``batches``."""
    swapped = swapped_layers(student)
    totals = dict.fromkeys(swapped, 0.0)
    with torch.no_grad():
        for batch in batches:
            captured = teacher.capture_attention(swapped, batch)
            for index in swapped:
                inputs, mask, target = captured[index]
                totals[index] += float(_layer_loss(student, index, inputs, mask, target, loss))
    return {i: t / max(len(batches), 1) for i, t in totals.items()}


def attention_transfer(teacher, student, batches, *, loss="mse", lr=1e-2, log=None) -> dict:
    """Stage 1 over ``batches`` (one step each); returns the steps taken and the number
    of parameters trained."""
    swapped = swapped_layers(student)
    if loss == "attention":
        lacking = sorted({_mechanism(student.attention_module(i)) for i in swapped
                          if not hasattr(student.attention_module(i), "distillation_loss")})
        if lacking:
            raise ValueError(f"loss 'attention' needs attention weights to match, which "
                             f"{', '.join(lacking)} does not expose; use loss 'mse'")
    params = train_only(student.model, (p for i in swapped
                                        for p in new_parameters(student.attention_module(i))))
    if not params or not len(batches):
        return {"steps": 0, "trained_parameters": 0}
    optimizer = torch.optim.Adam(params, lr=lr)
    teacher.model.eval()
    progress = Progress("attention transfer, step", len(batches), log)
    for step, batch in enumerate(batches):
        captured = teacher.capture_attention(swapped, batch)
        total = sum(_layer_loss(student, i, *captured[i][:2], captured[i][2], loss)
                    for i in swapped)
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        optimizer.step()
        progress.step(step + 1, f"loss {float(total.detach()):.4g}")
    return {"steps": len(batches), "trained_parameters": sum(p.numel() for p in params)}


def finetune(teacher, student, batches, *, rank=8, lr=1e-3, log=None) -> dict:
    """Stage 2: LoRA on the swapped layers' q, k, v and output projections, on the
    subject's own loss; the adapters are merged at the end."""
    swapped = swapped_layers(student)
    if not swapped or not len(batches):
        return {"steps": 0, "trained_parameters": 0}
    targets = {name for i in swapped for name in student.adapted_projections(i)}
    width = student.attention_module(swapped[0]).dim
    train_only(student.model, ())
    add_lora(student.model, targets.__contains__, rank=min(rank, width))
    params = lora_parameters(student.model)
    optimizer = torch.optim.Adam(params, lr=lr)
    student.model.train(student.finetunes_in_train_mode)
    progress = Progress("fine-tuning, step", len(batches), log)
    try:
        for step, batch in enumerate(batches):
            loss = student.finetune_loss(teacher, batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            progress.step(step + 1, f"loss {float(loss.detach()):.4g}")
    finally:
        merge_lora(student.model)
        student.model.eval()
    return {"steps": len(batches), "trained_parameters": sum(p.numel() for p in params)}


def check_recipe(subject, config: LinearizeConfig) -> None:
    """ValueError, before any work, where ``config`` does not fit ``subject``: a mechanism
    that cannot take over its attention, a layer to keep softmax that it does not have,
    more layers to choose than it can keep."""
    subject.check_takes_over(config.mixer)
    layers = len(subject.blocks())
    resolve_layers(layers, None, config.keep_softmax)
    if config.keep_softmax_auto >= layers:
        raise ValueError(f"cannot choose {config.keep_softmax_auto} layers to keep softmax: the "
                         f"model has {layers} attention layers and at least one must be swapped")


def linearize_subject(teacher, config: LinearizeConfig, *, device="cpu", log=None,
                      after_transfer=None, start_from=None):
    """Run both stages of ``config`` on a copy of the subject ``teacher`` (left unchanged).

    Args:
        after_transfer: called with the student and stage 1's info after stage 1.
        start_from: a student already past stage 1 (skips it).

    Returns:
        (student, info) with steps, trained parameter counts and seconds per stage.
    """
    check_recipe(teacher, config)
    torch.manual_seed(config.seed)
    teacher.model.eval()
    for p in teacher.model.parameters():
        p.requires_grad_(False)
    info = {}
    started = time.perf_counter()
    if start_from is None:
        student = copy.deepcopy(teacher)
        swap(student, config)
        batches = teacher.linearize_batches("transfer", config, device)
        info["transfer"] = attention_transfer(teacher, student, batches, loss=config.loss,
                                              lr=config.transfer_lr, log=log)
        if config.keep_softmax_auto:
            kept, losses = keep_worst(teacher, student, config.keep_softmax_auto,
                                      batches[-min(len(batches), 4):] or
                                      teacher.linearize_batches("finetune", config, device)[:4],
                                      config.loss)
            info["transfer"]["keep_softmax"] = kept
            info["transfer"]["layer_losses"] = {str(i): v for i, v in losses.items()}
            if log:
                log(f"keeping softmax in layers {kept} (largest transfer loss after stage 1)")
        info["transfer"]["seconds"] = time.perf_counter() - started
        if after_transfer is not None:
            after_transfer(student, info["transfer"])
    else:
        student = start_from
    started = time.perf_counter()
    batches = teacher.linearize_batches("finetune", config, device)
    info["finetune"] = finetune(teacher, student, batches, rank=config.lora_rank,
                                lr=config.finetune_lr, log=log)
    info["finetune"]["seconds"] = time.perf_counter() - started
    for p in student.model.parameters():
        p.requires_grad_(False)
    student.model.eval()
    return student, info
