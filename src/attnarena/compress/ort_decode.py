"""Decoding in ONNX Runtime: a causal LM's one-token step as an ONNX graph whose state is
an explicit input and output.

``export_decoder(lm)`` traces one step of an arena ``CausalLM``: inputs ``token`` (B,)
ids, ``position`` (1,) its place in the sequence, and every layer's state; outputs the
next-token ``logits`` (B, vocab) and the states after the token. A softmax layer's state is
its keys and values (B, H, T, D), T growing by one a step (a window keeps the newest
``window``); any other decoding layer's state is the tensors of its ``step`` state (fixed
size for a linear-time mechanism: constant memory however long the context). The graph is
checked against the torch model's own ``step`` over several tokens, so a state field the
trace fixed (a Python int) that the math uses is caught, never shipped.

A pretrained decoder (``PretrainedDecoder``: SmolLM2 or a linearized copy) exports the
same way: ``position`` is the token's RoPE position, a softmax layer's state its keys and
values at ``kv_heads`` heads, a linearized layer's the tensors its core names
(``Core.tensor_state``: LoLCATs' window is kept oldest first, so no slot number is carried).
Prompts are unpadded.

``OrtDecoder.generate`` decodes greedily in ONNX Runtime alone (the prompt fed through the
step graph from the empty state); ``states_after`` gives the state after a prompt from the
torch model's prefill, for timing decoding at a long context.
"""
from __future__ import annotations

import copy
import dataclasses
import io

import numpy as np
import torch
from torch import nn

from attnarena.compress.ort import OPSET, TOLERANCE, _error, _first_line, _quiet_trace, session
from attnarena.mixers.softmax import KVCache


# -- a state's tensors --------------------------------------------------------------------

def state_tensors(state) -> list[torch.Tensor]:
    """The tensors of a decoding state (a tensor, dict, list, tuple or dataclass of them),
    in a fixed order; other fields (ints, None) are not among them."""
    if isinstance(state, torch.Tensor):
        return [state]
    if isinstance(state, dict):
        return [t for key in sorted(state) for t in state_tensors(state[key])]
    if isinstance(state, (list, tuple)):
        return [t for item in state for t in state_tensors(item)]
    if dataclasses.is_dataclass(state) and not isinstance(state, type):
        return [t for f in dataclasses.fields(state) for t in state_tensors(getattr(state, f.name))]
    return []


def with_tensors(template, tensors: list):
    """``template`` with its tensors replaced, in ``state_tensors`` order, by ``tensors``
    (consumed from the front)."""
    if isinstance(template, torch.Tensor):
        return tensors.pop(0)
    if isinstance(template, dict):
        out = dict(template)
        for key in sorted(template):
            out[key] = with_tensors(template[key], tensors)
        return out
    if isinstance(template, (list, tuple)):
        items = [with_tensors(item, tensors) for item in template]
        return type(template)(items) if isinstance(template, list) else tuple(items)
    if dataclasses.is_dataclass(template) and not isinstance(template, type):
        out = copy.copy(template)
        for f in dataclasses.fields(template):
            setattr(out, f.name, with_tensors(getattr(template, f.name), tensors))
        return out
    return template


# -- the step as a module -----------------------------------------------------------------

class _Step(nn.Module):
    """One token through the LM with every layer's state as flat tensors."""

    def __init__(self, lm, templates):
        super().__init__()
        self.lm, self.templates = lm, templates
        self.kv = [isinstance(t, KVCache) for t in templates]
        self.counts = [2 if kv else len(state_tensors(t)) for kv, t in zip(self.kv, templates)]
        # per flat state tensor: whether its axis 2 grows a token a step (a KV cache's)
        self.grows = [kv for kv, count in zip(self.kv, self.counts) for _ in range(count)]

    def forward(self, token, position, *flat):
        lm = self.lm
        x = lm.embed(token.long())
        if lm.positions is not None:
            x = x + lm.positions.table.index_select(0, position).to(x.dtype)
        x = lm.drop(x)
        out, start = [], 0
        for block, kv, count, template in zip(lm.blocks, self.kv, self.counts, self.templates):
            parts = list(flat[start:start + count])
            start += count
            if kv:
                x, parts = _kv_step(block, x, position, *parts)
            else:
                x, state = block.step(x, with_tensors(template, list(parts)))
                parts = state_tensors(state)
            out += parts
        return (lm.head(lm.norm(x)), *out)


def _kv_step(block, x, position, past_k, past_v):
    """A softmax layer's step on a KV cache held as two growing tensors (the block's norm,
    projections and MLP around its mixer's ``step_on_tensors``)."""
    y, keys, values = block.mixer.step_on_tensors(block.down(block.norm1(x)), past_k, past_v,
                                                  position)
    return block._finish(x, block.up(y)), [keys, values]


def _graph_state(template) -> list[torch.Tensor]:
    """A layer's state as the graph takes it: a KV cache's keys and values (what it holds,
    not its buffers), else the state's tensors."""
    if isinstance(template, KVCache):
        return [template.keys(), template.values()]
    return state_tensors(template)


class _PretrainedStep(nn.Module):
    """One token through a ``PretrainedDecoder`` with every layer's state as flat tensors
    (each layer's core steps on its own tensors: ``Core.tensor_step``)."""

    def __init__(self, decoder, counts):
        super().__init__()
        self.model, self.counts = decoder.model, counts

    def forward(self, token, position, *flat):
        from attnarena.pretrained.llama import decoder_layers

        inner = self.model.model
        x = inner.embed_tokens(token.long()[:, None])
        rope = inner.rotary_emb(x, position[None])
        out, start = [], 0
        for layer, count in zip(decoder_layers(self.model), self.counts):
            parts = flat[start:start + count]
            start += count
            attention = layer.self_attn
            q, k, v, raw_k = attention.project(layer.input_layernorm(x), *rope)
            o, parts = attention.core.tensor_step(q, k, v, raw_k, *parts)
            x = x + attention.output(o, x.dtype)
            x = x + layer.mlp(layer.post_attention_layernorm(x))
            out += parts
        return (self.model.lm_head(inner.norm(x))[:, 0], *out)


class _ArenaLM:
    """What exporting a step needs of an arena ``CausalLM``."""

    def __init__(self, lm):
        self.lm, self.vocab = lm, lm.vocab_size

    def refusal(self):
        from attnarena.stack import stack_decodes

        return None if stack_decodes(self.lm.mixer) else \
            "has a layer without a recurrent form: it has no step to export"

    def prefill(self, prompt):
        return prefill(self.lm, prompt)

    def step(self, token, position, states):
        return torch_step(self.lm, token, position, states)

    def fresh(self, tokens):
        """The logits of ``tokens`` decoded from the empty state, one a position."""
        states = [block.mixer.init_state(tokens[0].shape[0]) for block in self.lm.blocks]
        return [torch_step(self.lm, t, i, states) for i, t in enumerate(tokens)]

    def tensors(self, states):
        return [t for s in states for t in _graph_state(s)]

    def module(self, templates):
        step = _Step(self.lm, templates)
        return step, step.grows


class _PretrainedLM:
    """What exporting a step needs of a ``PretrainedDecoder`` (its cores' tensor states)."""

    def __init__(self, decoder):
        self.decoder, self.vocab = decoder, decoder.config.vocab_size
        self.cores = [a.core for a in decoder.attentions()]

    def refusal(self):
        return None

    def prefill(self, prompt):
        hidden, state = self.decoder.run(prompt, want_state=True)
        return self.decoder.model.lm_head(hidden[:, -1]), state["layers"]

    @torch.no_grad()
    def step(self, token, position, states):
        """The logits of one token; ``states`` (one per layer) advanced in place."""
        where = torch.full((token.shape[0],), position, dtype=torch.long)
        hidden, state = self.decoder.run(token[:, None], state={"layers": states,
                                                                "position": where})
        states[:] = state["layers"]
        return self.decoder.model.lm_head(hidden[:, -1])

    def fresh(self, tokens):
        logits, states = self.prefill(tokens[0][:, None])
        return [logits] + [self.step(t, i + 1, states) for i, t in enumerate(tokens[1:])]

    def tensors(self, states):
        return [t for core, s in zip(self.cores, states) for t in core.tensor_state(s)]

    def module(self, templates):
        counts = [len(core.tensor_state(s)) for core, s in zip(self.cores, templates)]
        return (_PretrainedStep(self.decoder, counts),
                [g for core in self.cores for g in core.tensor_grows()])


def _adapter(model):
    from attnarena.models.lm import CausalLM

    if isinstance(model, CausalLM):
        return _ArenaLM(model)
    if hasattr(model, "attentions") and hasattr(model, "run"):  # a PretrainedDecoder
        return _PretrainedLM(model)
    raise ValueError(f"a decoding step graph is exported from an arena CausalLM or a "
                     f"pretrained decoder, not a {type(model).__name__}")


class OrtDecoder:
    """A causal LM's step graph in ONNX Runtime (see the module's docstring). ``layout``
    says, per state tensor, its shape (axis 0 the batch), dtype and whether its axis 2
    grows a token a step (a KV cache's)."""

    def __init__(self, graph: bytes, layout: list[dict], threads: int | None = None):
        self.graph, self.layout, self.threads = graph, layout, threads
        self.names = [f"state_{i}" for i in range(len(layout))]
        self.session = session(graph, threads)
        # a state tensor the step never reads (a counter) is not among the graph's inputs
        self.inputs = {i.name for i in self.session.get_inputs()}

    def empty_states(self, batch: int) -> list[np.ndarray]:
        """The states before the first token, for a batch of ``batch``."""
        out = []
        for entry in self.layout:
            shape = [batch, *entry["shape"][1:]]
            if entry["grows"]:
                shape[2] = 0
            out.append(np.zeros(shape, entry["dtype"]))
        return out

    def step(self, token, position: int, states: list) -> tuple[np.ndarray, list]:
        """(logits (B, vocab), states after) of one token (B,) at ``position``."""
        feeds = {"token": np.asarray(token, np.int64),
                 "position": np.array([position], np.int64)}
        feeds.update((n, s) for n, s in zip(self.names, states) if n in self.inputs)
        logits, *after = self.session.run(None, feeds)
        return logits, after

    def generate(self, prompt, max_new_tokens: int) -> torch.Tensor:
        """Greedy continuation of ``prompt`` (B, P) in ONNX Runtime alone."""
        prompt = torch.as_tensor(prompt)
        states = self.empty_states(prompt.shape[0])
        tokens = prompt.numpy().astype(np.int64)
        for position in range(prompt.shape[1]):
            logits, states = self.step(tokens[:, position], position, states)
        out = [tokens]
        for i in range(max_new_tokens):
            token = logits.argmax(-1)
            out.append(token[:, None])
            if i < max_new_tokens - 1:
                logits, states = self.step(token, prompt.shape[1] + i, states)
        return torch.from_numpy(np.concatenate(out, 1))

    def int8(self) -> "OrtDecoder":
        """The same step with its weight products in int8 (``ort_int8``'s quantization)."""
        from attnarena.compress.ort import int8_dynamic

        return OrtDecoder(int8_dynamic(self.graph), self.layout, self.threads)

    def save(self, folder) -> None:
        """``step.onnx`` and ``step.json`` (the state layout) in ``folder``."""
        import json
        from pathlib import Path

        (Path(folder) / STEP_FILE).write_bytes(self.graph)
        (Path(folder) / LAYOUT_FILE).write_text(json.dumps({"states": self.layout}, indent=2))

    @classmethod
    def load(cls, folder, threads: int | None = None) -> "OrtDecoder":
        import json
        from pathlib import Path

        try:
            graph = (Path(folder) / STEP_FILE).read_bytes()
            layout = json.loads((Path(folder) / LAYOUT_FILE).read_text())["states"]
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise ValueError(f"no decoding step graph in {folder}: {error}") from None
        return cls(graph, layout, threads)


STEP_FILE, LAYOUT_FILE = "step.onnx", "step.json"


@torch.no_grad()
def prefill(lm, prompt) -> tuple[torch.Tensor, list]:
    """(the next-token logits, every layer's torch state) after the prefill of ``prompt``
    (B, P) by the torch model."""
    x = lm._embed(prompt)
    states = []
    for block in lm.blocks:
        x, state = block.prefill(x)
        states.append(state)
    return lm.head(lm.norm(x[:, -1])), states


@torch.no_grad()
def torch_step(lm, token, position: int, states: list) -> torch.Tensor:
    """The torch model's own step of ``token`` (B,) at ``position``: the logits; ``states``
    (one per layer) are advanced in place."""
    h = lm._embed(token[:, None], offset=position)[:, 0]
    for j, block in enumerate(lm.blocks):
        h, states[j] = block.step(h, states[j])
    return lm.head(lm.norm(h))


def graph_states(model, states: list) -> list[np.ndarray]:
    """The torch decoding states of ``model`` (a CausalLM's, one per layer, or a pretrained
    decoder's layer states) as its step graph takes them."""
    return [t.numpy() for t in _adapter(model).tensors(states)]


@torch.no_grad()
def states_after(model, prompt) -> tuple[torch.Tensor, list]:
    """(the next-token logits, every layer's state as the step graph takes it) after the
    torch prefill of ``prompt`` (B, P) by ``model`` (a CausalLM or a pretrained decoder)."""
    logits, states = _adapter(model).prefill(prompt)
    return logits, graph_states(model, states)


@torch.no_grad()
def export_decoder(lm, *, batch: int = 2, prompt_length: int = 5, check_steps: int = 4,
                   name: str = "the model") -> OrtDecoder:
    """The step graph of ``lm`` (an arena ``CausalLM`` or a ``PretrainedDecoder``); a
    ValueError naming ``name`` and the reason when a layer cannot decode, the export fails,
    or the graph's logits differ from the torch model's own step over ``check_steps`` tokens
    after a prompt and over the first tokens of a sequence."""
    adapter = _adapter(lm)
    refusal = adapter.refusal()
    if refusal:
        raise ValueError(f"{name} {refusal}")
    lm.eval()
    generator = torch.Generator().manual_seed(0)
    prompt = torch.randint(0, adapter.vocab, (batch, prompt_length), generator=generator)
    _, templates = adapter.prefill(prompt)
    step, grows = adapter.module(templates)
    flat = [t.clone() for t in adapter.tensors(templates)]
    names = [f"state_{i}" for i in range(len(flat))]
    tokens = [torch.randint(0, adapter.vocab, (batch,), generator=generator)
              for _ in range(check_steps)]
    position = torch.tensor([prompt_length])
    # the torch model's own steps, from copies of the prompt's states
    expected, states = [], copy.deepcopy(templates)
    for i, t in enumerate(tokens):
        expected.append(adapter.step(t, prompt_length + i, states))
    buffer = io.BytesIO()
    axes = {"token": {0: "batch"}}
    for n, grown in zip(names, grows):
        axes[n] = {0: "batch", 2: "past"} if grown else {0: "batch"}
        axes[f"next_{n}"] = {0: "batch", 2: "past_and_one"} if grown else {0: "batch"}
    axes["logits"] = {0: "batch"}
    try:
        with _quiet_trace():
            torch.onnx.export(step, (tokens[0], position, *flat), buffer,
                              input_names=["token", "position", *names],
                              output_names=["logits", *[f"next_{n}" for n in names]],
                              dynamic_axes=axes, opset_version=OPSET, dynamo=False)
    except Exception as error:  # torch's exporter raises many kinds
        raise ValueError(f"{name}'s decoding step cannot be exported to ONNX: "
                         f"{_first_line(error)}") from None
    layout = [{"shape": list(t.shape), "dtype": str(t.numpy().dtype), "grows": grown}
              for t, grown in zip(flat, grows)]
    try:
        decoder = OrtDecoder(buffer.getvalue(), layout)
    except Exception as error:  # onnxruntime's own exception types
        raise ValueError(f"{name}'s decoding step exports to ONNX, but ONNX Runtime refuses "
                         f"the graph: {_first_line(error)}") from None
    # and from the empty state: the first tokens of a sequence
    runs = [(prompt_length, [t.numpy() for t in adapter.tensors(templates)], expected,
             "after the prompt"),
            (0, decoder.empty_states(batch), adapter.fresh(tokens[:2]), "of a sequence")]
    for start, states, references, where in runs:
        for i, (t, reference) in enumerate(zip(tokens, references)):
            try:
                logits, states = decoder.step(t.numpy(), start + i, states)
            except Exception as error:  # onnxruntime's own exception types
                raise ValueError(f"{name}'s decoding step exports to ONNX, but ONNX Runtime "
                                 f"cannot run it: {_first_line(error)}") from None
            worst = _error([reference], [logits])
            if not worst <= TOLERANCE:
                raise ValueError(
                    f"{name}'s decoding step exports to ONNX, but its logits differ from the "
                    f"model's step at token {i + 1} {where} (largest error {worst:.2g} of "
                    f"their scale, over {TOLERANCE:g}): the trace fixed part of the state")
    return decoder
