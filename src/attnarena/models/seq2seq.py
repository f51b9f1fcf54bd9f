"""Encoder-decoder (Vaswani et al. 2017) over any mixers: self attention by name in both
stacks, and cross attention from the decoder to the encoder's output by any mixer with a
cross pattern."""
from __future__ import annotations

import torch
from torch import nn

from attnarena.models.block import MLP
from attnarena._validate import check_finite, check_mask, entering, inside
from attnarena.models.embedding import check_tokens
from attnarena.models.positions import build_positions
from attnarena.models.trunk import block_stack
from attnarena.registry import create_mixer, list_mixers, mixer_info
from attnarena.stack import layer_mixers, stack_patterns


class DecoderBlock(nn.Module):
    """x + self(norm(x)), x + cross(norm(x), memory), x + mlp(norm(x))."""

    def __init__(self, dim, mixer: str, cross_mixer: str, *, heads, mixer_options=None,
                 cross_options=None, mlp_dim=None, dropout=0.0):
        super().__init__()
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.self_mixer = create_mixer(mixer, dim, heads=heads, causal=True,
                                       **(mixer_options or {}))
        self.cross_mixer = create_mixer(cross_mixer, dim, heads=heads, causal=False,
                                        **(cross_options or {}))
        self.mlp = MLP(dim, 4 * dim if mlp_dim is None else mlp_dim, dropout)
        self.drop = nn.Dropout(dropout)

    def forward(self, x, memory, memory_mask=None):
        x = x + self.drop(self.self_mixer(self.norm1(x)))
        x = x + self.drop(self.cross_mixer(self.norm2(x), context=memory, mask=memory_mask))
        return x + self.drop(self.mlp(self.norm3(x)))


class EncoderDecoder(nn.Module):
    """Sequence to sequence: ``forward(src, tgt, src_mask)`` gives next-token logits of tgt
    (teacher forcing); ``generate`` decodes greedily.

    Each of ``encoder_mixer``, ``decoder_mixer`` and ``cross_mixer`` is a mechanism name or a
    hybrid stack (see ``attnarena.stack``), repeated to the depth.
    """

    def __init__(self, src_vocab: int, tgt_vocab: int, *, dim: int = 64, depth: int = 2,
                 heads: int = 4, encoder_mixer: str = "softmax", decoder_mixer: str = "softmax",
                 cross_mixer: str = "softmax", mixer_options: dict | None = None,
                 mlp_dim: int | None = None, position: str = "learned", max_len: int = 1024,
                 dropout: float = 0.0):
        super().__init__()
        if "cross" not in stack_patterns(cross_mixer):
            able = [n for n in list_mixers() if "cross" in mixer_info(n).patterns]
            raise ValueError(f"cross_mixer {cross_mixer!r} has no cross pattern; mixers with "
                             f"one: {', '.join(able)}")
        self.src_vocab, self.tgt_vocab = src_vocab, tgt_vocab
        self.src_embed = nn.Embedding(src_vocab, dim)
        self.tgt_embed = nn.Embedding(tgt_vocab, dim)
        self.src_positions, enc_options = build_positions(position, max_len, dim, encoder_mixer,
                                                          mixer_options or {})
        self.tgt_positions, dec_options = build_positions(position, max_len, dim, decoder_mixer,
                                                          mixer_options or {})
        self.encoder = block_stack(depth, dim, encoder_mixer, heads=heads, causal=False,
                                   mixer_options=enc_options, mlp_dim=mlp_dim, dropout=dropout)
        self.decoder = nn.ModuleList(
            DecoderBlock(dim, name, cross, heads=heads, mixer_options=options,
                         cross_options=cross_options, mlp_dim=mlp_dim, dropout=dropout)
            for (name, options), (cross, cross_options) in zip(
                layer_mixers(decoder_mixer, depth, dec_options),
                layer_mixers(cross_mixer, depth)))
        self.enc_norm, self.dec_norm = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.head = nn.Linear(dim, tgt_vocab, bias=False)

    def encode(self, src, src_mask=None):
        """(B, S) ids -> (B, S, dim) memory."""
        check_tokens(src, self.src_vocab, "src")
        check_mask(src_mask, src.shape)
        x = self.src_embed(src.long())
        if self.src_positions is not None:
            x = self.src_positions(x)
        with inside():  # the ids and mask were checked: the blocks skip their entry checks
            for block in self.encoder:
                x = block(x, mask=src_mask)
        return self.enc_norm(x)

    def decode(self, tgt, memory, src_mask=None):
        """(B, T) ids and memory -> (B, T, tgt_vocab) logits."""
        check_tokens(tgt, self.tgt_vocab, "tgt")
        x = self.tgt_embed(tgt.long())
        if self.tgt_positions is not None:
            x = self.tgt_positions(x)
        if entering():
            check_finite(memory, "memory")
            check_mask(src_mask, memory.shape[:2], "memory")
        with inside():
            for block in self.decoder:
                x = block(x, memory, src_mask)
        return self.head(self.dec_norm(x))

    def forward(self, src, tgt, src_mask=None):
        return self.decode(tgt, self.encode(src, src_mask), src_mask)

    @torch.no_grad()
    def generate(self, src, start, max_new_tokens: int, src_mask=None):
        """Greedy decoding from ``start`` (B, P) ids -> (B, P + max_new_tokens)."""
        was_training = self.training
        self.eval()
        try:
            memory = self.encode(src, src_mask)
            tokens = start
            for _ in range(max_new_tokens):
                logits = self.decode(tokens, memory, src_mask)[:, -1]
                tokens = torch.cat([tokens, logits.argmax(-1, keepdim=True).to(tokens.dtype)], 1)
            return tokens
        finally:
            self.train(was_training)
