"""Training in pieces: a causal mixer with a fixed-size state runs a long forward under
gradients as pieces of a few hundred tokens, its state carried from piece to piece, and
recomputes each piece's intermediates in the backward pass instead of keeping them.

Autograd keeps every intermediate of a forward until the backward pass uses it: for a
chunked recurrence, dozens of tensors the size of the input (projections, gates, feature
maps, each chunk's scores and states), so a linear-time mechanism trains with more memory
than exact attention, whose fused kernel keeps only its inputs, output and one row
statistic. Here the forward runs piece by piece without autograd and keeps only the input
and the (small) state each piece started from; the backward pass visits the pieces last to
first, reruns each one's forward with autograd from its state, and back-propagates through
it both its output's gradient and the gradient of the state it handed on. What stays
allocated is the input, the output, their gradients and one piece's intermediates; the
price is the forward run twice (the trade of activation checkpointing, Chen et al. 2016,
"Training Deep Nets with Sublinear Memory Cost"), and the gradients are the whole
forward's (first derivatives only).

The whole loop is one autograd node that writes each piece's output and input gradient
into one buffer: no graph is kept between pieces and nothing small outlives a piece, so
the heap reuses the same memory from piece to piece (``torch.utils.checkpoint`` around each
piece builds the pieces' graphs during the forward pass; their small objects, scattered
over what earlier pieces freed, kept glibc's heap from reusing it, and the resident size
grew to five times what was live).
"""
from __future__ import annotations

import dataclasses

import torch
from torch.nn.modules import module as torch_module


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


class _Pieces(torch.autograd.Function):
    """(x, parameters) -> the mixer's causal output over x, computed as pieces without a
    graph; the backward pass recomputes them last to first from their saved start states."""

    @staticmethod
    def forward(ctx, mixer, tokens, start, x, *parameters):
        device = x.device.type
        ctx.mixer, ctx.tokens = mixer, tokens
        ctx.autocast = (device, torch.is_autocast_enabled(device),
                        torch.get_autocast_dtype(device))
        ctx.starts, ctx.rngs = [], []

        def remember(state):
            ctx.starts.append(state)
            ctx.rngs.append(_rng_state(x.device))

        with torch.no_grad():
            y = mixer._prefill_pieces(x, tokens, start, before=remember)
        ctx.save_for_backward(x, *parameters)
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_y):
        x, *parameters = ctx.saved_tensors
        needs_x = ctx.needs_input_grad[3]
        grad_x = torch.zeros_like(x) if needs_x else None
        grad_parameters = [None] * len(parameters)
        carried = None  # gradients of the state the piece after this one started from
        device, autocast_on, autocast_dtype = ctx.autocast
        for index in reversed(range(len(ctx.starts))):
            begin = index * ctx.tokens
            piece = x[:, begin:begin + ctx.tokens].detach().requires_grad_(needs_x)
            tensors, rebuild = _split(ctx.starts[index])
            tensors = [t.detach().requires_grad_(index > 0 and _differentiable(t))
                       for t in tensors]
            with _replayed_rng(x.device, ctx.rngs[index]), torch.enable_grad(), \
                    torch.autocast(device, dtype=autocast_dtype, enabled=autocast_on):
                y, after = ctx.mixer._prefill(piece, rebuild(iter(tensors)))
            outputs, grads = [y], [grad_y[:, begin:begin + y.shape[1]]]
            if carried is not None:
                for tensor, grad in zip(_split(after)[0], carried):
                    if grad is not None and tensor.requires_grad:
                        outputs.append(tensor)
                        grads.append(grad)
            wanted = [t for t in (piece, *tensors, *parameters) if t.requires_grad]
            _check_leaves(outputs, wanted)
            found = iter(torch.autograd.grad(outputs, wanted, grads, allow_unused=True)
                         if wanted else ())
            got = [next(found) if t.requires_grad else None
                   for t in (piece, *tensors, *parameters)]
            del y, after, outputs, grads
            if needs_x and got[0] is not None:
                grad_x[:, begin:begin + piece.shape[1]] = got[0]
            carried = got[1:1 + len(tensors)]
            for i, grad in enumerate(got[1 + len(tensors):]):
                if grad is not None:
                    if grad_parameters[i] is None:
                        grad_parameters[i] = grad
                    else:
                        grad_parameters[i] += grad
        return (None, None, None, grad_x, *grad_parameters)


def _rng_state(device):
    return (torch.get_rng_state(),
            torch.cuda.get_rng_state(device) if device.type == "cuda" else None)


class _replayed_rng:
    """The random number generators as they were when a piece first ran, for its rerun."""

    def __init__(self, device, state):
        self.device, self.state = device, state
        self.fork = torch.random.fork_rng(devices=[device] if device.type == "cuda" else [])

    def __enter__(self):
        self.fork.__enter__()
        torch.set_rng_state(self.state[0])
        if self.state[1] is not None:
            torch.cuda.set_rng_state(self.state[1], self.device)

    def __exit__(self, *exc):
        return self.fork.__exit__(*exc)


def _check_leaves(outputs, known) -> None:
    """Refuse (rather than drop their gradients) tensors that require gradients reaching a
    piece from outside the mixer's input, state and parameters."""
    known = {id(t) for t in known}
    seen, stack = set(), [t.grad_fn for t in outputs if t.grad_fn is not None]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        leaf = getattr(node, "variable", None)
        if leaf is not None and id(leaf) not in known:
            raise RuntimeError(
                f"training in pieces recomputed a forward that uses a tensor of shape "
                f"{tuple(leaf.shape)} requiring gradients from outside the mixer's input, "
                "state and parameters; its gradient would be lost. Leave the option "
                "train_rows unset (mixer.train_rows = None) to train it whole")
        stack.extend(next_node for next_node, _ in node.next_functions)


def tokens_per_piece(rows: int, batch_size: int) -> int:
    """Tokens of a training piece holding about ``rows`` rows (batch x tokens)."""
    return -(-rows // max(batch_size, 1))


def has_hooks(module) -> bool:
    """Whether a forward or backward hook may see (or bring in) tensors inside ``module``
    (its own hooks see its forward once either way); training in pieces then runs whole, so
    hooks see each forward once as they expect."""
    if (torch_module._global_forward_hooks or torch_module._global_forward_pre_hooks
            or torch_module._global_backward_hooks
            or torch_module._global_backward_pre_hooks):
        return True
    return any(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks
               or m._backward_pre_hooks for m in module.modules() if m is not module)


def train_in_pieces(mixer, x, tokens: int):
    """The causal forward of ``mixer`` over x (B, L, dim) as prefills of ``tokens`` tokens
    from the state its whole forward starts from, each recomputed in the backward pass (see
    the module's text). None where that state requires gradients itself."""
    start = mixer._training_start(x.shape[0], x.device, x.dtype)
    if any(t.requires_grad for t in _split(start)[0]):
        return None
    parameters = tuple(p for p in mixer.parameters() if p.requires_grad)
    return _Pieces.apply(mixer, tokens, start, x, *parameters)
