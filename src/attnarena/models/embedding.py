"""Token and patch embeddings with input checks shared by the backbones."""
from __future__ import annotations

import torch
from torch import nn


def check_tokens(tokens, vocab_size: int, name: str = "tokens") -> None:
    if not isinstance(tokens, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of token ids, got {type(tokens).__name__}")
    if tokens.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
        raise TypeError(f"{name} must hold integer token ids, got dtype {tokens.dtype}")
    if tokens.dim() != 2 or tokens.shape[1] == 0:
        raise ValueError(f"{name} must have shape (batch, length) with length >= 1, "
                         f"got {tuple(tokens.shape)}")
    if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= vocab_size):
        raise ValueError(f"{name} must lie in [0, {vocab_size}), got values in "
                         f"[{int(tokens.min())}, {int(tokens.max())}]")


class PatchEmbedding(nn.Module):
    """(B, C, H, W) images -> (B, (H/p) * (W/p), dim) tokens, one per p x p patch."""

    def __init__(self, image_size: int, patch_size: int, channels: int, dim: int):
        super().__init__()
        if image_size % patch_size:
            raise ValueError(f"image_size {image_size} must be a multiple of patch_size "
                             f"{patch_size}")
        self.image_size, self.channels = image_size, channels
        self.num_patches = (image_size // patch_size) ** 2
        self.proj = nn.Conv2d(channels, dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, images):
        expected = (self.channels, self.image_size, self.image_size)
        if not isinstance(images, torch.Tensor) or images.dim() != 4 \
                or tuple(images.shape[1:]) != expected:
            got = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images)
            raise ValueError(f"images must have shape (batch, {', '.join(map(str, expected))}), "
                             f"got {got}")
        if not images.is_floating_point():
            images = images.float()
        images = images.to(self.proj.weight.dtype)
        return self.proj(images).flatten(2).transpose(1, 2)
