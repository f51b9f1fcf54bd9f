"""What every layer may read from text: dtype names, ``key=value`` options and mixer specs
(``name:key=value``), each checked with a message that names what was given."""
from __future__ import annotations

import json
from dataclasses import dataclass

import torch

from attnarena.registry import check_mixer_options, mixer_info

DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16,
          "float16": torch.float16}


def parse_options(pairs, where: str = "") -> dict:
    """["key=value", ...] -> {key: value}; values read as JSON when they parse, else text."""
    options = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise ValueError(f"option {pair!r}{where} must look like key=value")
        key, raw = pair.split("=", 1)
        try:
            value = json.loads(raw)
        except (json.JSONDecodeError, RecursionError):
            value = raw
        if key in options:
            raise ValueError(f"option {key!r}{where} is given twice ({options[key]!r} and "
                             f"{value!r}); give it once")
        options[key] = value
    return options


@dataclass(frozen=True)
class MixerSpec:
    """A mixer name with options, written ``name:key=value:key=value`` on the command line."""

    name: str
    options: tuple = ()

    @classmethod
    def parse(cls, text: str) -> "MixerSpec":
        name, *pairs = text.strip().split(":")
        mixer_info(name)  # unknown names fail here, listing the valid ones
        options = parse_options(pairs, where=f" in {text!r}")
        check_mixer_options(name, options, where=f" in {text!r}")
        return cls(name, tuple(options.items()))

    @property
    def label(self) -> str:
        return ":".join([self.name] + [f"{k}={v}" for k, v in self.options])


def parse_mixers(text: str | list) -> list[MixerSpec]:
    """"a,b:key=value" (or a list of such items) -> [MixerSpec, ...], at least one."""
    items = text.split(",") if isinstance(text, str) else list(text)
    specs = [MixerSpec.parse(item) for item in items if str(item).strip()]
    if not specs:
        raise ValueError("no mixers given")
    return specs
