"""A BERT-family ``transformers`` encoder as a subject of compression and linearization
(see ``attnarena.subject``): each layer's self-attention has ``query``/``key``/``value``
maps and its output map in the layer's ``attention.output.dense``; its MLP is
``intermediate.dense`` then ``output.dense``; its forward returns ``last_hidden_state``.

Built around a ``PretrainedEncoder`` with a corpus, the subject also gives the workflows
their data (tokenized sentences), loss (1 - cosine to the original's sentence embedding)
and quality measure (agreement with the original on held-out sentences), and what is
timed (the whole encoder on random ids)."""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from attnarena.pretrained.agreement import agreement
from attnarena.pretrained.corpus import sentence_batches

from attnarena.pretrained.swap import (ArenaSelfAttention, attention_layers, build_swapped,
                                       check_swap, key_mask)
from attnarena.subject import Attention, Block, CompressData, Subject, register_subject


def prune_bert_heads(attention, output: nn.Linear, kept: list[int]) -> None:
    """Keep only the heads ``kept`` of a BERT-family self-attention, in place."""
    heads, width = attention.num_attention_heads, attention.attention_head_size
    if len(kept) == heads:
        return
    index = torch.cat([h * width + torch.arange(width) for h in sorted(kept)])
    for linear in (attention.query, attention.key, attention.value):
        linear.weight = nn.Parameter(linear.weight.detach()[index])
        linear.bias = nn.Parameter(linear.bias.detach()[index])
        linear.out_features = len(index)
    output.weight = nn.Parameter(output.weight.detach()[:, index])
    output.in_features = len(index)
    attention.num_attention_heads, attention.all_head_size = len(kept), len(index)


class PretrainedSubject(Subject):
    """A subject around a pretrained model's wrapper (its model with a tokenizer), kept in
    the attribute named by ``wrapper``: copies, other models and saving go through it."""

    wrapper = ""
    saves_linearized = True
    load_hint = "load it with attnarena.pretrained.load_pretrained"

    def with_model(self, model):
        other = super().with_model(model)
        if getattr(self, self.wrapper) is not None:
            setattr(other, self.wrapper, getattr(self, self.wrapper).with_model(model))
        return other

    def save(self, folder):
        """Save the model (weights, tokenizer, swap record) to ``folder``."""
        return getattr(self, self.wrapper).save(folder)

    def __deepcopy__(self, memo):
        if getattr(self, self.wrapper) is None:
            return super().__deepcopy__(memo)
        other = copy.copy(self)
        setattr(other, self.wrapper, copy.deepcopy(getattr(self, self.wrapper), memo))
        other.model = getattr(other, self.wrapper).model
        return other


@register_subject
class EncoderSubject(PretrainedSubject):
    """A BERT-family encoder: ``model`` is the transformers model, ``encoder`` (optional)
    the ``PretrainedEncoder`` around it (tokenizer and pooling) that the workflows use."""

    kind = "BERT-family encoder"
    wrapper = "encoder"

    seed = 0
    default_batch = 32

    def __init__(self, model: nn.Module, encoder=None, *, train=(), test=(), length: int = 128):
        super().__init__(model)
        self.encoder = encoder
        self.train, self.test, self.timed_length = list(train), list(test), length
        self._reference = None

    @classmethod
    def of(cls, encoder, **corpus) -> "EncoderSubject":
        """The subject of a ``PretrainedEncoder`` (``train``, ``test``: sentences;
        ``length``: the sequence length timed)."""
        return cls(encoder.model, encoder, **corpus)

    @classmethod
    def accepts(cls, model) -> bool:
        return isinstance(model, nn.Module) and bool(attention_layers(model))

    def linearize_fields(self) -> dict:
        return {"train_sentences": len(self.train), "test_sentences": len(self.test)}

    def identity(self) -> tuple:
        """What besides the recipe tells this subject's rows apart: the timed length and
        the number of held-out sentences."""
        return (self.timed_length, len(self.test))

    def _layers(self) -> list[tuple[str, nn.Module]]:
        names = {id(m): n for n, m in self.model.named_modules()}
        return [(names[id(m)], m) for m in attention_layers(self.model)]

    def blocks(self) -> list[Block]:
        out = []
        for index, (name, attention) in enumerate(self._layers()):
            parent_name = name.rsplit(".", 1)[0] if "." in name else ""
            layer = self.model.get_submodule(parent_name) if parent_name else self.model
            inner, dense = attention.self, attention.output.dense
            swapped = isinstance(inner, ArenaSelfAttention)
            heads = inner.mixer.heads if swapped else inner.num_attention_heads
            view = Attention(
                name=f"{name}.self", mechanism=inner.mechanism if swapped else "softmax",
                projections=({p: getattr(inner.mixer, p) for p in ("q_proj", "k_proj", "v_proj")}
                             if swapped else {"q_proj": inner.query, "k_proj": inner.key,
                                              "v_proj": inner.value}) | {"o_proj": dense},
                output=f"{name}.output.dense", heads=heads, kv_heads=heads, causal=False,
                prune=None if swapped else (
                    lambda kept, a=inner, o=dense: prune_bert_heads(a, o, kept)),
                unprunable="an arena mechanism swapped into a pretrained model" if swapped
                else "")
            first = getattr(getattr(layer, "intermediate", None), "dense", None)
            last = getattr(getattr(layer, "output", None), "dense", None)
            mlp = (first, last) if isinstance(first, nn.Linear) and isinstance(last, nn.Linear) \
                else None
            out.append(Block(index, parent_name, layer, dense.out_features, view, mlp))
        return out

    def output(self, result) -> torch.Tensor:
        return result.last_hidden_state

    # -- the workflows --------------------------------------------------------------------

    def describe(self) -> dict:
        return {"task": "sentence embeddings", "mixer": "softmax (pretrained)",
                "mixer_options": {}, "metric": "mean_cosine", "higher_is_better": True,
                "test_sentences": len(self.test)}

    def source_config(self) -> dict:
        return {"pretrained": self.encoder.source}

    def _batches(self, teacher, size, count, offset, device):
        """``count`` tokenized batches of ``size`` training sentences from ``offset`` on,
        with the teacher's embeddings (``target``) and a random probe for importance."""
        out = []
        sentences = self.train
        for index in range(count):
            start = (offset + index * size) % max(len(sentences) - size, 1)
            ids, mask = self.encoder.tokenize(sentences[start:start + size], max_length=128)
            ids, mask = ids.to(device), mask.to(device)
            with torch.no_grad():
                target = teacher.embed(ids, mask)
            probe = torch.randn(target.shape,
                                generator=torch.Generator().manual_seed(offset + index))
            out.append({"input_ids": ids, "attention_mask": mask, "target": target,
                        "probe": probe.to(device)})
        return out

    def compress_data(self, calibration: int, batch: int, device):
        """The loss calibration, sensitivity and distillation use is 1 - cosine to the
        uncompressed encoder's embedding of the same sentence. That loss is zero at the
        start, so head and neuron importance differentiate a fixed random projection of
        the embeddings instead (the first-order change of the embedding when a head is
        removed, E|d(r . e)/d xi|)."""
        teacher, encoder = self.encoder, self.encoder

        def embedding(model, b):
            states = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"])
            return encoder.pool(states.last_hidden_state, b["attention_mask"])

        def loss(model, b):
            return (1 - F.cosine_similarity(embedding(model, b), b["target"], dim=-1)).mean()

        return CompressData(
            calibration=self._batches(teacher, batch, calibration, 0, device), loss=loss,
            importance_loss=lambda model, b: (embedding(model, b) * b["probe"]).sum(),
            train_batch=lambda step: self._batches(teacher, batch, 1, 10**5 + step * batch,
                                                   device)[0],
            teacher=copy.deepcopy(teacher.model).eval(), seed=self.seed)

    def reference(self) -> torch.Tensor:
        """This encoder's embeddings of the held-out sentences (computed once)."""
        if self._reference is None:
            self._reference = self.encoder.encode(self.test)
        return self._reference

    def quality(self, teacher=None, device="cpu") -> dict:
        """Agreement with ``teacher`` (default: itself) on the held-out sentences, "test"
        being the mean cosine."""
        reference = (teacher or self).reference()
        measured = agreement(reference, self.encoder.encode(self.test))
        return {**measured, "test": measured["mean_cosine"]}

    def _forward_on_random_ids(self, size: int, length: int, device, seed=None):
        """A no-grad forward of the encoder on ``size`` random sequences of ``length``
        tokens (all real), drawn once: what is timed."""
        encoder = self.encoder.eval()
        generator = None if seed is None else torch.Generator(device).manual_seed(seed)
        ids = torch.randint(1, encoder.config.vocab_size, (size, length), device=device,
                            generator=generator)
        return torch.no_grad()(lambda: encoder(ids, torch.ones_like(ids)))

    def _positions(self):
        return getattr(self.encoder.config, "max_position_embeddings", None)

    def timing_cells(self, device, batch_sizes=(1, 32), length_factors=(1, 4)) -> dict:
        """Whole-encoder calls in the rows' layout: each batch size at the timed length
        ("model") and at it and 4x it within the encoder's positions ("blocks"; the encoder
        is its blocks but for the embedding lookup)."""
        length, limit = self.timed_length, self._positions() or 4 * self.timed_length
        cells = {}
        for factor in length_factors:
            if factor * length > limit:
                continue
            for size in batch_sizes:
                call = self._forward_on_random_ids(size, factor * length, device, seed=factor)
                cells[("blocks", str(factor), str(size))] = call
                if factor == 1:
                    cells[("model", str(size))] = call
        return cells

    # -- linearization --------------------------------------------------------------------

    finetunes_in_train_mode = False  # the encoder stays in eval mode (no dropout)

    def linearize_batches(self, stage: str, config, device) -> list:
        """Tokenized (ids, attention mask) batches cycling through the shuffled training
        sentences, stage 2 in another order than stage 1."""
        steps = config.transfer_steps if stage == "transfer" else config.finetune_steps
        seed = config.seed if stage == "transfer" else config.seed + 1
        return [(ids.to(device), keep.to(device)) for ids, keep in sentence_batches(
            self.encoder, self.train, config.batch_size, config.max_length, steps, seed)]

    def finetune_loss(self, teacher, batch) -> torch.Tensor:
        """Stage 2's loss: 1 - cosine to the teacher's sentence embeddings."""
        ids, keep = batch
        with torch.no_grad():
            target = teacher.encoder.embed(ids, keep)
        return (1 - F.cosine_similarity(self.encoder.embed(ids, keep), target, dim=-1)).mean()

    def length_cells(self, lengths, batch: int, device) -> dict:
        """{(length,): a no-grad forward of ``batch`` random sequences at that length}."""
        limit = self._positions()
        for length in lengths:
            if limit is not None and length > limit:
                raise ValueError(f"length {length} exceeds the model's {limit} positions")
        return {(str(n),): self._forward_on_random_ids(batch, n, device) for n in lengths}

    def check_takes_over(self, mechanism: str) -> None:
        check_swap(mechanism)

    def attention_module(self, index: int):
        """The mixer swapped into layer ``index`` (None while it is softmax)."""
        inner = self._layers()[index][1].self
        return inner.mixer if isinstance(inner, ArenaSelfAttention) else None

    def swap_attention(self, index: int, mechanism: str, options: dict) -> nn.Module:
        layer = self._layers()[index][1]
        if isinstance(layer.self, ArenaSelfAttention):
            raise ValueError(f"layer {index} is already swapped ({layer.self.mechanism})")
        layer.self = build_swapped(layer, mechanism, options)
        return layer.self.mixer

    def is_swapped(self, index: int, original: str = "softmax") -> bool:
        return isinstance(self._layers()[index][1].self, ArenaSelfAttention)

    def adapted_projections(self, index: int) -> list[str]:
        name = self._layers()[index][0]
        return [f"{name}.self.mixer.{p}" for p in ("q_proj", "k_proj", "v_proj")] + [
            f"{name}.output.dense"]

    def capture_attention(self, indices, batch) -> dict[int, tuple]:
        """{index: (hidden states in, key mask, attention output after the output projection)}
        of the layers at ``indices`` on one batch of (ids, attention mask)."""
        ids, keep = batch
        layers = [m for _, m in self._layers()]
        mask = None if bool(keep.bool().all()) else keep.bool()
        captured, handles = {}, []
        for index in indices:
            def hook(module, args, kwargs, output, index=index):
                hidden = args[0] if args else kwargs["hidden_states"]
                captured[index] = (hidden, mask, layers[index].output.dense(output[0]))
            handles.append(layers[index].self.register_forward_hook(hook, with_kwargs=True))
        try:
            with torch.no_grad():
                self.model(input_ids=ids, attention_mask=keep)
        finally:
            for handle in handles:
                handle.remove()
        return captured

    def attention_output(self, index: int, inputs, mask) -> torch.Tensor:
        layer = self._layers()[index][1]
        return layer.output.dense(layer.self(inputs, attention_mask=mask)[0])


__all__ = ["EncoderSubject", "attention_layers", "key_mask", "prune_bert_heads"]
