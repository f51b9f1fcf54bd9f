"""The one interface every token mixer follows, checked here once for all of them.

Subclasses implement ``_forward`` and, when they decode, ``_init_state`` / ``_step`` (and may
override ``_prefill`` with a faster path). The public methods validate inputs where a user's
call enters (see ``attnarena._validate.entering``), so each mixer sees only well-formed
tensors and a mixer inside a model pays for no check its model already made.
"""
from __future__ import annotations

import abc
import dataclasses
import weakref

import torch
from torch import nn

from attnarena._validate import (NonFiniteError, all_finite, check_finite, check_int,
                                 check_mask, debug_checks_on, entering, inside)
from attnarena.mixers.pieces import has_hooks, tokens_per_piece, train_in_pieces
from attnarena.ops._checks import tracing
from attnarena.registry import MixerInfo


class Mixer(nn.Module, metaclass=abc.ABCMeta):
    """Base class of all mixers: (B, L, dim) -> (B, L, dim).

    ``forward(x, context=None, mask=None)``; causal mixers with a recurrent form also offer
    ``init_state(batch_size)`` and ``step(x_t, state) -> (y_t, state)``.
    """

    info: MixerInfo  # set by @register_mixer
    _is_mixer = True  # what @register_mixer checks
    # Options under which the mixer has square q_proj, k_proj, v_proj and o_proj linear maps
    # that a pretrained model's attention weights can take over; None when it has none.
    pretrained_options: dict | None = None
    # True while the backward uses a surrogate where the forward has no useful derivative
    # (Transformer-VQ's straight-through keys); False gives the exact derivative.
    surrogate_gradients: bool = False
    # A causal mixer whose decoding state has a fixed size (a recurrence, not a KV cache)
    # runs a long forward without gradients (inference: no mask, no context) as prefills of
    # ``stream_tokens`` tokens at a time, carrying its state: the same outputs, with the
    # memory of one piece's intermediates instead of the whole sequence's. With the option
    # ``train_rows`` set, a forward under gradients (training, no mask, no context) also
    # runs as pieces of about that many rows (batch x tokens) whose intermediates the
    # backward pass recomputes (mixers/pieces.py): the same gradients, a fraction of the
    # memory, one more forward's time. ``streams = False`` on an instance runs all whole.
    streams: bool = False
    stream_tokens: int = 512
    train_rows: int | None = None

    def __init__(self, dim: int, heads: int = 1, causal: bool = False, *,
                 form: str | None = None, chunk_size: int | None = None):
        super().__init__()
        if not isinstance(getattr(type(self), "info", None), MixerInfo):
            raise TypeError(f"{type(self).__name__} is not registered: decorate the class with "
                            "@register_mixer(name, family=..., paper=..., complexity=..., "
                            "patterns=..., forms=...) (step 2 of docs/contributing.md)")
        check_int(dim, "dim")
        check_int(heads, "heads")
        if dim % heads:
            raise ValueError(f"dim must be divisible by heads, got dim={dim}, heads={heads}")
        if not isinstance(causal, bool):
            raise TypeError(f"causal must be a bool, got {causal!r}")
        pattern = "causal" if causal else "self"
        if pattern not in self.info.patterns:
            raise ValueError(f"mixer {self.info.name!r} does not support the {pattern!r} pattern; "
                             f"it supports: {', '.join(sorted(self.info.patterns))}")
        self.dim, self.heads, self.causal = dim, heads, causal
        self.head_dim = dim // heads
        # A mixer whose constructor takes ``form`` runs its forward in that form; without
        # one, it has a single training form and any "recurrent" form is decoding only.
        if form is not None and form not in self.info.forms:
            raise ValueError(f"form must be one of {sorted(self.info.forms)}, got {form!r}")
        if chunk_size is not None:
            check_int(chunk_size, "chunk_size")
        self.form, self.chunk_size = form, chunk_size

    # -- public interface -------------------------------------------------------------------

    def forward(self, x, context=None, mask=None):
        """Mix tokens.

        Args:
            x: (B, L, dim).
            context: optional (B, S, dim) for cross attention (queries from x).
            mask: optional (B, L) bool, True = real token; with ``context``, (B, S) over it.

        Returns:
            (B, L, dim).
        """
        entry = entering()
        if entry:
            self._check_inputs(x, context, mask)
        if mask is not None:
            # Padded tokens are zeroed once here, so nothing computed from them can leak.
            if context is None:
                x = x.masked_fill(~mask[..., None], 0.0)
            else:
                context = context.masked_fill(~mask[..., None], 0.0)
        if entry:
            check_finite(x, "x")
            if context is not None:
                check_finite(context, "context")
        if x.shape[0] == 0:
            return x.new_zeros(x.shape)
        with inside():
            y = None
            if self._streaming(x, context, mask):
                y = self._stream(x)
            elif self._training_in_pieces(x, context, mask):
                y = train_in_pieces(self, x, self._train_tokens(x.shape[0]))
            if y is None:
                y = self._forward(x, context, mask)
        # a direct call's output is checked once; inside a model, the loss catches divergence
        if entry and not all_finite(y):  # finite inputs: the dtype overflowed
            raise NonFiniteError(f"mixer {self.info.name!r} overflowed {y.dtype}: finite inputs "
                                 f"(largest magnitude {float(x.detach().abs().max()):.3g}) gave "
                                 "NaN or infinite outputs; scale the inputs down (a norm "
                                 "before the mixer) or use a wider dtype")
        return y

    def _check_inputs(self, x, context, mask):
        self._check_tokens(x, "x")
        if context is not None:
            pattern = "causal_cross" if self.causal else "cross"
            if pattern not in self.info.patterns:
                raise ValueError(f"mixer {self.info.name!r} does not support the {pattern!r} "
                                 f"pattern; it supports: {', '.join(sorted(self.info.patterns))}")
            self._check_tokens(context, "context")
            if context.shape[0] != x.shape[0]:
                raise ValueError(f"context batch {context.shape[0]} differs from x batch "
                                 f"{x.shape[0]}")
            if context.dtype != x.dtype:
                raise TypeError(f"context dtype {context.dtype} differs from x dtype {x.dtype}")
        if mask is not None:
            self._check_mask(mask, x if context is None else context,
                             "context" if context is not None else "x")

    def _streaming(self, x, context, mask) -> bool:
        # not while traced into a graph: the pieces' loop would fix the traced length
        return (self.streams and self.causal and context is None and mask is None
                and not torch.is_grad_enabled() and x.shape[1] > 2 * self.stream_tokens
                and self.info.decodes and not tracing())

    def _train_tokens(self, batch_size: int) -> int:
        """Tokens per piece under gradients: about ``train_rows`` rows of the batch."""
        return tokens_per_piece(self.train_rows, batch_size)

    def _training_in_pieces(self, x, context, mask) -> bool:
        return (self.streams and self.train_rows is not None and self.causal
                and context is None and mask is None and torch.is_grad_enabled()
                and x.shape[1] > 2 * self._train_tokens(x.shape[0])
                and self.info.decodes and not tracing()
                and (x.requires_grad or any(p.requires_grad for p in self.parameters()))
                and not has_hooks(self))

    def _training_start(self, batch_size, device, dtype):
        """The state training in pieces starts from: the one a whole forward starts from, so
        that a learned initial state's parameters receive their gradients."""
        return self._init_state(batch_size, device, dtype)

    def _stream(self, x):
        """The causal forward as prefills of ``stream_tokens`` tokens, state carried."""
        return self._prefill_pieces(x, self.stream_tokens,
                                    self._init_state(x.shape[0], x.device, x.dtype))

    def _prefill_pieces(self, x, tokens: int, state, before=None):
        """Prefills of ``tokens`` tokens from ``state``, the state carried, their outputs
        written into one tensor; ``before(state)`` is called as each piece starts."""
        y = None
        for start in range(0, x.shape[1], tokens):
            if before is not None:
                before(state)
            piece, state = self._prefill(x[:, start:start + tokens], state)
            if y is None:
                y = piece.new_empty(*x.shape[:2], piece.shape[-1])
            y[:, start:start + piece.shape[1]] = piece
        return y

    def init_state(self, batch_size: int, device=None, dtype=None):
        """Empty decoding state for ``step`` (causal mixers with a recurrent form)."""
        self._check_decodes()
        check_int(batch_size, "batch_size")
        device = device if device is not None else self._param_device()
        dtype = dtype if dtype is not None else (self._param_dtype() or torch.float32)
        return self._init_state(batch_size, device, dtype)

    def step(self, x_t, state):
        """One decoding step: x_t (B, dim) -> (y_t (B, dim), new state).

        A state is checked when it first comes in (one this mixer did not just return);
        the state this mixer returned last goes on unchecked, and with ``debug_checks`` on
        every state and output is checked at every token."""
        entry = entering()
        if entry:
            self._check_decodes()
            if not isinstance(x_t, torch.Tensor) or x_t.dim() != 2 or x_t.shape[-1] != self.dim:
                shape = tuple(x_t.shape) if isinstance(x_t, torch.Tensor) else type(x_t).__name__
                raise ValueError(f"step expects x_t of shape (batch, {self.dim}), got {shape}")
            self._check_tokens(x_t[:, None], "x_t")
            check_finite(x_t, "x_t")
        if x_t.shape[0] == 0:  # an empty batch: an empty output, the state as it was
            return x_t.new_zeros(x_t.shape), state
        if state is None:  # documented: a fresh sequence, as with prefill
            state = self.init_state(x_t.shape[0], x_t.device, x_t.dtype)
        debug = debug_checks_on()
        if entry and (debug or not self._returned_last(state)):
            self._check_state(state, x_t.shape[0])
        if not debug:
            with inside():
                y_t, state = self._step(x_t, state)
            if entry:
                self._remember(state)
            return y_t, state
        # A state holding NaN is found from its effects (a NaN output, or an op refusing a
        # value computed from it), so a good state costs no pass over it.
        try:
            y_t, state = self._step(x_t, state)
        except ValueError:
            if all(all_finite(t) for t in _tensors(state)):
                raise
            y_t = None
        if y_t is None or not all_finite(y_t):
            raise NonFiniteError(f"mixer {self.info.name!r} cannot decode from this state: it "
                                 "holds NaN or infinite values (x_t is finite); start the "
                                 "sequence again from init_state")
        return y_t, state

    def _remember(self, state) -> None:
        """Mark ``state`` as the one this mixer returned last, holding no reference that
        would keep it alive (a weak one to its first tensor, and the container's id)."""
        first = next(_tensors(state), None)
        self.__dict__["_last_state"] = None if first is None else (id(state),
                                                                   weakref.ref(first))

    def _returned_last(self, state) -> bool:
        mark = self.__dict__.get("_last_state")
        return mark is not None and id(state) == mark[0] and \
            next(_tensors(state), None) is mark[1]()

    def __getstate__(self):
        state = super().__getstate__()  # pickling and deepcopy leave the decoding mark out
        state.pop("_last_state", None)
        return state

    def prefill(self, x, state=None):
        """Run a causal forward over x (B, L, dim) and return (y, state) to continue with step.

        Inputs are checked here once for every mixer; ``_prefill`` does the work.
        """
        entry = entering()
        if entry:
            self._check_decodes()
            self._check_tokens(x, "x")
            check_finite(x, "x")
        if x.shape[0] == 0:  # an empty batch: an empty output, the state as it was
            return x.new_zeros(x.shape), state
        if state is None:
            state = self.init_state(x.shape[0], x.device, x.dtype)
        elif entry:
            self._check_state(state, x.shape[0])
        with inside():
            return self._prefill(x, state)

    def _prefill(self, x, state):
        """Causal forward over validated x from a validated state. The default loops over
        ``_step``; mixers override it with their parallel forms."""
        outputs = []
        for t in range(x.shape[1]):
            y_t, state = self._step(x[:, t], state)
            outputs.append(y_t)
        return torch.stack(outputs, dim=1), state

    @classmethod
    def kernel(cls) -> str:
        """Which implementation the mechanism's forward runs here (``attnarena list``)."""
        return "PyTorch"

    # -- for subclasses -----------------------------------------------------------------------

    @abc.abstractmethod
    def _forward(self, x, context, mask):
        """(B, L, dim) -> (B, L, dim) on validated inputs with padded tokens zeroed."""

    # Mixers that decode also define ``_init_state(batch_size, device, dtype)`` and
    # ``_step(x_t, state)``; @register_mixer checks that they do.

    def extra_repr(self) -> str:
        text = f"dim={self.dim}, heads={self.heads}, causal={self.causal}"
        if self.form is not None:
            text += f", form={self.form!r}"
        if self.chunk_size is not None:
            text += f", chunk_size={self.chunk_size}"
        return text

    # -- checks -------------------------------------------------------------------------------

    def _check_decodes(self):
        if not self.info.decodes:
            raise ValueError(f"mixer {self.info.name!r} has no recurrent form, so no step/"
                             f"init_state (forms: {', '.join(sorted(self.info.forms))})")
        if not self.causal:
            raise ValueError(f"step/init_state need a causal mixer; this {self.info.name!r} was "
                             "created with causal=False")

    def _check_state(self, state, batch_size):
        """A decoding state must be what init_state, prefill or step returned, for a batch of
        ``batch_size``; anything else is one clear error, never a failure deep in torch."""
        dtype = self._param_dtype() or torch.float32
        cached = getattr(self, "_state_reference", None)
        if cached is None or cached[0] != dtype:
            fresh = self._init_state(1, torch.device("cpu"), dtype)
            # an axis empty in a fresh state is a buffer the context fills: any size passes
            reference = [(tuple(None if n == 0 else n for n in shape), kind)
                         for shape, kind in _signature(fresh)]
            cached = self._state_reference = (dtype, _structure(fresh), reference)
        _, form, signature = cached
        if _structure(state) != form:
            raise TypeError(f"state for mixer {self.info.name!r} must be what init_state, "
                            f"prefill or step returned, got {type(state).__name__}")
        for tensor in _tensors(state):
            if tensor.shape[0] != batch_size:
                raise ValueError(f"state was made for batch size {tensor.shape[0]} but the "
                                 f"input has batch size {batch_size}; call "
                                 f"init_state({batch_size}) for a new sequence")
        for (shape, kind), (want, want_kind) in zip(_signature(state), signature):
            if kind != want_kind:
                raise TypeError(f"state for mixer {self.info.name!r} holds {kind} tensors but "
                                f"this mixer's state is {want_kind}; convert it with .to() or "
                                "call init_state")
            if len(shape) != len(want) or any(w is not None and n != w
                                              for n, w in zip(shape, want)):
                raise ValueError(f"state for mixer {self.info.name!r} holds a tensor of shape "
                                 f"(batch, {', '.join(map(_size, shape))}) but this mixer "
                                 f"(dim {self.dim}, {self.heads} heads) needs (batch, "
                                 f"{', '.join(map(_size, want))}): it was made by another "
                                 "mixer; call init_state")

    def _param_dtype(self):
        for p in self.parameters():
            if p.is_floating_point():
                return p.dtype
        return None

    def _param_device(self):
        for t in list(self.parameters()) + list(self.buffers()):
            return t.device
        return torch.device("cpu")

    def _check_tokens(self, x, name):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
        if not x.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
        if x.dim() != 3 or x.shape[-1] != self.dim:
            raise ValueError(f"{name} must have shape (batch, length, {self.dim}), "
                             f"got {tuple(x.shape)}")
        if x.shape[1] == 0:
            raise ValueError(f"{name} must have at least one token, got length 0")
        expected = self._param_dtype()
        if expected is not None and x.dtype != expected:
            raise TypeError(f"{name} has dtype {x.dtype} but the mixer's parameters are "
                            f"{expected}; convert one with .to()")

    def _check_mask(self, mask, source, name):
        check_mask(mask, source.shape[:2], name)


def _tensors(state):
    """Every tensor inside a decoding state (tensors, dicts, tuples, lists, dataclasses)."""
    if isinstance(state, torch.Tensor):
        yield state
    elif isinstance(state, dict):
        for value in state.values():
            yield from _tensors(value)
    elif isinstance(state, (list, tuple)):
        for value in state:
            yield from _tensors(value)
    elif dataclasses.is_dataclass(state):
        for f in dataclasses.fields(state):
            yield from _tensors(getattr(state, f.name))


def _size(n) -> str:
    return "length" if n is None else str(n)


def _signature(state) -> list:
    """(sizes after the batch axis, dtype) of each tensor of a state; a cache's growing
    axis (a class's ``GROWING_DIM``) counts as None, since the context sets it."""
    out = []

    def visit(value, growing=None):
        if isinstance(value, torch.Tensor):
            sizes = [None if i == growing else n for i, n in enumerate(value.shape)]
            out.append((tuple(sizes[1:]), value.dtype))
        elif isinstance(value, dict):
            for key in sorted(value):
                visit(value[key])
        elif isinstance(value, (list, tuple)):
            for item in value:
                visit(item)
        elif dataclasses.is_dataclass(value):
            for f in dataclasses.fields(value):
                visit(getattr(value, f.name), getattr(value, "GROWING_DIM", None))

    visit(state)
    return out


def _structure(state):
    """The shape of a state's containers (types and keys), without its sizes."""
    if isinstance(state, dict):
        return dict, tuple((k, _structure(v)) for k, v in sorted(state.items()))
    if isinstance(state, (list, tuple)):
        return type(state), tuple(_structure(v) for v in state)
    if dataclasses.is_dataclass(state):
        return type(state), tuple(_structure(getattr(state, f.name))
                                  for f in dataclasses.fields(state))
    return torch.Tensor if isinstance(state, torch.Tensor) else type(state)
