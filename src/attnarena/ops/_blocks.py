"""Chunk forms without gradients, run over blocks of a long sequence.

A chunk form computes a dozen intermediates as large as the sequence (scores and decays
of every chunk, pseudo-values, chunk states) before it frees them. glibc hands freed memory
that large back to the system, so every call over a long sequence faulted all of it in
again: at 16,384 tokens (B1 H4 D64) the gated delta rule took about 200 MiB of fresh pages
a call, a third of its time. Without gradients nothing needs those intermediates after
their block, so the sequence goes through in blocks of about ``INFERENCE_BLOCK`` tokens
(whole chunks), the state carried from block to block: the same chunks and arithmetic, so
the same outputs (up to float rounding where a form sums chunk states), and each block's
intermediates reuse the memory the last block freed. Under gradients autograd keeps the
intermediates anyway, and the forms run whole.
"""
from __future__ import annotations

import torch

INFERENCE_BLOCK = 1024  # tokens of one pass of a chunk form without gradients


def _tensors(value):
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (tuple, list)):
        return [t for part in value for t in _tensors(part)]
    return []


def recorded(*values) -> bool:
    """Whether autograd records an op over these tensors (nested in tuples; None ignored)."""
    return torch.is_grad_enabled() and any(t.requires_grad for t in _tensors(values))


def spans(length: int, size: int, offset: int = 0) -> list[int]:
    """Sizes of the consecutive pieces of ``length`` items taken in groups of ``size``, the
    first piece completing a group that already holds ``offset``. A loop over the pieces of a
    tensor takes them from one ``tensor.split(spans(...), dim)``: slicing the tensor afresh
    in every step gives every slice, in the backward pass, a zero-filled gradient as large
    as the whole tensor (at 2,048 tokens and mini-batches of 16, TTT's backward spent most
    of its time filling them)."""
    sizes = []
    while length > 0:
        n = min(size - offset, length)
        sizes.append(n)
        length, offset = length - n, (offset + n) % size
    return sizes


def in_blocks(run, sequences, state, chunk: int):
    """``run(sequences, state) -> (o, state)`` over the whole sequence, or over blocks of
    whole chunks of ``chunk`` tokens when nothing is recorded for autograd and the sequence
    is longer than a block. ``sequences``: tensors (B, H, L, ...) or None, cut along dim 2;
    ``o`` (B, H, L, D) is written block by block into one output."""
    length = next(t for t in sequences if t is not None).shape[2]
    block = max(chunk, INFERENCE_BLOCK // chunk * chunk)
    if length <= block or recorded(sequences, state):
        return run(sequences, state)
    out = None
    for begin in range(0, length, block):
        part = slice(begin, begin + block)
        o, state = run([None if t is None else t[:, :, part] for t in sequences], state)
        if out is None:
            out = o.new_empty(*o.shape[:2], length, *o.shape[3:])
        out[:, :, part] = o
    return out, state
