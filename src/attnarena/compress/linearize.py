"""Linearizing a pretrained softmax encoder by attention transfer, after Hedgehog (Zhang et al.
2024, "The Hedgehog & the Porcupine") and LoLCATs (Zhang et al. 2025, "LoLCATs: On
Low-Rank Linearizing of Large Language Models").

Stage 1, attention transfer: the teacher is frozen; each swapped layer's new parameters
(feature maps, gates) are trained so that its attention output matches the teacher's on
the teacher's own inputs to that layer (mean squared error, LoLCATs), or, for mechanisms
that expose attention weights, so that its weights match the teacher's softmax weights
(cross-entropy, Hedgehog). Every layer learns from the teacher's inputs, not from the
student's, so layers train independently: one optimizer over all of them, each loss only
reaching its own layer.

Stage 2, fine-tuning: low-rank adapters on the swapped layers' query, key, value and output
projections are trained so that the student's sentence embeddings match the teacher's
(cosine), then merged into the weights.
"""
from __future__ import annotations

import copy
import math
import random
import time
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F

from attnarena._validate import check_int, check_real
from attnarena.compress.lora import add_lora, lora_parameters, merge_lora, train_only
from attnarena.pretrained.swap import ArenaSelfAttention, attention_layers, swap_attention
from attnarena.progress import Progress

LOSSES = ("mse", "attention")


@dataclass
class LinearizeConfig:
    """A linearization recipe (plain data, recorded with its results).

    Attributes:
        mixer: the arena mechanism swapped in; options: its options.
        keep_softmax: layer indices left as softmax attention (a hybrid stack).
        transfer_steps / finetune_steps: optimizer steps of stage 1 / stage 2 (0 skips it).
        loss: stage 1's objective, "mse" (attention outputs) or "attention" (Hedgehog's
            cross-entropy on attention weights; mechanisms with ``distillation_loss``).
        transfer_lr / finetune_lr: Adam learning rates.
        lora_rank: rank of the stage-2 adapters.
        batch_size, max_length: training batches of sentences, truncated to max_length tokens.
        seed: sentence order and initialization.
    """

    mixer: str = "hedgehog"
    options: dict = field(default_factory=dict)
    keep_softmax: tuple = ()
    transfer_steps: int = 300
    finetune_steps: int = 300
    loss: str = "mse"
    transfer_lr: float = 1e-2
    finetune_lr: float = 1e-3
    lora_rank: int = 8
    batch_size: int = 32
    max_length: int = 128
    seed: int = 0

    def __post_init__(self):
        if not isinstance(self.mixer, str):
            raise TypeError(f"mixer must be a name, got {self.mixer!r}")
        self.keep_softmax = tuple(sorted(set(self.keep_softmax)))
        for name in ("transfer_steps", "finetune_steps"):
            check_int(getattr(self, name), name, minimum=0)
        for name in ("lora_rank", "batch_size", "max_length"):
            check_int(getattr(self, name), name)
        check_int(self.seed, "seed", minimum=0)
        for name in ("transfer_lr", "finetune_lr"):
            check_real(getattr(self, name), name, low_open=True)
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {self.loss!r}")

    def to_dict(self) -> dict:
        return {**asdict(self), "keep_softmax": list(self.keep_softmax)}


def sentence_batches(encoder, sentences, batch_size, max_length, steps, seed):
    """``steps`` tokenized batches cycling through shuffled ``sentences``."""
    order = list(sentences)
    rng = random.Random(seed)
    batches, position = [], len(order)
    for _ in range(steps):
        if position + batch_size > len(order):
            rng.shuffle(order)
            position = 0
        batches.append(encoder.tokenize(order[position:position + batch_size], max_length))
        position += batch_size
    return batches


def _teacher_layers(teacher, ids, keep, indices):
    """The teacher's inputs to, and attention outputs (after the output projection) of,
    each layer in ``indices`` on one batch: {index: (inputs, outputs)}."""
    blocks = attention_layers(teacher.model)
    captured, handles = {}, []
    for index in indices:
        def hook(module, args, kwargs, output, index=index):
            hidden = args[0] if args else kwargs["hidden_states"]
            captured[index] = (hidden, blocks[index].output.dense(output[0]))
        handles.append(blocks[index].self.register_forward_hook(hook, with_kwargs=True))
    try:
        with torch.no_grad():
            teacher(ids, keep)
    finally:
        for handle in handles:
            handle.remove()
    return captured


def _layer_loss(block, hidden, target, keep, loss):
    """Stage 1 loss of one swapped block on the teacher's input ``hidden``."""
    mixer = block.self.mixer
    real = keep.bool()
    mask = None if bool(real.all()) else real
    if loss == "attention":
        return mixer.distillation_loss(hidden, mask=mask)
    output = block.output.dense(block.self(hidden, attention_mask=keep)[0])
    return F.mse_loss(output[real], target[real])


def new_parameters(block) -> list[torch.nn.Parameter]:
    """The parameters a swapped block adds: its mixer's, less the pretrained projections."""
    return [p for name, p in block.self.mixer.named_parameters()
            if not name.startswith(("q_proj.", "k_proj.", "v_proj."))]


def transfer_losses(teacher, student, batches, loss="mse") -> dict[int, float]:
    """Mean stage 1 loss of each swapped layer of ``student`` over ``batches``."""
    blocks = attention_layers(student.model)
    swapped = [i for i, b in enumerate(blocks) if isinstance(b.self, ArenaSelfAttention)]
    totals = dict.fromkeys(swapped, 0.0)
    with torch.no_grad():
        for ids, keep in batches:
            captured = _teacher_layers(teacher, ids, keep, swapped)
            for index in swapped:
                totals[index] += float(_layer_loss(blocks[index], *captured[index], keep, loss))
    return {i: t / max(len(batches), 1) for i, t in totals.items()}


def attention_transfer(teacher, student, batches, *, loss="mse", lr=1e-2,
                       log=None) -> dict:
    """Stage 1 over ``batches`` (one step each); returns the steps taken and the number
    of parameters trained."""
    blocks = attention_layers(student.model)
    swapped = [i for i, b in enumerate(blocks) if isinstance(b.self, ArenaSelfAttention)]
    if loss == "attention":
        lacking = sorted({blocks[i].self.mechanism for i in swapped
                          if not hasattr(blocks[i].self.mixer, "distillation_loss")})
        if lacking:
            raise ValueError(f"loss 'attention' needs attention weights to match, which "
                             f"{', '.join(lacking)} does not expose; use loss 'mse'")
    params = train_only(student, (p for i in swapped for p in new_parameters(blocks[i])))
    if not params or not batches:
        return {"steps": 0, "trained_parameters": 0}
    optimizer = torch.optim.Adam(params, lr=lr)
    progress = Progress("attention transfer, step", len(batches), log)
    for step, (ids, keep) in enumerate(batches):
        captured = _teacher_layers(teacher, ids, keep, swapped)
        total = sum(_layer_loss(blocks[i], *captured[i], keep, loss) for i in swapped)
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        optimizer.step()
        progress.step(step + 1, f"loss {float(total.detach()):.4g}")
    return {"steps": len(batches), "trained_parameters": sum(p.numel() for p in params)}


def _adapted(name: str, swapped_prefixes) -> bool:
    if not name.startswith(swapped_prefixes):
        return False
    return name.endswith(("mixer.q_proj", "mixer.k_proj", "mixer.v_proj", "output.dense"))


def finetune(teacher, student, batches, *, rank=8, lr=1e-3, log=None) -> dict:
    """Stage 2: LoRA on the swapped layers' q, k, v and output projections, distilling the
    teacher's sentence embeddings (1 - cosine); the adapters are merged at the end."""
    blocks = attention_layers(student.model)
    names = {id(m): n for n, m in student.model.named_modules()}
    prefixes = tuple(names[id(b)] + "." for b in blocks
                     if isinstance(b.self, ArenaSelfAttention))
    if not prefixes or not batches:
        return {"steps": 0, "trained_parameters": 0}
    train_only(student, ())
    add_lora(student.model, lambda name: _adapted(name, prefixes), rank=rank)
    params = lora_parameters(student.model)
    optimizer = torch.optim.Adam(params, lr=lr)
    progress = Progress("fine-tuning, step", len(batches), log)
    try:
        for step, (ids, keep) in enumerate(batches):
            with torch.no_grad():
                target = teacher.embed(ids, keep)
            loss = (1 - F.cosine_similarity(student.embed(ids, keep), target, dim=-1)).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            progress.step(step + 1, f"1 - cosine {float(loss.detach()):.4g}")
    finally:
        merge_lora(student.model)
    return {"steps": len(batches), "trained_parameters": sum(p.numel() for p in params)}


def _ranks(x):
    return torch.argsort(torch.argsort(x)).to(torch.float64)


def agreement(teacher_embeddings, student_embeddings, neighbours: int = 10) -> dict:
    """How well a student's sentence embeddings (N, width) agree with the teacher's: mean
    cosine of each pair, the mean overlap of each sentence's ``neighbours`` nearest
    neighbours (within the set, by cosine), and the Spearman correlation of all pairwise
    similarities."""
    a = F.normalize(teacher_embeddings.double(), dim=-1)
    b = F.normalize(student_embeddings.double(), dim=-1)
    n = a.shape[0]
    if n <= neighbours:
        raise ValueError(f"need more than {neighbours} sentences, got {n}")
    sim_a, sim_b = a @ a.t(), b @ b.t()
    eye = torch.eye(n, dtype=torch.bool)
    top_a = sim_a.masked_fill(eye, -2).topk(neighbours, dim=-1).indices
    top_b = sim_b.masked_fill(eye, -2).topk(neighbours, dim=-1).indices
    overlap = torch.tensor([len(set(x.tolist()) & set(y.tolist())) / neighbours
                            for x, y in zip(top_a, top_b)]).mean()
    upper = torch.triu(torch.ones(n, n, dtype=torch.bool), diagonal=1)
    ra, rb = _ranks(sim_a[upper]), _ranks(sim_b[upper])
    ra, rb = ra - ra.mean(), rb - rb.mean()
    spearman = (ra @ rb) / math.sqrt(float((ra @ ra) * (rb @ rb)))
    return {"mean_cosine": float((a * b).sum(-1).mean()), "top10_overlap": float(overlap),
            "spearman": float(spearman)}


def linearize_encoder(teacher, config: LinearizeConfig, train_sentences, *, log=None,
                      after_transfer=None, start_from=None):
    """Run both stages of ``config`` on a copy of ``teacher``.

    Args:
        teacher: a ``PretrainedEncoder`` (left unchanged).
        train_sentences: the training corpus.
        after_transfer: called with the student and stage 1's info after stage 1.
        start_from: a student already past stage 1 (skips it).

    Returns:
        (student, info) with steps and trained parameter counts per stage and seconds.
    """
    torch.manual_seed(config.seed)
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    info = {}
    started = time.perf_counter()
    if start_from is None:
        student = copy.deepcopy(teacher)
        swap_attention(student.model, config.mixer, keep_softmax=config.keep_softmax,
                       **config.options)
        batches = sentence_batches(teacher, train_sentences, config.batch_size,
                                   config.max_length, config.transfer_steps, config.seed)
        info["transfer"] = attention_transfer(teacher, student, batches, loss=config.loss,
                                              lr=config.transfer_lr, log=log)
        info["transfer"]["seconds"] = time.perf_counter() - started
        if after_transfer is not None:
            after_transfer(student, info["transfer"])
    else:
        student = start_from
    started = time.perf_counter()
    batches = sentence_batches(teacher, train_sentences, config.batch_size, config.max_length,
                               config.finetune_steps, config.seed + 1)
    info["finetune"] = finetune(teacher, student, batches, rank=config.lora_rank,
                                lr=config.finetune_lr, log=log)
    info["finetune"]["seconds"] = time.perf_counter() - started
    for p in student.parameters():
        p.requires_grad_(False)
    return student.eval(), info
