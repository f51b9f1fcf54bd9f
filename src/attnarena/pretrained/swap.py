"""Swap the self-attention of a BERT-family ``transformers`` model for arena mechanisms.

Each chosen layer's self-attention module is replaced by ``ArenaSelfAttention``: an arena
mixer whose query, key and value projections *are* the pretrained ones (the same
``nn.Linear`` modules). The output projection stays where the model keeps it (BERT's
``attention.output.dense``, followed by its residual and LayerNorm), so the mixer's own
``o_proj`` becomes the identity. Gates, feature maps and other parameters a mechanism
adds are new. Module replacement keeps ``save_pretrained`` working: the state dict holds
the pretrained weights under the mixer's names, and ``PretrainedEncoder.save`` writes the
swap record that ``load_pretrained`` uses to rebuild the same modules.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from attnarena.extras import require
from attnarena.mixers.takeover import mixer_taking_over
from attnarena.registry import check_mixer_options, create_mixer, list_mixers, mixer_info
from attnarena.subject import resolve_layers

SWAP_FILE = "attnarena_swap.json"  # written beside a saved model whose attention was swapped

def attention_layers(model) -> list[nn.Module]:
    """The self-attention blocks of a BERT-family model, in layer order: modules with a
    ``self`` part (the attention, with ``query``/``key``/``value`` maps, or an arena mixer
    already swapped in) and an ``output.dense`` projection. Cross-attention blocks of
    decoders are left out."""
    found = []
    for module in model.modules():
        inner = getattr(module, "self", None)
        dense = getattr(getattr(module, "output", None), "dense", None)
        if (isinstance(inner, nn.Module) and isinstance(dense, nn.Linear)
                and not getattr(module, "is_cross_attention", False)
                and (isinstance(inner, ArenaSelfAttention) or all(
                    isinstance(getattr(inner, n, None), nn.Linear)
                    for n in ("query", "key", "value")))):
            found.append(module)
    return found


def swappable_mixers() -> list[str]:
    """Mechanisms that can take over pretrained attention weights in a bidirectional
    encoder."""
    return [n for n in list_mixers() if mixer_info(n).reuses_attention_weights
            and "self" in mixer_info(n).patterns]


def key_mask(attention_mask, length: int):
    """A (B, L) bool mask of real tokens (None when all are real) from the mask a
    transformers model hands its attention: None, a (B, L) 0/1 mask, or a (B, 1, Lq, Lk)
    boolean or additive mask. A key is real when some query may attend it."""
    if attention_mask is None:
        return None
    m = attention_mask
    if m.dim() == 2:
        keep = m.bool()
    else:
        allowed = m if m.dtype == torch.bool else m > torch.finfo(m.dtype).min / 2
        keep = allowed.any(dim=-2).reshape(m.shape[0], -1)[:, -length:]
    return None if bool(keep.all()) else keep


class ArenaSelfAttention(nn.Module):
    """An arena mixer standing in for a pretrained model's self-attention. It returns the
    per-token mixed values before the output projection, as the module it replaces does.

    Attributes:
        mixer: the arena mixer (its q/k/v projections are the pretrained ones).
        mechanism, options: what ``create_mixer`` was given (the swap record).
    """

    def __init__(self, mixer, mechanism: str, options: dict):
        super().__init__()
        self.mixer, self.mechanism, self.options = mixer, mechanism, dict(options)

    def forward(self, hidden_states, attention_mask=None, **kwargs):
        if kwargs.get("encoder_hidden_states") is not None:
            raise ValueError("arena mechanisms swapped into a pretrained model serve its "
                             "self-attention only, not cross attention")
        keep = key_mask(attention_mask, hidden_states.shape[1])
        return self.mixer(hidden_states, mask=keep), None


def check_swap(mechanism: str, options: dict | None = None) -> None:
    """ValueError unless ``mechanism`` (with ``options``) can stand in for a pretrained
    encoder's self-attention: a known name that takes over the projections, bidirectional,
    options it accepts."""
    info = mixer_info(mechanism)
    if not info.reuses_attention_weights:
        raise ValueError(f"mixer {mechanism!r} cannot reuse a pretrained attention's query, "
                         "key, value and output weights (it has no such projections); "
                         f"mixers that can: {', '.join(swappable_mixers())}")
    if "self" not in info.patterns:
        raise ValueError(f"mixer {mechanism!r} does not support the 'self' pattern (it is "
                         f"{', '.join(sorted(info.patterns))} only), which an encoder needs")
    check_mixer_options(mechanism, dict(options or {}))


def build_swapped(block, mechanism: str, options: dict | None = None) -> ArenaSelfAttention:
    """An ``ArenaSelfAttention`` for one attention block, sharing its q/k/v weights."""
    options = dict(options or {})
    check_swap(mechanism, options)
    inner = block.self
    width = inner.query.in_features
    heads = getattr(inner, "num_attention_heads", None)
    if inner.query.out_features != width or heads is None:
        raise ValueError("expected a self-attention with square query/key/value maps and a "
                         f"num_attention_heads attribute, got {type(inner).__name__}")
    mixer, settings = mixer_taking_over(
        mechanism, {"q_proj": inner.query, "k_proj": inner.key, "v_proj": inner.value},
        heads=heads, causal=False, options=options)
    mixer.o_proj = nn.Identity()  # the block's output.dense applies it
    return ArenaSelfAttention(mixer, mechanism, settings)


def swap_attention(model, mechanism: str, *, layers=None, keep_softmax=(),
                   **options) -> list[int]:
    """Replace the self-attention of ``layers`` (default: all) of a BERT-family model by
    the arena mechanism ``mechanism``, except the layers in ``keep_softmax``; returns the
    indices swapped. ``softmax`` reproduces the original model.

    Raises:
        ValueError: a mechanism that cannot reuse the pretrained projections, a layer
            index out of range, options the mechanism does not take.
    """
    blocks = attention_layers(model)
    if not blocks:
        raise ValueError(f"found no BERT-style self-attention (query/key/value and "
                         f"output.dense) in {type(model).__name__}")
    check_swap(mechanism, options)
    chosen = resolve_layers(len(blocks), layers, keep_softmax)
    for index in chosen:
        if isinstance(blocks[index].self, ArenaSelfAttention):
            raise ValueError(f"layer {index} is already swapped "
                             f"({blocks[index].self.mechanism})")
    for index in chosen:
        blocks[index].self = build_swapped(blocks[index], mechanism, options)
    return chosen


def swap_record(model) -> dict:
    """Which layers hold which arena mechanism, as plain data."""
    layers = {}
    for index, block in enumerate(attention_layers(model)):
        if isinstance(block.self, ArenaSelfAttention):
            layers[str(index)] = {"mixer": block.self.mechanism,
                                  "options": block.self.options}
    return {"layers": layers}


def check_swap_record(record, layers: int, where, *, check=None) -> dict[int, dict]:
    """The swaps of a record read from a file, as {layer index: {"mixer", "options"}}, or one
    ValueError naming ``where`` and what is wrong; ``check(mixer, options)`` refuses what
    cannot be swapped in (default ``check_swap``, an encoder's)."""
    check = check or check_swap
    def refuse(problem):
        raise ValueError(f"{where}: {problem}")

    if not isinstance(record, dict) or not isinstance(record.get("layers", {}), dict):
        refuse("expected {\"layers\": {\"INDEX\": {\"mixer\": NAME, \"options\": {...}}}}")
    out = {}
    for key, entry in record.get("layers", {}).items():
        if not (isinstance(key, str) and key.isdigit() and int(key) < layers):
            refuse(f"layer {key!r} is not a layer index of this {layers}-layer model")
        if not isinstance(entry, dict) or not isinstance(entry.get("mixer"), str) \
                or not isinstance(entry.get("options"), dict):
            refuse(f"layer {key}: expected {{\"mixer\": NAME, \"options\": {{...}}}}, got "
                   f"{str(entry)[:80]}")
        try:
            check(entry["mixer"], entry["options"])
        except ValueError as error:
            refuse(f"layer {key}: {error}")
        out[int(key)] = entry
    return out


MAX_GROWTH = 64  # a swapped layer may hold this many times the values of a width^2 matrix


def _check_size(mechanism, options, width, heads, where) -> None:
    """Refuse options that would build a layer far larger than the attention it replaces
    (a record asking for a billion features), counted on the meta device, allocating
    nothing."""
    settings = {**dict(mixer_info(mechanism).pretrained_options or ()), **options}
    try:
        with torch.device("meta"):
            probe = create_mixer(mechanism, dim=width, heads=heads, causal=False, **settings)
    except (ValueError, TypeError) as error:
        raise ValueError(f"{where}: {error}") from None
    except (RuntimeError, NotImplementedError):
        return  # a mixer that cannot be built on the meta device: built for real later
    values = sum(t.numel() for t in [*probe.parameters(), *probe.buffers()])
    if values > MAX_GROWTH * width * width:
        raise ValueError(f"{where}: {mechanism} with options {options} would hold "
                         f"{values:,} values in one layer, over {MAX_GROWTH} times a "
                         f"{width} x {width} attention projection; refused")


def restore_swapped(directory: Path, record: dict):
    """The model saved in ``directory`` with the swaps of ``record`` rebuilt, then every
    saved weight loaded (strictly)."""
    transformers = require("transformers")
    config = transformers.AutoConfig.from_pretrained(directory, trust_remote_code=False)
    model = transformers.AutoModel.from_config(config, attn_implementation="sdpa",
                                               trust_remote_code=False)
    blocks = attention_layers(model)
    where = Path(directory) / SWAP_FILE
    for index, entry in check_swap_record(record, len(blocks), where).items():
        width = blocks[index].self.query.weight.shape[1]
        _check_size(entry["mixer"], entry["options"], width,
                    blocks[index].self.num_attention_heads, where)
        blocks[index].self = build_swapped(blocks[index], entry["mixer"], entry["options"])
    load_weights(model, directory)
    return model.eval()


def load_weights(model, directory) -> None:
    """Load every ``.safetensors`` file of ``directory`` into ``model``, strictly but for an
    output head tied to the embeddings (saved once)."""
    safetensors = require("safetensors.torch", "loading saved models")
    files = sorted(Path(directory).glob("*.safetensors"))
    if not files:
        raise ValueError(f"no .safetensors weights in {directory}")
    state = {}
    for file in files:
        state.update(safetensors.load_file(str(file)))
    missing, unexpected = model.load_state_dict(state, strict=False)
    if getattr(model.config, "tie_word_embeddings", False):
        model.tie_weights()
        tied = {n for n, p in model.named_parameters(remove_duplicate=False)
                if any(p is q for k, q in model.named_parameters() if k in state and k != n)}
        missing = [m for m in missing if m not in tied]
    if unexpected or missing:
        raise ValueError(f"the weights in {directory} do not fit the recorded model: "
                         f"missing {missing[:5]}, unexpected {unexpected[:5]}")
