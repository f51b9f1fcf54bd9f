"""Training in pieces: a causal mixer with a fixed-size state runs a long forward under
gradients as pieces of ``train_tokens`` tokens, its state carried from piece to piece, and
recomputes each piece's intermediates in the backward pass instead of keeping them.

Autograd keeps every intermediate of a forward until the backward pass uses it: for a
chunked recurrence, dozens of tensors the size of the input (projections, gates, feature
maps, each chunk's scores and states), so a linear-time mechanism trained more memory than
exact attention, whose fused kernel keeps only its inputs, output and one row statistic.
Here a piece's forward runs without autograd and keeps only its input and the state it
started from; the backward pass visits the pieces last to first, reruns each one's forward
with autograd from that state and back-propagates through it both its output's gradient
and the gradient of the state it handed on. What stays allocated is the input, the output
and one piece's intermediates; the price is each piece's forward run twice (the trade of
activation checkpointing, Chen et al. 2016, "Training Deep Nets with Sublinear Memory
Cost"), and the gradients are the whole forward's.

A piece's forward keeps no autograd graph at all (``torch.utils.checkpoint`` without
reentry builds one during the forward pass): thousands of small graph objects scattered
over the memory earlier pieces freed keep glibc's heap from reusing it, and the resident
size then grows far beyond what is live.
"""
from __future__ import annotations

import dataclasses

import torch


def _split(state):
    """(tensors, rebuild): the state's tensors in order, and ``rebuild(iterator)`` that puts
    tensors taken from the iterator back into the same containers (other values kept)."""
    if isinstance(state, torch.Tensor):
        return [state], next
    if isinstance(state, dict):
        parts = {key: _split(value) for key, value in state.items()}
        return ([t for tensors, _ in parts.values() for t in tensors],
                lambda it: {key: rebuild(it) for key, (_, rebuild) in parts.items()})
    if isinstance(state, (list, tuple)):
        parts = [_split(value) for value in state]
        kind = type(state)
        return ([t for tensors, _ in parts for t in tensors],
                lambda it: kind(rebuild(it) for _, rebuild in parts))
    if dataclasses.is_dataclass(state) and not isinstance(state, type):
        names = [f.name for f in dataclasses.fields(state)]
        parts = {name: _split(getattr(state, name)) for name in names}
        return ([t for tensors, _ in parts.values() for t in tensors],
                lambda it: dataclasses.replace(
                    state, **{name: rebuild(it) for name, (_, rebuild) in parts.items()}))
    return [], lambda it: state


def _differentiable(tensor) -> bool:
    return tensor.is_floating_point() or tensor.is_complex()


class _Run:
    """One piece's forward on flat state tensors; remembers how to rebuild the state after."""

    def __init__(self, mixer, rebuild):
        self.mixer, self.rebuild, self.rebuild_after = mixer, rebuild, None

    def __call__(self, piece, tensors):
        y, after = self.mixer._prefill(piece, self.rebuild(iter(tensors)))
        tensors, self.rebuild_after = _split(after)
        return y, tensors


class _Piece(torch.autograd.Function):
    """(piece, state tensors, parameters) -> (output, state tensors after), recomputed in
    the backward pass from the saved piece and state."""

    @staticmethod
    def forward(ctx, run, piece, n_state, *tensors):
        device = piece.device.type
        ctx.run, ctx.n_state = run, n_state
        ctx.rng = (torch.get_rng_state(),
                   torch.cuda.get_rng_state(piece.device) if device == "cuda" else None)
        ctx.autocast = (device, torch.is_autocast_enabled(device),
                        torch.get_autocast_dtype(device))
        with torch.no_grad():
            y, after = run(piece, tensors[:n_state])
        ctx.save_for_backward(piece, *tensors)
        ctx.set_materialize_grads(False)  # a state nobody used after has no gradient
        ctx.mark_non_differentiable(*[t for t in after if not _differentiable(t)])
        return (y, *after)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_y, *grad_after):
        piece, *saved = ctx.saved_tensors
        state, parameters = saved[:ctx.n_state], saved[ctx.n_state:]
        needs = ctx.needs_input_grad
        inputs = [piece.detach().requires_grad_(needs[1])]
        inputs += [t.detach().requires_grad_(_differentiable(t) and needs[3 + i])
                   for i, t in enumerate(state)]
        device, autocast_on, autocast_dtype = ctx.autocast
        cpu_rng, device_rng = ctx.rng
        devices = [piece.device] if device == "cuda" else []
        with torch.random.fork_rng(devices=devices), torch.enable_grad(), \
                torch.autocast(device, dtype=autocast_dtype, enabled=autocast_on):
            torch.set_rng_state(cpu_rng)
            if device_rng is not None:
                torch.cuda.set_rng_state(device_rng, piece.device)
            y, after = ctx.run(inputs[0], inputs[1:])
        outputs, grads = [], []
        for tensor, grad in zip((y, *after), (grad_y, *grad_after)):
            if grad is not None and tensor.requires_grad:
                outputs.append(tensor)
                grads.append(grad)
        wanted = [t for t in (*inputs, *parameters) if t.requires_grad]
        found = iter(torch.autograd.grad(outputs, wanted, grads, allow_unused=True)
                     if outputs and wanted else ())
        result = [next(found) if t.requires_grad else None for t in (*inputs, *parameters)]
        return (None, result[0], None, *result[1:])


def train_in_pieces(mixer, x, tokens: int):
    """The causal forward of ``mixer`` over x (B, L, dim) as prefills of ``tokens`` tokens
    from the state its whole forward starts from, each recomputed in the backward pass (see
    the module's text)."""
    state = mixer._training_start(x.shape[0], x.device, x.dtype)
    parameters = tuple(p for p in mixer.parameters() if p.requires_grad)
    outputs = []
    for piece in torch.split(x, tokens, dim=1):
        tensors, rebuild = _split(state)
        run = _Run(mixer, rebuild)
        y, *after = _Piece.apply(run, piece, len(tensors), *tensors, *parameters)
        state = run.rebuild_after(iter(after))
        outputs.append(y)
    return torch.cat(outputs, dim=1)
