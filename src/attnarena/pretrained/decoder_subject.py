"""A Llama-family causal language model as a subject of linearization (see
``attnarena.subject``): each layer's attention has ``q_proj``/``k_proj``/``v_proj``/``o_proj``
with fewer key/value heads than query heads; its MLP is gated (``gate_proj``, ``up_proj``,
``down_proj``); its forward returns logits.

Built around a ``PretrainedDecoder`` with token streams of training and held-out text, the
subject gives linearization its data (windows of ``max_length`` tokens at random offsets),
its stage 2 loss (next-token cross-entropy) and quality measure (perplexity at each measured
context over the first ``tokens`` held-out tokens, and next-token top-1 agreement with the
original), and what is timed (a forward pass over random ids, the prefill)."""
from __future__ import annotations

import random

import torch
import torch.nn.functional as F
from torch import nn

from attnarena.pretrained.llama import (
    DecoderAttention,
    check_decoder_swap,
    decoder_layers,
)
from attnarena.pretrained.subject import PretrainedSubject
from attnarena.subject import Attention, Block, register_subject


def token_stream(tokenizer, documents) -> torch.Tensor:
    """The documents as one stream of token ids (1-D long), separated by the end token."""
    ids = []
    for doc in documents:
        ids.extend(tokenizer(doc, add_special_tokens=False)["input_ids"])
        if tokenizer.eos_token_id is not None:
            ids.append(tokenizer.eos_token_id)
    return torch.tensor(ids, dtype=torch.long)


@register_subject
class DecoderSubject(PretrainedSubject):
    """A Llama-family causal LM: ``model`` is the transformers model, ``decoder`` (optional)
    the ``PretrainedDecoder`` around it that the workflows use."""

    kind = "Llama-family causal LM"
    wrapper = "decoder"
    seed = 0
    finetunes_in_train_mode = False

    def __init__(self, model: nn.Module, decoder=None, *, train=None, test=None,
                 contexts=(512, 2048), tokens: int = 4096, length: int = 512):
        super().__init__(model)
        self.decoder = decoder
        self.train_ids, self.test_ids = train, test
        self.contexts, self.tokens, self.timed_length = tuple(contexts), tokens, length

    @classmethod
    def of(cls, decoder, **corpus) -> "DecoderSubject":
        """The subject of a ``PretrainedDecoder``; ``train``, ``test``: 1-D token streams
        (``token_stream``); ``contexts``: the contexts perplexity is measured at over the
        first ``tokens`` held-out tokens."""
        return cls(decoder.model, decoder, **corpus)

    @classmethod
    def accepts(cls, model) -> bool:
        return isinstance(model, nn.Module) and bool(decoder_layers(model)) \
            and isinstance(getattr(model, "lm_head", None), nn.Linear)

    # -- structure ------------------------------------------------------------------------

    def _names(self) -> list[str]:
        names = {id(m): n for n, m in self.model.named_modules()}
        return [names[id(layer)] for layer in decoder_layers(self.model)]

    def blocks(self) -> list[Block]:
        out = []
        for index, (name, layer) in enumerate(zip(self._names(), decoder_layers(self.model))):
            attention = layer.self_attn
            mechanism = getattr(attention, "mechanism", "softmax")
            config = self.model.config
            view = Attention(
                name=f"{name}.self_attn", mechanism=mechanism,
                projections={p: getattr(attention, p)
                             for p in ("q_proj", "k_proj", "v_proj", "o_proj")},
                output=f"{name}.self_attn.o_proj", heads=config.num_attention_heads,
                kv_heads=config.num_key_value_heads, causal=True, prune=None,
                unprunable="the heads of a grouped-query decoder are pruned with their "
                           "key/value group, which is not supported")
            out.append(Block(index, name, layer, config.hidden_size, view, None))
        return out

    def output(self, result) -> torch.Tensor:
        return result if isinstance(result, torch.Tensor) else result.logits

    def output_layers(self) -> set[str]:
        return {"lm_head"}

    # -- rows -----------------------------------------------------------------------------

    def describe(self) -> dict:
        return {"task": "language modelling", "mixer": "softmax (pretrained)",
                "mixer_options": {}, "metric": "perplexity", "higher_is_better": False}

    def source_config(self) -> dict:
        return {"pretrained": self.decoder.source}

    def linearize_fields(self) -> dict:
        return {"train_tokens": int(self.train_ids.numel()), "eval_tokens": self.tokens,
                "contexts": list(self.contexts)}

    def identity(self) -> tuple:
        return (self.contexts, self.tokens, self.timed_length)

    def quality(self, teacher=None, device="cpu") -> dict:
        """Perplexity on held-out text at each context and, beside a teacher, top-1
        agreement with it; "test" is the perplexity at the first context."""
        out = {}
        for context in self.contexts:
            measured = self.decoder.perplexity(
                self.test_ids, context=context, tokens=self.tokens,
                teacher=None if teacher is None or teacher is self else teacher.decoder)
            out[f"perplexity_{context}"] = measured["perplexity"]
            if "top1_agreement" in measured:
                out[f"top1_agreement_{context}"] = measured["top1_agreement"]
            elif teacher is None or teacher is self:
                out[f"top1_agreement_{context}"] = 1.0
        out["test"] = out[f"perplexity_{self.contexts[0]}"]
        return out

    # -- linearization --------------------------------------------------------------------

    def _layer(self, index):
        return decoder_layers(self.model)[index]

    def check_takes_over(self, mechanism: str) -> None:
        check_decoder_swap(mechanism)

    def swap_attention(self, index: int, mechanism: str, options: dict) -> nn.Module:
        layer = self._layer(index)
        if self.is_swapped(index):
            raise ValueError(f"layer {index} is already swapped ({layer.self_attn.mechanism})")
        layer.self_attn = DecoderAttention(layer.self_attn, mechanism, options,
                                           rotary=self.model.model.rotary_emb)
        return layer.self_attn

    def unswap_attention(self, index: int) -> None:
        """Put softmax attention back in layer ``index`` (its projections as they are)."""
        layer = self._layer(index)
        layer.self_attn = DecoderAttention(layer.self_attn, "softmax",
                                           rotary=self.model.model.rotary_emb)

    def is_swapped(self, index: int, original: str = "softmax") -> bool:
        return getattr(self._layer(index).self_attn, "mechanism", "softmax") != "softmax"

    def attention_module(self, index: int):
        return self._layer(index).self_attn if self.is_swapped(index) else None

    def adapted_projections(self, index: int) -> list[str]:
        name = self._names()[index]
        return [f"{name}.self_attn.{p}" for p in ("q_proj", "k_proj", "v_proj", "o_proj")]

    def capture_attention(self, indices, batch) -> dict[int, tuple]:
        """{index: (the attention's input, None, its output)} on one batch of token
        windows (no padding)."""
        captured = dict.fromkeys(indices)
        with torch.no_grad():
            self.decoder.run(batch, capture=captured)
        return {i: (inputs, None, output) for i, (inputs, output) in captured.items()}

    def attention_output(self, index: int, inputs, mask) -> torch.Tensor:
        attention = self._layer(index).self_attn
        return attention.sequence(inputs, attention.positions(inputs, mask), mask)[0]

    def linearize_batches(self, stage: str, config, device) -> list:
        """``steps`` batches of ``batch_size`` windows of ``max_length`` training tokens
        at random offsets (stage 2 drawn with another seed than stage 1)."""
        steps = config.transfer_steps if stage == "transfer" else config.finetune_steps
        rng = random.Random(config.seed if stage == "transfer" else config.seed + 1)
        length = config.max_length
        top = self.train_ids.numel() - length
        if top < 1:
            raise ValueError(f"the training text holds {self.train_ids.numel()} tokens, fewer "
                             f"than max_length {length}")
        return [torch.stack([self.train_ids[s:s + length] for s in
                             (rng.randrange(top) for _ in range(config.batch_size))]).to(device)
                for _ in range(steps)]

    def finetune_loss(self, teacher, batch) -> torch.Tensor:
        """Stage 2's loss: next-token cross-entropy on the training text."""
        logits = self.decoder(batch)[:, :-1]
        return F.cross_entropy(logits.flatten(0, 1), batch[:, 1:].flatten())

    def length_cells(self, lengths, batch: int, device) -> dict:
        """{(length,): a no-grad forward (the prefill) of ``batch`` random sequences}."""
        cells = {}
        for length in lengths:
            if length > self.decoder.context:
                raise ValueError(f"length {length} exceeds the model's {self.decoder.context} "
                                 "positions")
            ids = torch.randint(0, self.model.config.vocab_size, (batch, length),
                                generator=torch.Generator().manual_seed(length)).to(device)
            cells[(str(length),)] = torch.no_grad()(
                lambda ids=ids: self.decoder.run(ids, want_state=True))
        return cells


__all__ = ["DecoderSubject", "token_stream"]
