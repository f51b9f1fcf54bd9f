"""Causal language model over any causal mixer, with incremental generation."""
from __future__ import annotations

import torch
from torch import nn

from attnarena._validate import check_int, inside
from attnarena.models.embedding import check_tokens
from attnarena.models.trunk import Backbone
from attnarena.stack import stack_decodes


class CausalLM(Backbone):
    """Decoder-only LM: token embedding, causal blocks, final norm, vocabulary head.

    ``mixer`` is a mechanism name or a hybrid stack (``"3*gla+softmax"``, see
    ``attnarena.stack``). ``generate`` decodes with each layer's ``step`` (O(1) per token for
    recurrent mixers, a KV cache for softmax attention; a hybrid stack keeps each layer's own
    state); a stack with a layer that has no recurrent form falls back to full forwards.
    Either way the tokens equal greedy decoding by repeated full forwards.

    The head is a separate linear map by default (its initial logits are small, so the
    initial loss is near ln(vocab_size)); ``tie_embeddings=True`` shares the embedding
    matrix, initialized then with std 0.02.
    """

    def __init__(self, vocab_size: int, *, dim: int = 64, depth: int = 2, heads: int = 4,
                 mixer: str = "softmax", mixer_options: dict | None = None,
                 mlp_dim: int | None = None, position: str = "learned", max_len: int = 1024,
                 dropout: float = 0.0, tie_embeddings: bool = False,
                 mixer_dim: int | None = None, norm: bool = True):
        super().__init__()
        self.vocab_size, self.mixer = vocab_size, mixer
        self.embed = nn.Embedding(vocab_size, dim)
        if tie_embeddings:
            # A tied head reads the token's own embedding back from the residual stream:
            # with N(0, 1) embeddings its logit starts near dim and the loss far above
            # ln(vocab_size). Small embeddings (std 0.02, as GPT-2 and nanoGPT) avoid that.
            nn.init.normal_(self.embed.weight, std=0.02)
        options = self._build_positions(position, max_len, dim, mixer, mixer_options, dropout)
        self._build_blocks(depth, dim, mixer, options, heads=heads, causal=True,
                           mlp_dim=mlp_dim, dropout=dropout, mixer_dim=mixer_dim, norm=norm)
        self.head = nn.Linear(dim, vocab_size, bias=False)
        if tie_embeddings:
            self.head.weight = self.embed.weight

    def _embed(self, tokens, offset=0):
        return self._positioned(self.embed(tokens.long()), offset)

    def forward_intermediates(self, tokens):
        """List of (B, L, dim) outputs, one per block."""
        check_tokens(tokens, self.vocab_size)
        return self.forward_blocks(self._embed(tokens), intermediates=True)

    def forward_features(self, tokens):
        """(B, L) ids -> (B, L, dim) features after the final norm."""
        check_tokens(tokens, self.vocab_size)
        return self.forward_blocks(self._embed(tokens))

    def forward_head(self, features):
        return self.head(features)

    def forward(self, tokens):
        """(B, L) ids -> (B, L, vocab) next-token logits."""
        return self.forward_head(self.forward_features(tokens))

    @torch.no_grad()
    def generate(self, prompt, max_new_tokens: int, *, temperature: float = 0.0,
                 top_k: int | None = None, generator: torch.Generator | None = None):
        """Continue ``prompt`` (B, P) by ``max_new_tokens`` tokens -> (B, P + max_new_tokens).

        temperature 0 picks the argmax (greedy); otherwise samples from softmax(logits / T),
        restricted to the ``top_k`` most likely tokens when given.
        """
        check_tokens(prompt, self.vocab_size, "prompt")
        check_int(max_new_tokens, "max_new_tokens", minimum=0)
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        was_training = self.training
        self.eval()
        try:
            if stack_decodes(self.mixer):
                return self._generate_incremental(prompt, max_new_tokens, temperature, top_k,
                                                  generator)
            return self._generate_full(prompt, max_new_tokens, temperature, top_k, generator)
        finally:
            self.train(was_training)

    def _pick(self, logits, temperature, top_k, generator):
        if temperature == 0:
            return logits.argmax(-1)
        logits = logits / temperature
        if top_k is not None:
            kth = logits.topk(min(top_k, logits.shape[-1]), dim=-1).values[..., -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        probs = torch.softmax(logits.float(), dim=-1)
        return torch.multinomial(probs, 1, generator=generator)[:, 0]

    def _generate_incremental(self, prompt, n, temperature, top_k, generator):
        x = self._embed(prompt)
        states = []
        with inside():  # the prompt was checked; tokens picked here are in range
            for block in self.blocks:
                x, state = block.prefill(x)
                states.append(state)
            logits = self.head(self.norm(x[:, -1]))
            tokens = [prompt]
            position = prompt.shape[1]
            for i in range(n):
                token = self._pick(logits, temperature, top_k, generator)
                tokens.append(token[:, None].to(prompt.dtype))
                if i == n - 1:
                    break
                x = self._embed(token[:, None], offset=position)[:, 0]
                for j, block in enumerate(self.blocks):
                    x, states[j] = block.step(x, states[j])
                logits = self.head(self.norm(x))
                position += 1
        return torch.cat(tokens, dim=1)

    def _generate_full(self, prompt, n, temperature, top_k, generator):
        tokens = prompt
        for _ in range(n):
            logits = self(tokens)[:, -1]
            token = self._pick(logits, temperature, top_k, generator)
            tokens = torch.cat([tokens, token[:, None].to(prompt.dtype)], dim=1)
        return tokens
