"""Hybrid stacks: which mechanism each layer of a backbone runs.

Every backbone's ``mixer`` is a *stack*: one mechanism for every layer, or a pattern that
mixes mechanisms across layers (Griffin; "A Systematic Analysis of Hybrid Linear
Attention", Wang et al. 2025). A stack is written as

* a mechanism name: ``"gla"`` (every layer);
* a pattern string: layers separated by ``+`` or ``,``; ``N*`` repeats a layer or a
  parenthesized group; options of one layer go in parentheses after its name::

      "gla,gla,gla,softmax"   "3*gla+softmax"   "2*(gla+gla+local(window=64))"

* a list of layers, each a name, a pattern string, a ``(name, {options})`` pair or a
  ``{"mixer": name, **options}`` table.

The pattern is repeated to the depth: its length must divide the model's depth. Options
given for the whole model (``mixer_options``) go to every layer whose mechanism takes them
(an option no layer takes is an error); a layer's own options win.

Named stacks stand for their pattern anywhere a name may (``STACKS``): ``"griffin"`` is
Griffin's two RG-LRU blocks then one local-attention block (De et al. 2024; window 1024).

``canonical`` writes a stack in its shortest form (the shortest repeating period, runs as
``N*``), so equal stacks get equal names: ``"gla,gla"`` is ``"gla"``.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass

from attnarena.registry import check_mixer_options, mixer_info, mixer_options

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# Named stacks: published hybrids, written as patterns.
STACKS = {"griffin": "2*rglru+local(window=1024)"}
_COUNT = re.compile(r"[0-9]+")


@dataclass(frozen=True)
class Layer:
    """One layer's mechanism and its own options (sorted ``(key, value)`` pairs)."""

    name: str
    options: tuple = ()

    @property
    def text(self) -> str:
        if not self.options:
            return self.name
        return f"{self.name}({','.join(f'{k}={_value_text(v)}' for k, v in self.options)})"


def _value_text(value) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _layer(name: str, options: dict, where: str) -> Layer:
    mixer_info(name)  # an unknown name: one line with the valid ones and a did-you-mean
    check_mixer_options(name, options, where=where)
    return Layer(name, tuple(sorted(options.items())))


class _Parser:
    """Recursive descent over the pattern grammar::

        stack := term (("+" | ",") term)*
        term  := [COUNT "*"] atom
        atom  := NAME ["(" key "=" value ("," key "=" value)* ")"] | "(" stack ")"
    """

    def __init__(self, text: str):
        self.text, self.source, self.at = "".join(text.split()), text, 0

    def fail(self, what: str):
        shown = self.text[:self.at] + " <here> " + self.text[self.at:]
        raise ValueError(f"mixer pattern {self.source!r}: expected {what} at {shown.strip()!r}; "
                         "a pattern is layers joined by '+' or ',', e.g. '3*gla+softmax' or "
                         "'2*(gla+local(window=64))'")

    def peek(self) -> str:
        return self.text[self.at] if self.at < len(self.text) else ""

    def match(self, regex) -> str | None:
        found = regex.match(self.text, self.at)
        if not found:
            return None
        self.at = found.end()
        return found.group()

    def parse(self) -> list[Layer]:
        layers = self.stack()
        if self.at != len(self.text):
            self.fail("'+', ',' or the end")
        return layers

    def stack(self) -> list[Layer]:
        layers = self.term()
        while self.peek() in ("+", ","):
            self.at += 1
            layers += self.term()
        return layers

    def term(self) -> list[Layer]:
        count = self.match(_COUNT)
        if count is not None:
            if self.peek() != "*":
                self.fail("'*' after a repeat count")
            self.at += 1
            if int(count) < 1:
                self.fail("a repeat count >= 1")
        return self.atom() * (int(count) if count is not None else 1)

    def atom(self) -> list[Layer]:
        if self.peek() == "(":
            self.at += 1
            layers = self.stack()
            if self.peek() != ")":
                self.fail("')' closing the group")
            self.at += 1
            return layers
        name = self.match(_NAME)
        if name is None:
            self.fail("a mechanism name")
        if name in STACKS and self.peek() != "(":
            return _Parser(STACKS[name]).parse()
        options = {}
        if self.peek() == "(":
            self.at += 1
            while True:
                key = self.match(_NAME)
                if key is None or self.peek() != "=":
                    self.fail("key=value")
                self.at += 1
                start = self.at
                while self.peek() not in (",", ")", ""):
                    self.at += 1
                raw = self.text[start:self.at]
                if not raw:
                    self.fail(f"a value for {key}")
                try:
                    options[key] = json.loads(raw)
                except json.JSONDecodeError:
                    options[key] = raw
                if self.peek() == ")":
                    self.at += 1
                    break
                if self.peek() != ",":
                    self.fail("',' or ')' after an option")
                self.at += 1
        return [_layer(name, options, f" in pattern {self.source!r}")]


def parse_stack(mixer) -> list[Layer]:
    """The layers of one period of a stack (see the module docstring for what it may be)."""
    if isinstance(mixer, str):
        if not mixer.strip():
            raise ValueError("mixer is empty; give a mechanism name or a pattern such as "
                             "'3*gla+softmax'")
        if _NAME.fullmatch(mixer) and mixer not in STACKS:
            return [_layer(mixer, {}, "")]
        return _Parser(mixer).parse()
    if isinstance(mixer, (list, tuple)) and mixer:
        layers = []
        for item in mixer:
            if isinstance(item, str):
                layers += parse_stack(item)
            elif isinstance(item, dict) and isinstance(item.get("mixer"), str):
                options = {k: v for k, v in item.items() if k != "mixer"}
                layers.append(_layer(item["mixer"], options, f" in layer {item!r}"))
            elif (isinstance(item, (list, tuple)) and len(item) == 2
                  and isinstance(item[0], str) and isinstance(item[1], dict)):
                layers.append(_layer(item[0], dict(item[1]), f" in layer {item[0]!r}"))
            else:
                raise ValueError(f"a layer of a mixer list must be a name, a pattern, a "
                                 f"(name, options) pair or a table with 'mixer', got {item!r}")
        return layers
    raise ValueError("mixer must be a mechanism name, a pattern string or a non-empty list "
                     f"of layers, got {mixer!r}")


def _period(layers: list[Layer]) -> list[Layer]:
    n = len(layers)
    for p in range(1, n + 1):
        if n % p == 0 and layers == layers[:p] * (n // p):
            return layers[:p]
    return layers


def canonical(mixer) -> str:
    """The stack's shortest name: its shortest repeating period, runs written ``N*``."""
    layers = _period(parse_stack(mixer))
    parts, i = [], 0
    while i < len(layers):
        j = i
        while j < len(layers) and layers[j] == layers[i]:
            j += 1
        parts.append(layers[i].text if j - i == 1 else f"{j - i}*{layers[i].text}")
        i = j
    return "+".join(parts)


def is_hybrid(mixer) -> bool:
    """True when the stack runs more than one mechanism (or one with per-layer options)."""
    return len(_period(parse_stack(mixer))) > 1 or bool(parse_stack(mixer)[0].options)


def stack_names(mixer) -> list[str]:
    """The mechanisms of a stack, each once, in the order they first appear."""
    return list(dict.fromkeys(layer.name for layer in parse_stack(mixer)))


def stack_patterns(mixer) -> frozenset:
    """The patterns every layer of the stack supports."""
    return frozenset.intersection(*(mixer_info(n).patterns for n in stack_names(mixer)))


def stack_decodes(mixer) -> bool:
    """True when every layer decodes token by token (``init_state`` / ``step``)."""
    return all(mixer_info(n).decodes for n in stack_names(mixer))


def layer_mixers(mixer, depth: int, options: dict | None = None) -> list[tuple[str, dict]]:
    """(name, options) for each of ``depth`` layers: the pattern repeated to the depth, the
    model-wide ``options`` given to every layer whose mechanism takes them."""
    layers = parse_stack(mixer)
    if depth % len(layers):
        raise ValueError(f"mixer pattern {canonical(mixer)!r} has {len(layers)} layers, which "
                         f"do not divide the depth {depth}; give a depth that is a multiple "
                         f"of {len(layers)} or a pattern whose length divides {depth}")
    options = dict(options or {})
    names = [layer.name for layer in layers]
    if len(set(names)) == 1 and not layers[0].options:
        check_mixer_options(names[0], options)
        return [(names[0], dict(options)) for _ in range(depth)]
    taken = set().union(*(mixer_options(n) for n in names))
    unknown = sorted(set(options) - taken)
    if unknown:
        raise ValueError(f"option(s) {', '.join(map(repr, unknown))} are taken by no layer of "
                         f"the stack {canonical(mixer)!r} (mechanisms: {', '.join(set(names))})")
    period = [(layer.name, {**{k: v for k, v in options.items()
                               if k in mixer_options(layer.name)}, **dict(layer.options)})
              for layer in layers]
    return [(name, dict(opts)) for _ in range(depth // len(layers)) for name, opts in period]


def path_name(mixer) -> str:
    """The canonical name with only characters safe in file names (for run ids)."""
    text = canonical(mixer)
    for old, new in (("*", "x"), ("(", "["), (")", "]"), ("=", "-"), (",", "_")):
        text = text.replace(old, new)
    return re.sub(r"[^A-Za-z0-9_+.\[\]-]", "_", text)
