"""A log-depth inclusive scan (Hillis and Steele 1986) for any associative combine."""
from __future__ import annotations

import torch


def associative_scan(elements: tuple, combine, axis: int) -> tuple:
    """Every prefix of ``elements`` (tensors sharing a time ``axis``, counted from the
    front) composed with ``combine(earlier, later)``: after round r each position holds
    the composition of the 2^r positions ending there; ceil(log2 L) rounds."""
    L, offset = elements[0].shape[axis], 1
    while offset < L:
        earlier = tuple(e.narrow(axis, 0, L - offset) for e in elements)
        later = tuple(e.narrow(axis, offset, L - offset) for e in elements)
        merged = combine(earlier, later)
        elements = tuple(torch.cat([e.narrow(axis, 0, offset), m], dim=axis)
                         for e, m in zip(elements, merged))
        offset *= 2
    return elements
