"""The mixer registry: names -> mixer classes, with what each one supports.

A mixer class registers itself with ``@register_mixer(...)``; ``create_mixer`` builds one by
name and validates its options against the class's constructor.
"""
from __future__ import annotations

import fnmatch
import inspect
from dataclasses import dataclass

from attnarena._validate import check_int, check_options, look_up

PATTERNS = ("self", "causal", "cross", "causal_cross")
FORMS = ("parallel", "chunk", "recurrent")


@dataclass(frozen=True)
class MixerInfo:
    """What a registered mechanism is and what it supports.

    Attributes:
        name: registry name, e.g. ``"linear"``.
        family: the group of related mechanisms, e.g. ``"linear attention"``.
        paper: the paper the mechanism comes from (authors, year, title).
        complexity: time complexity of the training forward, in L (length) and D (width).
        patterns: subset of {"self", "causal", "cross", "causal_cross"}.
        forms: algorithms available: "parallel" (quadratic or dense), "chunk" (chunkwise),
            "recurrent" (token by token through ``step``; a KV cache for softmax attention).
        form_notes: (form, note) pairs saying how a form is computed, e.g.
            ("recurrent", "KV cache").
        approximates_softmax: the mechanism is meant to approximate softmax attention
            (speed sweeps then measure its error against it).
        padding_caveat: why a padded row's outputs cannot equal the same sequence run
            alone (the published math mixes over the padded length); None when they do
            (the contract every other mechanism is tested against).
        export_caveat: why a model with this mechanism cannot be exported to ONNX and run
            in ONNX Runtime (``attnarena.compress.ort``); None when it can (every other
            mechanism is exported and checked against torch by the tests).
        step_export_caveat: why a causal LM of this mechanism cannot export its decoding
            step (``attnarena.compress.ort_decode``); None when it can (or it does not
            decode).
        pretrained_options: (option, value) pairs under which the mixer's query, key,
            value and output projections can take over a pretrained model's attention
            weights (``attnarena.pretrained.swap_attention``); None when it has no such
            projections.
    """

    name: str
    family: str
    paper: str
    complexity: str
    patterns: frozenset
    forms: frozenset
    form_notes: tuple = ()
    approximates_softmax: bool = False
    pretrained_options: tuple | None = None
    padding_caveat: str | None = None
    export_caveat: str | None = None
    step_export_caveat: str | None = None

    @property
    def reuses_attention_weights(self) -> bool:
        """True when the mechanism can take over a pretrained softmax attention's query,
        key, value and output weights."""
        return self.pretrained_options is not None

    def describe_forms(self) -> str:
        """The forms in canonical order, each with its note: "parallel (SDPA), recurrent"."""
        notes = dict(self.form_notes)
        return ", ".join(f"{f} ({notes[f]})" if f in notes else f
                         for f in FORMS if f in self.forms)

    def describe_patterns(self) -> str:
        """The patterns in canonical order ("all four" when it has every one)."""
        if self.patterns == frozenset(PATTERNS):
            return "all four"
        return ", ".join(p for p in PATTERNS if p in self.patterns)

    @property
    def decodes(self) -> bool:
        """True when a causal instance offers ``init_state`` / ``step``."""
        return "causal" in self.patterns and "recurrent" in self.forms


_MIXERS: dict[str, type] = {}


def register_mixer(name, *, family, paper, complexity, patterns, forms, form_notes=None,
                   approximates_softmax=False, padding_caveat=None, export_caveat=None,
                   step_export_caveat=None):
    """Class decorator that adds a mixer class to the registry under ``name``.

    ``form_notes`` optionally says how a form is computed, e.g. {"recurrent": "KV cache"};
    ``padding_caveat`` says why, if so, a padded batch cannot equal each sequence alone;
    ``export_caveat`` why, if so, it cannot be exported to ONNX, ``step_export_caveat`` why
    its decoding step cannot.
    """
    patterns = frozenset(patterns)
    forms = frozenset(forms)
    for field, value in (("family", family), ("paper", paper), ("complexity", complexity)):
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"mixer {name!r}: {field} must be a non-empty string, got {value!r}")
    bad = (patterns - set(PATTERNS)) | (forms - set(FORMS))
    if bad or not patterns or not forms:
        raise ValueError(f"mixer {name!r}: patterns must come from {PATTERNS} and forms from "
                         f"{FORMS}, both non-empty; got patterns={sorted(patterns)}, "
                         f"forms={sorted(forms)}")

    def decorate(cls):
        if name in _MIXERS:
            raise ValueError(f"mixer {name!r} is already registered by "
                             f"{_MIXERS[name].__qualname__}")
        # Mixer marks its subclasses, so the registry needs no import of mixer code
        if not (isinstance(cls, type) and getattr(cls, "_is_mixer", False)):
            raise TypeError(f"@register_mixer({name!r}) expects a subclass of Mixer, got {cls!r}")
        notes = dict(form_notes or {})
        if set(notes) - forms:
            raise ValueError(f"mixer {name!r}: form_notes name forms it does not declare: "
                             f"{sorted(set(notes) - forms)}")
        reuse = getattr(cls, "pretrained_options", None)
        for field, caveat in (("padding_caveat", padding_caveat),
                              ("export_caveat", export_caveat),
                              ("step_export_caveat", step_export_caveat)):
            if caveat is not None and not (isinstance(caveat, str) and caveat.strip()):
                raise ValueError(f"mixer {name!r}: {field} must be None or a sentence, "
                                 f"got {caveat!r}")
        info = MixerInfo(name, family, paper, complexity, patterns, forms,
                         tuple(sorted(notes.items())), bool(approximates_softmax),
                         None if reuse is None else tuple(sorted(reuse.items())),
                         padding_caveat, export_caveat, step_export_caveat)
        takes = inspect.signature(cls.__init__).parameters
        if "chunk" in forms and "form" not in takes:
            raise TypeError(f"mixer {name!r} declares the chunk form, so {cls.__name__}'s "
                            "constructor must take form= (the contract tests run each form "
                            "through it)")
        if info.decodes and not all(hasattr(cls, m) for m in ("_init_state", "_step")):
            raise TypeError(f"mixer {name!r} declares a causal recurrent form, so {cls.__name__} "
                            "must define _init_state and _step")
        if not (cls.__doc__ or "").strip():
            raise TypeError(f"mixer {name!r}: {cls.__name__} needs a docstring that cites "
                            "its paper")
        cls.info = info
        _MIXERS[name] = cls
        return cls

    return decorate


def list_mixers(pattern: str | None = None) -> list[str]:
    """Sorted names of registered mixers, optionally filtered by a glob like ``"*linear*"``."""
    names = sorted(_MIXERS)
    return [n for n in names if pattern is None or fnmatch.fnmatch(n, pattern)]


def _mixer_class(name: str) -> type:
    if not isinstance(name, str):
        raise TypeError(f"mixer name must be a string, got {type(name).__name__}")
    return look_up(name, _MIXERS, "mixer", "valid names")


def mixer_info(name: str) -> MixerInfo:
    """The ``MixerInfo`` of a registered mixer."""
    return _mixer_class(name).info


def mixer_kernel(name: str) -> str:
    """Which implementation the mechanism's forward runs on this machine, e.g. whether a
    compiled kernel is used or its PyTorch fallback (and why)."""
    return _mixer_class(name).kernel()


def mixer_options(name: str) -> dict[str, object]:
    """The options a mixer accepts beyond dim, heads and causal, with their defaults."""
    cls = _mixer_class(name)
    params = inspect.signature(cls.__init__).parameters
    # form and chunk_size defaulting to None are the base class's "not taken"
    options = {p.name: p.default for p in params.values()
               if p.name not in ("self", "dim", "heads", "causal")
               and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)
               and not (p.name in ("form", "chunk_size") and p.default is None)}
    if cls.streams:  # a fixed-size state: training in pieces (mixers/pieces.py)
        options["train_rows"] = cls.train_rows
    return options


def create_mixer(name: str, dim: int, heads: int = 1, causal: bool = False, **options):
    """Build a registered mixer.

    Args:
        name: a name from ``list_mixers()``.
        dim: model width; inputs are (B, L, dim).
        heads: number of heads; must divide ``dim``.
        causal: True for autoregressive use (position t sees positions <= t).
        **options: mechanism-specific options (see ``mixer_options(name)``).

    Returns:
        The mixer, an ``nn.Module`` subclass of ``attnarena.mixers.Mixer``.
    """
    check_mixer_options(name, options)
    options = dict(options)
    train_rows = options.pop("train_rows", None)
    mixer = _mixer_class(name)(dim=dim, heads=heads, causal=causal, **options)
    if train_rows is not None:
        check_int(train_rows, "train_rows")
        mixer.train_rows = train_rows
    return mixer


def check_mixer_options(name: str, options, where: str = "") -> None:
    """ValueError naming the options of ``options`` that mixer ``name`` does not take
    (``where`` says where they were given), with the valid ones and a did-you-mean."""
    check_options(options, mixer_options(name), f"mixer {name!r}{where}")


def mechanism_table(names=None) -> str:
    """The README's mechanism table, in markdown, from the registry (all mechanisms, or
    ``names``), grouped by family."""
    lines = ["| name | family | paper | complexity | patterns | forms |",
             "|---|---|---|---|---|---|"]
    infos = sorted(map(mixer_info, list_mixers() if names is None else names),
                   key=lambda i: (i.family, i.name))
    for i in infos:
        lines.append(f"| `{i.name}` | {i.family} | {i.paper} | {i.complexity} | "
                     f"{i.describe_patterns()} | {i.describe_forms()} |")
    return "\n".join(lines)
