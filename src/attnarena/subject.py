"""What compression and linearization act on: a *subject*.

A subject wraps a model and says what it is made of: its blocks, each block's attention
(query, key, value and output projections, heads, key/value heads) and MLP, its linear
layers and which of them is the output head, and the tensor its forward returns. The
methods of ``attnarena.compress`` and ``attnarena.linearize`` ask the subject; nothing else
asks a model what it is by its attributes.

Each kind of model has one adapter, a subclass of ``Subject`` registered with
``register_subject``: the arena's own backbones (``attnarena.models.subject``), a
BERT-family encoder (``attnarena.pretrained.subject``). ``subject_of(model)`` picks the
adapter that accepts a model.

An adapter built for a workflow also gives what the drivers need beyond the structure:
its data and loss, its quality measure, what is timed (see ``attnarena.compress.driver``
and ``attnarena.linearize.driver``).
"""
from __future__ import annotations

import abc
import copy
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj")


@dataclass
class Attention:
    """One block's self-attention as compression and linearization see it.

    Attributes:
        name: the attention module's qualified name in the model.
        mechanism: the arena mixer's name, or "softmax" for a pretrained model's own.
        projections: the trained ``nn.Linear`` maps by role, ``q_proj``, ``k_proj``,
            ``v_proj`` and ``o_proj`` (those the attention has).
        output: the qualified name of the linear layer whose input columns are the heads'
            outputs, head by head (what head importance gates).
        heads, kv_heads: query heads and key/value heads.
        causal: whether it attends to earlier tokens only.
        prune: keeps only the heads whose indices it is given, in place; None when the
            heads cannot be pruned, ``unprunable`` then says why.
    """
    name: str
    mechanism: str
    projections: dict[str, nn.Linear]
    output: str
    heads: int
    kv_heads: int
    causal: bool
    prune: Callable[[list[int]], None] | None = None
    unprunable: str = ""


@dataclass
class Block:
    """One residual block of a subject.

    Attributes:
        index: its place in the stack; name: its qualified module name.
        module: the block (its forward output is the residual stream after it).
        width: the residual stream's width.
        attention: its self-attention (None for a block without one).
        mlp: the (first, last) linear layers of its MLP (None without one).
    """
    index: int
    name: str
    module: nn.Module
    width: int | None
    attention: Attention | None = None
    mlp: tuple[nn.Linear, nn.Linear] | None = None


class Subject(abc.ABC):
    """A model as compression and linearization see it; ``model`` is the ``nn.Module`` the
    methods change in place (a method may also replace it: ``with_model``).

    Structure (what every compression method reads): ``blocks``, ``output``,
    ``output_layers``, ``linear_layers``.

    The workflows (``attnarena.arena.deploy``), for an adapter built with its data:

    - compress: ``seed``, ``default_batch``, ``describe() -> dict`` (fields of every row),
      ``compress_data(calibration, batch, device) -> CompressData``, ``quality(teacher,
      device) -> {"test": ..., ...}``, ``timing_cells(device) -> {key path: call}``,
      ``timed_length``, ``source_config() -> dict`` (what a saved model records), and
      ``identity()``;
    - linearize: ``check_takes_over(mechanism)``, ``swap_attention(index, mechanism,
      options)``, ``is_swapped(index)``, ``attention_module(index)``,
      ``capture_attention(indices, batch)``, ``attention_output(index, inputs, mask)``,
      ``adapted_projections(index)``, ``linearize_batches(stage, config, device)``,
      ``finetune_loss(teacher, batch)``, ``finetunes_in_train_mode``, and, to be timed at
      given lengths, ``length_cells(lengths, batch, device)``; ``saves_linearized`` with
      ``save(folder)`` where the result loads back.

    ``ArenaSubject`` (``attnarena.models``) and ``EncoderSubject``
    (``attnarena.pretrained``) implement all of them.
    """

    kind: str = "model"  # a short name of the adapter ("arena", "encoder", ...)
    builds_students = False  # whether a fresh model of another mechanism can stand in

    def __init__(self, model: nn.Module):
        self.model = model

    @classmethod
    def accepts(cls, model) -> bool:
        """Whether this adapter knows ``model`` (``subject_of`` asks each in turn)."""
        return False

    @abc.abstractmethod
    def blocks(self) -> list[Block]:
        """The residual blocks, in order."""

    @abc.abstractmethod
    def output(self, result) -> torch.Tensor:
        """The tensor of what the model's forward returned (logits, states)."""

    def output_layers(self) -> set[str]:
        """Names of the linear layers that make the output (a classifier or LM head)."""
        return set()

    def linear_layers(self, *, include_output: bool = True) -> dict[str, nn.Linear]:
        """Every ``nn.Linear`` by qualified name, the output head too unless told otherwise."""
        found = {n: m for n, m in self.model.named_modules() if type(m) is nn.Linear}
        if not include_output:
            heads = self.output_layers()
            found = {n: m for n, m in found.items()
                     if not any(n == h or n.startswith(h + ".") for h in heads)}
        return found

    saves_linearized = False  # whether ``save`` writes a linearized model that loads back
    load_hint = ""

    def linearize_fields(self) -> dict:
        """Fields a linearization row of this subject carries besides the recipe."""
        return {}

    def identity(self) -> tuple:
        """What besides the source and the recipe tells this subject's stored rows apart
        (nothing, by default)."""
        return ()

    def unswap_attention(self, index: int) -> None:
        """Put softmax attention back in the swapped layer ``index`` (linearization's
        choice of layers to keep softmax); adapters that can say how."""
        raise ValueError(f"a {self.kind} cannot put softmax attention back in a swapped layer: "
                         "name the layers to keep softmax instead of choosing them")

    def attentions(self) -> list[Attention]:
        return [b.attention for b in self.blocks() if b.attention is not None]

    def frozen_copy(self) -> "Subject":
        """A copy in eval mode with every parameter frozen (a teacher)."""
        teacher = copy.deepcopy(self)
        teacher.model.eval()
        for p in teacher.model.parameters():
            p.requires_grad_(False)
        return teacher

    def with_model(self, model: nn.Module) -> "Subject":
        """The same adapter around another model of its kind (a distilled student)."""
        other = copy.copy(self)
        other.model = model
        return other

    def __deepcopy__(self, memo):
        other = copy.copy(self)
        other.model = copy.deepcopy(self.model, memo)
        return other


@dataclass
class CompressData:
    """What data-driven methods see of the task.

    ``calibration``: a few batches (dicts of tensors on the model's device);
    ``loss(model, batch)``: the task's loss; ``train_batch(step)``: a fresh training batch;
    ``teacher``: the uncompressed model (distillation); ``build(mixer, options, model)``:
    a new untrained model for this task (a student of another mechanism);
    ``importance_loss``: what head and neuron importance differentiate (default ``loss``;
    a model whose loss is its distance to itself needs another, as that is zero).
    """

    calibration: list
    loss: Callable
    importance_loss: Callable | None = None
    train_batch: Callable | None = None
    teacher: nn.Module | None = None
    build: Callable | None = None
    seed: int = 0
    log: Callable | None = None  # progress lines of long steps (distillation)


_ADAPTERS: list[type[Subject]] = []


def register_subject(adapter: type[Subject]) -> type[Subject]:
    """Make ``subject_of`` consider ``adapter`` (a ``Subject`` subclass)."""
    if adapter in _ADAPTERS:
        raise ValueError(f"subject adapter {adapter.__name__} is already registered")
    _ADAPTERS.append(adapter)
    return adapter


def subject_of(model) -> Subject:
    """``model`` itself when it is a subject, else the registered adapter that accepts it
    around it; a ValueError naming the kinds known when none does."""
    if isinstance(model, Subject):
        return model
    for adapter in _ADAPTERS:
        if adapter.accepts(model):
            return adapter(model)
    known = ", ".join(a.kind for a in _ADAPTERS) or "none registered"
    raise ValueError(f"no subject adapter knows a {type(model).__name__} (compression and "
                     f"linearization take: {known})")


class Batches:
    """``count`` batches made on demand by ``fetch(index)`` (a sized iterable)."""

    def __init__(self, count: int, fetch: Callable):
        self.count, self.fetch = count, fetch

    def __len__(self) -> int:
        return self.count

    def __iter__(self):
        return (self.fetch(index) for index in range(self.count))


def resolve_layers(count: int, layers, keep_softmax) -> list[int]:
    """Indices of ``layers`` (default: all ``count``) less those in ``keep_softmax``, each
    checked to be a layer index."""
    chosen = list(range(count)) if layers is None else list(layers)
    keep = set(keep_softmax or ())
    for index in [*chosen, *keep]:
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < count:
            raise ValueError(f"layer index {index!r} is out of range: the model has {count} "
                             f"attention layers, 0 to {count - 1}")
    return [i for i in sorted(set(chosen)) if i not in keep]
