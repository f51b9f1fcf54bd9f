"""Knowledge distillation from the uncompressed model: to recover what pruning or
factorization lost, or to train a small student of another mechanism (TinyViT, Wu et al.
2022; TransKD, Liu et al. 2023; "Transformers to SSMs", Bick et al. 2024, for a softmax
teacher and a recurrent student).

The student's loss is a mix of the task's own loss, the KL divergence between the
teacher's and the student's temperature-softened outputs (Hinton et al. 2015; mean
squared error for a regression output), and the mean squared error between matching
blocks' outputs (block i of the student against block round((i+1) T / S) - 1 of the
teacher's T, through a learned linear map when their widths differ).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from attnarena.compress.recipe import check_number, loss_and_output, register_method
from attnarena.progress import Progress
from attnarena.subject import subject_of


@dataclass
class DistillConfig:
    """``steps`` of Adam at ``lr``; loss = alpha * task loss + (1 - alpha) * T^2 KL(teacher
    || student at temperature T) + ``hidden`` * block-output MSE. ``mixer`` (with
    ``mixer_options`` and ``model`` overrides such as dim, depth, heads) trains a fresh
    student of that mechanism instead of the compressed model itself."""
    steps: int = 200
    lr: float = 1e-3
    temperature: float = 2.0
    alpha: float = 0.5
    hidden: float = 1.0
    mixer: str | None = None
    mixer_options: dict = field(default_factory=dict)
    model: dict = field(default_factory=dict)

    def __post_init__(self):
        check_number("steps", self.steps, 1, 10**7, integer=True)
        check_number("lr", self.lr, 0.0, 1.0, open_low=True)
        check_number("temperature", self.temperature, 0.0, 100.0, open_low=True)
        check_number("alpha", self.alpha, 0.0, 1.0)
        check_number("hidden", self.hidden, 0.0, 1e6)
        if self.mixer is None and (self.mixer_options or self.model):
            raise ValueError("mixer_options and model describe a new student: give its mixer")


def block_outputs(subject):
    """Hooks collecting each block's output on the next forward: (list, handles)."""
    outputs, handles = [], []

    def keep(module, args, out):
        outputs.append(out[0] if isinstance(out, tuple) else out)
    for block in subject.blocks():
        handles.append(block.module.register_forward_hook(keep))
    return outputs, handles


def output_divergence(student_out, teacher_out, temperature: float) -> torch.Tensor:
    """T^2 KL(softmax(t/T) || softmax(s/T)) over the last axis, or MSE for a one-value
    (regression) output."""
    if student_out.shape[-1] == 1 or not student_out.is_floating_point() \
            or student_out.dim() == 1:
        return F.mse_loss(student_out, teacher_out)
    t = temperature
    return F.kl_div(F.log_softmax(student_out / t, -1).flatten(0, -2),
                    F.log_softmax(teacher_out / t, -1).flatten(0, -2),
                    log_target=True, reduction="batchmean") * t * t


def _traced(subject, batch, loss):
    """(loss, output, block outputs) of one forward."""
    blocks, handles = block_outputs(subject)
    try:
        value, out = loss_and_output(subject, batch, loss)
    finally:
        for h in handles:
            h.remove()
    return value, out, blocks


def distill_loss(student, teacher, batch, data, config, projections):
    """The student's distillation loss on one batch, and its parts (floats)."""
    student, teacher = subject_of(student), subject_of(teacher)
    with torch.no_grad():
        _, t_out, t_blocks = _traced(teacher, batch, data.loss)
    task_loss, s_out, s_blocks = _traced(student, batch, data.loss)
    kd = output_divergence(s_out, t_out.detach(), config.temperature)
    hidden = task_loss.new_zeros(())
    if config.hidden and s_blocks and t_blocks:
        for i, (s, proj) in enumerate(zip(s_blocks, projections)):
            t = t_blocks[round((i + 1) * len(t_blocks) / len(s_blocks)) - 1]
            if s.shape[:-1] == t.shape[:-1]:
                hidden = hidden + F.mse_loss(proj(s), t)
        hidden = hidden / len(s_blocks)
    loss = config.alpha * task_loss + (1 - config.alpha) * kd + config.hidden * hidden
    return loss, {"task": float(task_loss.detach()), "kd": float(kd.detach()),
                  "hidden": float(hidden.detach())}


def _projections(student, teacher) -> nn.ModuleList:
    s_dims = [b.width for b in student.blocks()]
    t_dim = next((b.width for b in teacher.blocks() if b.width), None)
    return nn.ModuleList(nn.Identity() if d is None or t_dim is None or d == t_dim
                         else nn.Linear(d, t_dim, bias=False) for d in s_dims)


def distill(student, data, config) -> dict:
    """Train ``student`` (a subject) against ``data.teacher``; returns the mean loss parts
    of the first and last tenth of the steps."""
    if data.teacher is None or data.train_batch is None:
        raise ValueError("distillation needs the uncompressed teacher and training batches")
    student, teacher = subject_of(student), subject_of(data.teacher)
    teacher.model.eval()
    model = student.model
    device = next(model.parameters()).device
    projections = _projections(student, teacher).to(device)
    params = [p for p in model.parameters() if p.requires_grad and p.is_floating_point()]
    params += list(projections.parameters())
    if not params:
        raise ValueError("the student has no float parameters left to train (distill before "
                         "quantizing)")
    optimizer = torch.optim.Adam(params, lr=config.lr)
    model.train()
    history = []
    progress = Progress("    distillation, step", config.steps, getattr(data, "log", None))
    for step in range(config.steps):
        loss, parts = distill_loss(student, teacher, data.train_batch(step), data, config,
                                   projections)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        history.append({"loss": float(loss.detach()), **parts})
        progress.step(step + 1, f"loss {history[-1]['loss']:.4g}")
    model.eval()
    tenth = max(1, len(history) // 10)

    def mean(rows):
        return {k: sum(r[k] for r in rows) / len(rows) for k in rows[0]}
    return {"first": mean(history[:tenth]), "last": mean(history[-tenth:]),
            "steps": config.steps}


@register_method("distill", DistillConfig, family="distillation",
                 paper="Hinton et al. 2015, Distilling the Knowledge in a Neural Network; Wu et "
                       "al. 2022, TinyViT; Liu et al. 2023, TransKD",
                 restore=lambda m, c, r: m, check=lambda s, c: _check_student(s, c))
def distill_step(subject, config, data):
    if config.mixer is not None:
        if data.build is None:
            raise ValueError("a student of another mechanism needs the task to build it")
        student, resolved = data.build(config.mixer, config.mixer_options, config.model)
        student = subject.with_model(student.to(next(subject.model.parameters()).device))
        result = distill(student, data, config)
        return student, {**result, "student": resolved}
    result = distill(subject, data, config)
    return subject, result


def _check_student(subject, config):
    if config.mixer is not None:
        from attnarena.registry import mixer_info

        mixer_info(config.mixer)  # an unknown name: one line with the valid ones
        if not subject.builds_students:
            raise ValueError(f"a student of another mechanism is for the arena's own models; "
                             f"to put another mechanism into a {subject.kind} use attnarena "
                             "linearize")


def copy_teacher(model):
    """A frozen copy of ``model`` to distill from."""
    teacher = copy.deepcopy(model).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher
