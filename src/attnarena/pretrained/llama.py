"""Swap the self-attention of a Llama-family causal language model for arena mechanisms.

A Llama layer's attention projects queries with ``q_proj`` (``heads`` heads) and keys and
values with ``k_proj`` and ``v_proj`` (``kv_heads`` heads, each shared by a group of
``heads / kv_heads`` query heads: grouped-query attention), rotates queries and keys by
their positions (RoPE) and mixes the values causally; ``o_proj`` maps the heads back.

``DecoderAttention`` keeps those four projections (the same ``nn.Linear`` modules) and the
rotation, and hands the rotated queries and keys to a *core*, one per mechanism, that does
the mixing in every form a decoder needs:

- ``forward``: the whole sequence at once (perplexity, training);
- ``prefill``: the same, also returning the decoding state after the last token;
- ``step``: one new token from that state.

The state of ``softmax`` is its key/value cache, which grows with the context; the state of
every other core has a fixed size, so a swapped model decodes in constant memory. Keys and
values stay at ``kv_heads`` heads in every state (the query heads of a group read the same
state), and RoPE is applied before a mechanism's feature map, as in LoLCATs.

Cores (what ``swap_decoder_attention`` takes):

- ``softmax``: exact attention through SDPA (the original model, with a key/value cache);
- ``hedgehog``: Hedgehog's learnable feature maps (Zhang et al. 2024), one per query head
  and one per key/value head, normalized linear attention;
- ``lolcats``: LoLCATs' sliding-window softmax plus Hedgehog linear attention under one
  normalizer, with its learnable per-head window factor, as released (Zhang et al. 2025),
  ``window`` 64 by default; its state is the last ``window - 1`` keys and values plus the
  linear state;
- ``gla``: gated linear attention (Yang et al. 2024) with Liger's construction (Lan et al.
  2025, "Liger: Linearizing Large Language Models to Gated Recurrent Structures"): softmax
  feature maps of the queries and keys and gates from the pretrained key projection
  (log g = logsigmoid(k) / 16), so the gates add no parameter; normalized by the gated sum
  of key features, as the softmax attention it replaces is;
- ``gated_deltanet``: the gated delta rule (Yang et al. 2025) with L2-normalized queries
  and keys and, after Liger, its decay and write strength from the pretrained keys: each
  head's mean key channel p gives log alpha = logsigmoid(p) / 16 and beta = sigmoid(p).
"""
from __future__ import annotations

import abc

import torch
import torch.nn.functional as F
from torch import nn

from attnarena import ops
from attnarena._validate import check_int, look_up
from attnarena.ops._checks import tracing

GATE_TEMPERATURE = 16.0  # GLA's gate normalizer, as Liger uses it
EPS = 1e-6  # added to linear attention's normalizer, as ops.linear_attention does


def rotate(x, cos, sin):
    """RoPE in the Llama layout (the two halves of each head rotated as pairs):
    x (B, H, L, D), cos and sin (B or 1, L, D)."""
    half = x.shape[-1] // 2
    turned = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos[:, None] + turned * sin[:, None]


def _grouped(x, kv_heads):
    """(B, H, ...) -> (B, kv_heads, H / kv_heads, ...): the query heads of each group."""
    return x.unflatten(1, (kv_heads, x.shape[1] // kv_heads))


def _shared(x, groups):
    """(B, kv_heads, ...) -> (B, kv_heads * groups, ...): each key/value head repeated for
    the query heads of its group (the sequence forms of ``ops`` take equal head counts)."""
    return x if groups == 1 else x.repeat_interleave(groups, dim=1)


def _with_ones(v):
    return torch.cat([v, torch.ones_like(v[..., :1])], dim=-1)


def _normalized(o):
    return o[..., :-1] / (o[..., -1:] + EPS)


class Core(nn.Module, metaclass=abc.ABCMeta):
    """The mixing of one swapped attention layer over rotated q (B, H, L, D) and k, v
    (B, kv_heads, L, D); ``raw_k`` is the key projection before rotation (gates),
    ``keep`` a (B, L) bool mask of real tokens or None."""

    mechanism = ""
    grows = False  # whether the decoding state grows with the context
    forms = ("parallel", "chunk")  # the sequence forms of its op, all equal
    form = "chunk"

    def __init__(self, heads: int, kv_heads: int, head_dim: int):
        super().__init__()
        self.heads, self.kv_heads, self.head_dim = heads, kv_heads, head_dim
        self.groups = heads // kv_heads

    @abc.abstractmethod
    def forward(self, q, k, v, raw_k, keep):
        """Outputs (B, H, L, D) of the whole causal sequence."""

    @abc.abstractmethod
    def prefill(self, q, k, v, raw_k, keep, reserve: int = 0):
        """(outputs, the state after the last token); ``reserve``: tokens to come."""

    @abc.abstractmethod
    def step(self, q, k, v, raw_k, state):
        """One token (L = 1) from ``state`` -> (outputs, the new state)."""

    # -- the state as plain tensors (a decoding step exported as a graph) --------------------

    def tensor_state(self, state) -> list[torch.Tensor]:
        """``state`` as the tensors a step graph takes (default: the one state ``S``)."""
        return [state["S"]]

    def tensor_grows(self) -> list[bool]:
        """Per tensor of ``tensor_state``: whether its axis 2 grows a token a step."""
        return [False]

    def tensor_step(self, q, k, v, raw_k, *tensors):
        """``step`` on the state as tensors -> (outputs, the tensors after the token); no
        Python number of the state takes part, so a traced graph holds at every step."""
        o, state = self.step(q, k, v, raw_k, {"S": tensors[0]})
        return o, [state["S"]]


class SoftmaxCore(Core):
    """Exact causal softmax attention (SDPA, key/value heads shared without copies); its
    decoding state is a key/value cache allocated for the prompt plus ``reserve`` tokens."""

    mechanism = "softmax"
    grows = True
    forms = ("parallel",)
    form = "parallel"

    def forward(self, q, k, v, raw_k, keep):
        gqa = self.groups != 1
        if gqa and tracing():  # ONNX has no grouped SDPA: heads shared by copies
            k, v, gqa = _shared(k, self.groups), _shared(v, self.groups), False
        if keep is None:
            return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)
        L = q.shape[2]
        allowed = torch.ones(L, L, dtype=torch.bool, device=q.device).tril()
        allowed = allowed[None, None] & keep[:, None, None, :]
        # a padded query that sees no key attends to itself (its output is never used)
        allowed = allowed | (torch.eye(L, device=q.device) > 0)  # ONNX: no bool EyeLike
        return F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, enable_gqa=gqa)

    def prefill(self, q, k, v, raw_k, keep, reserve=0):
        B, _, L, D = k.shape
        size = L + max(reserve, 1)
        cache_k = k.new_zeros(B, self.kv_heads, size, D)
        cache_v = v.new_zeros(B, self.kv_heads, size, v.shape[-1])
        cache_k[:, :, :L], cache_v[:, :, :L] = k, v
        mask = torch.ones(B, size, dtype=torch.bool, device=k.device)
        if keep is not None:
            mask[:, :L] = keep
        state = {"k": cache_k, "v": cache_v, "keep": mask, "length": L,
                 "padded": keep is not None and not bool(keep.all())}
        return self.forward(q, k, v, raw_k, keep), state

    def step(self, q, k, v, raw_k, state):
        n = state["length"]
        cache_k, cache_v, mask = state["k"], state["v"], state["keep"]
        if n == cache_k.shape[2]:  # past the reserve: grow by as much again
            cache_k = torch.cat([cache_k, torch.zeros_like(cache_k)], dim=2)
            cache_v = torch.cat([cache_v, torch.zeros_like(cache_v)], dim=2)
            mask = torch.cat([mask, torch.ones_like(mask)], dim=1)
        cache_k[:, :, n:n + 1], cache_v[:, :, n:n + 1] = k, v
        allowed = mask[:, None, None, :n + 1] if state["padded"] else None
        o = F.scaled_dot_product_attention(q, cache_k[:, :, :n + 1], cache_v[:, :, :n + 1],
                                           attn_mask=allowed, enable_gqa=True)
        return o, {**state, "k": cache_k, "v": cache_v, "keep": mask, "length": n + 1}

    def tensor_state(self, state):
        if state["padded"]:
            raise ValueError("a step graph takes the keys and values of unpadded prompts; "
                             "this cache holds left padding")
        n = state["length"]
        return [state["k"][:, :, :n], state["v"][:, :, :n]]

    def tensor_grows(self):
        return [True, True]

    def tensor_step(self, q, k, v, raw_k, keys, values):
        """The new key and value appended to the cache; the query heads of each group read
        their key/value head's cache (no copies)."""
        keys, values = torch.cat([keys, k], dim=2), torch.cat([values, v], dim=2)
        scores = _grouped(q, self.kv_heads)[:, :, :, 0] @ keys.transpose(-1, -2)
        weights = torch.softmax(scores * self.head_dim ** -0.5, dim=-1)
        o = (weights @ values).flatten(1, 2)[:, :, None]  # (B, H, 1, D)
        return o, [keys, values]


class HedgehogCore(Core):
    """Normalized linear attention through Hedgehog's feature map
    phi(x) = [softmax(W x), softmax(-W x)] (W the identity at first): one W per query head
    and one per key/value head, so the state stays at ``kv_heads`` heads.

    Options: feature_size (rows of each W; default head_dim)."""

    mechanism = "hedgehog"

    def __init__(self, heads, kv_heads, head_dim, *, feature_size=None):
        super().__init__(heads, kv_heads, head_dim)
        size = head_dim if feature_size is None else feature_size
        check_int(size, "feature_size")
        eye = torch.eye(size, head_dim)
        self.query_map = nn.Parameter(eye.repeat(heads, 1, 1))
        self.key_map = nn.Parameter(eye.repeat(kv_heads, 1, 1))

    def key_features(self, k, keep):
        fk = ops.hedgehog_features(k, self.key_map)
        return fk if keep is None else fk * keep[:, None, :, None].to(fk.dtype)

    def features(self, q, k, keep):
        return ops.hedgehog_features(q, self.query_map), self.key_features(k, keep)

    def forward(self, q, k, v, raw_k, keep):
        fq, fk = self.features(q, k, keep)
        return ops.linear_attention(fq, _shared(fk, self.groups), _shared(v, self.groups),
                                    causal=True, form=self.form)

    def _read(self, fq, S):
        """Outputs (B, H, 1, D) of one token's query features (B, H, 1, F) from the
        (B, kv_heads, F, D + 1) state."""
        return _normalized(_grouped(fq, self.kv_heads)[:, :, :, 0] @ S).flatten(1, 2)[:, :, None]

    def prefill(self, q, k, v, raw_k, keep, reserve=0):
        fq, fk = self.features(q, k, keep)
        o = ops.linear_attention(fq, _shared(fk, self.groups), _shared(v, self.groups),
                                 causal=True, form=self.form)
        return o, {"S": fk.transpose(-1, -2) @ _with_ones(v)}

    def step(self, q, k, v, raw_k, state):
        fq, fk = self.features(q, k, None)
        S = state["S"] + fk.transpose(-1, -2) @ _with_ones(v)
        return self._read(fq, S), {"S": S}


class LolcatsCore(HedgehogCore):
    """LoLCATs as released: the ``window`` most recent keys weighed by softmax scores
    shifted so that the largest is the head's learnable window factor g = sigmoid(w)
    (w = 0 at first), every earlier key by Hedgehog features, one normalizer over both
    (``ops.factored_window_linear_attention``). Decoding keeps a ring of the last
    ``window`` keys and values and the linear state of the keys before them.

    Options: window (default 64, as in LoLCATs), feature_size."""

    mechanism = "lolcats"

    def __init__(self, heads, kv_heads, head_dim, *, window=64, feature_size=None):
        super().__init__(heads, kv_heads, head_dim, feature_size=feature_size)
        check_int(window, "window")
        self.window = window
        self.window_factor = nn.Parameter(torch.zeros(heads))

    def forward(self, q, k, v, raw_k, keep):
        fq, fk = self.features(q, k, keep)
        g = self.groups
        return ops.factored_window_linear_attention(
            q, _shared(k, g), _shared(v, g), fq, _shared(fk, g), window=self.window,
            window_factor=torch.sigmoid(self.window_factor), mask=keep, form=self.form)

    def prefill(self, q, k, v, raw_k, keep, reserve=0):
        B, _, L, D = k.shape
        kept = torch.ones(B, L, dtype=torch.bool, device=k.device) if keep is None else keep
        W = self.window
        if L < W:  # pad the window at the front with slots that hold no key yet
            k, v = F.pad(k, (0, 0, W - L, 0)), F.pad(v, (0, 0, W - L, 0))
            kept = F.pad(kept, (W - L, 0), value=False)
        fk = self.key_features(k, kept)
        far = k.shape[2] - W  # keys before the window of the next token
        # the window is a ring of the last W keys; "slot" holds the oldest, which leaves
        # for the linear state at the next step
        state = {"S": fk[:, :, :far].transpose(-1, -2) @ _with_ones(v[:, :, :far]),
                 "k": k[:, :, far:].clone(), "v": v[:, :, far:].clone(),
                 "real": kept[:, far:].clone(), "slot": 0}
        return self.forward(q, k[:, :, -L:], v[:, :, -L:], raw_k, keep), state

    def step(self, q, k, v, raw_k, state):
        """One token; updates the state it is given in place (its ring of keys)."""
        keys, values, real, slot = state["k"], state["v"], state["real"], state["slot"]
        # the oldest key leaves the window for the linear state, the new one takes its slot
        old = self.key_features(keys[:, :, slot:slot + 1], real[:, slot:slot + 1])
        S = state["S"] + old.transpose(-1, -2) @ _with_ones(values[:, :, slot:slot + 1])
        keys[:, :, slot:slot + 1], values[:, :, slot:slot + 1] = k, v
        real[:, slot] = True
        new = {"S": S, "k": keys, "v": values, "real": real, "slot": (slot + 1) % self.window}
        return self._read_window(q, keys, values, real, S), new

    def _read_window(self, q, keys, values, real, S):
        """Outputs (B, H, 1, D) of one token's queries over the window (its keys in any
        order, the newest among them) and the linear state ``S`` of the keys before it."""
        fq = ops.hedgehog_features(q, self.query_map)
        factor = torch.sigmoid(self.window_factor).view(self.kv_heads, self.groups)
        o = ops.factored_window_linear_step(
            _grouped(q, self.kv_heads)[:, :, :, 0], keys, values, real,
            _grouped(fq, self.kv_heads)[:, :, :, 0], S, window_factor=factor)
        return o.flatten(1, 2)[:, :, None]

    def tensor_state(self, state):
        """The ring turned so that its oldest key comes first."""
        slot = state["slot"]
        return [state["S"], state["k"].roll(-slot, 2), state["v"].roll(-slot, 2),
                state["real"].roll(-slot, 1)]

    def tensor_grows(self):
        return [False] * 4

    def tensor_step(self, q, k, v, raw_k, S, keys, values, real):
        """As ``step``, the window kept oldest first: the first key leaves for the linear
        state and the new one is appended (the window's order does not matter to its
        softmax), so no slot number is carried."""
        old = self.key_features(keys[:, :, :1], real[:, :1])
        S = S + old.transpose(-1, -2) @ _with_ones(values[:, :, :1])
        keys, values = torch.cat([keys[:, :, 1:], k], dim=2), torch.cat([values[:, :, 1:], v], 2)
        real = torch.cat([real[:, 1:], torch.ones_like(real[:, :1])], dim=1)
        return self._read_window(q, keys, values, real, S), [S, keys, values, real]


def _gates(raw_k, keep):
    """Liger's gates from the pretrained key projection: logsigmoid(k) / 16, 0 on padding."""
    log_g = F.logsigmoid(raw_k) / GATE_TEMPERATURE
    return log_g if keep is None else log_g * keep[:, None, :, None].to(log_g.dtype)


class GLACore(Core):
    """Gated linear attention with Liger's gates (no parameters of its own): softmax
    feature maps of q and k over the head's channels, per-channel gates from the key
    projection, normalized by the gated sum of key features."""

    mechanism = "gla"

    def _inputs(self, q, k, raw_k, keep):
        fk = torch.softmax(k, dim=-1)
        if keep is not None:
            fk = fk * keep[:, None, :, None].to(fk.dtype)
        return torch.softmax(q, dim=-1), fk, _gates(raw_k, keep)

    def _sequence(self, q, k, v, raw_k, keep, state):
        fq, fk, log_g = self._inputs(q, k, raw_k, keep)
        g = self.groups
        o, S = ops.gla(fq, _shared(fk, g), _shared(_with_ones(v), g), log_g=_shared(log_g, g),
                       form=self.form, return_state=True)
        return _normalized(o), {"S": S[:, ::g]}  # the query heads of a group share a state

    def forward(self, q, k, v, raw_k, keep):
        return self._sequence(q, k, v, raw_k, keep, None)[0]

    def prefill(self, q, k, v, raw_k, keep, reserve=0):
        return self._sequence(q, k, v, raw_k, keep, None)

    def step(self, q, k, v, raw_k, state):
        fq, fk, log_g = self._inputs(q, k, raw_k, None)
        S = log_g[:, :, 0, :, None].exp() * state["S"] + fk.transpose(-1, -2) @ _with_ones(v)
        o = _normalized(_grouped(fq, self.kv_heads)[:, :, :, 0] @ S)
        return o.flatten(1, 2)[:, :, None], {"S": S}


class GatedDeltaCore(Core):
    """The gated delta rule S_t = alpha_t (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T
    over L2-normalized q and k, with alpha and beta from each head's mean key channel
    (no parameters of its own)."""

    mechanism = "gated_deltanet"

    def _inputs(self, q, k, raw_k, keep):
        pooled = raw_k.mean(-1)  # (B, kv_heads, L)
        log_alpha, beta = F.logsigmoid(pooled) / GATE_TEMPERATURE, torch.sigmoid(pooled)
        if keep is not None:
            real = keep[:, None, :].to(beta.dtype)
            log_alpha, beta = log_alpha * real, beta * real
        return F.normalize(q, dim=-1), F.normalize(k, dim=-1), log_alpha, beta

    def _sequence(self, q, k, v, raw_k, keep):
        q, k, log_alpha, beta = self._inputs(q, k, raw_k, keep)
        g = self.groups
        o, S = ops.gated_delta_rule(q, _shared(k, g), _shared(v, g),
                                    log_alpha=_shared(log_alpha, g), beta=_shared(beta, g),
                                    form=self.form, return_state=True)
        return o, {"S": S[:, ::g]}

    def forward(self, q, k, v, raw_k, keep):
        return self._sequence(q, k, v, raw_k, keep)[0]

    def prefill(self, q, k, v, raw_k, keep, reserve=0):
        return self._sequence(q, k, v, raw_k, keep)

    def step(self, q, k, v, raw_k, state):
        q, k, log_alpha, beta = self._inputs(q, k, raw_k, None)
        k_t, v_t = k[:, :, 0], v[:, :, 0]  # (B, kv_heads, D)
        S = log_alpha[:, :, 0, None, None].exp() * state["S"]
        error = v_t - (k_t[:, :, None, :] @ S)[:, :, 0]
        S = S + beta[:, :, 0, None, None] * k_t[..., :, None] * error[..., None, :]
        o = _grouped(q, self.kv_heads)[:, :, :, 0] @ S
        return o.flatten(1, 2)[:, :, None], {"S": S}


CORES = {core.mechanism: core for core in
         (SoftmaxCore, HedgehogCore, LolcatsCore, GLACore, GatedDeltaCore)}


def decoder_mechanisms() -> list[str]:
    """Mechanisms that can take over a Llama-family decoder's attention."""
    return [name for name in CORES if name != "softmax"]


def check_decoder_swap(mechanism: str, options: dict | None = None) -> None:
    """ValueError unless ``mechanism`` with ``options`` can stand in for a decoder's
    attention (checked on a tiny core)."""
    look_up(mechanism, CORES, "mechanism for a pretrained decoder",
            "mechanisms that take over a Llama-family decoder's attention")
    try:
        CORES[mechanism](2, 1, 4, **dict(options or {}))
    except TypeError as error:
        raise ValueError(f"mechanism {mechanism!r} in a decoder takes other options: "
                         f"{error}") from None


class DecoderAttention(nn.Module):
    """A Llama-family attention whose mixing is an arena core; the projections are the
    pretrained modules. Called as transformers calls a layer's attention (``model(ids)``
    works), or through ``sequence`` with decoding states.

    Attributes:
        core: the mechanism's ``Core``; mechanism, options: the swap record.
    """

    def __init__(self, attention, mechanism: str, options: dict | None = None, *, rotary=None):
        super().__init__()
        options = dict(options or {})
        check_decoder_swap(mechanism, options)
        config = attention.config
        self.q_proj, self.k_proj = attention.q_proj, attention.k_proj
        self.v_proj, self.o_proj = attention.v_proj, attention.o_proj
        self.heads, self.kv_heads = config.num_attention_heads, config.num_key_value_heads
        self.head_dim = attention.head_dim
        self.layer_idx = getattr(attention, "layer_idx", None)
        self.config = config
        self.core = CORES[mechanism](self.heads, self.kv_heads, self.head_dim, **options)
        self.core.to(device=attention.q_proj.weight.device, dtype=attention.q_proj.weight.dtype)
        self.mechanism, self.options = mechanism, options
        self._rotary = [rotary]  # the model's rotary module, not a child of this one

    def extra_repr(self) -> str:
        return f"mechanism={self.mechanism!r}, options={self.options}"

    @property
    def dim(self) -> int:
        return self.q_proj.in_features

    def positions(self, hidden, keep, start=0):
        """(cos, sin) of each token's position: counted over real tokens (left padding)."""
        B, L, _ = hidden.shape
        if keep is None:
            position = torch.arange(start, start + L, device=hidden.device)[None]
        else:
            position = (keep.long().cumsum(-1) - 1).clamp_min(0) + start
        rotary = self._rotary[0]
        if rotary is None:
            raise ValueError("this attention was built without the model's rotary module")
        return rotary(hidden, position)

    def project(self, hidden, cos, sin):
        B, L, _ = hidden.shape
        q = self.q_proj(hidden).view(B, L, self.heads, self.head_dim).transpose(1, 2)
        raw_k = self.k_proj(hidden).view(B, L, self.kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(hidden).view(B, L, self.kv_heads, self.head_dim).transpose(1, 2)
        return rotate(q, cos, sin), rotate(raw_k, cos, sin), v, raw_k

    def sequence(self, hidden, position_embeddings, keep=None, state=None, *,
                 want_state=False, reserve=0):
        """The attention's output (B, L, width) and, with ``want_state`` or a ``state``,
        the decoding state after the last token (a ``state`` continues one token)."""
        q, k, v, raw_k = self.project(hidden, *position_embeddings)
        if state is not None:
            if hidden.shape[1] != 1:
                raise ValueError(f"a decoding step takes one token, got {hidden.shape[1]}")
            o, state = self.core.step(q, k, v, raw_k, state)
        elif want_state:
            o, state = self.core.prefill(q, k, v, raw_k, keep, reserve)
        else:
            o = self.core(q, k, v, raw_k, keep)
        return self.output(o, hidden.dtype), state

    def output(self, o, dtype):
        """The heads' outputs (B, H, L, D) mapped back to the width: (B, L, width)."""
        return self.o_proj(o.transpose(1, 2).flatten(2).to(dtype))

    def forward(self, hidden_states, position_embeddings=None, attention_mask=None, **kwargs):
        """As transformers calls a Llama attention, without its key/value cache (the arena's
        ``generate`` carries each mechanism's own state; transformers' ``generate`` runs
        the whole sequence again for each token, as the model's ``use_cache`` is off)."""
        from attnarena.pretrained.swap import key_mask

        if kwargs.get("cache", kwargs.get("past_key_values")) is not None:
            raise ValueError("an arena decoder keeps no transformers cache (use_cache must be "
                             "off): decode with attnarena's PretrainedDecoder.generate, which "
                             "carries each mechanism's own state")
        keep = key_mask(attention_mask, hidden_states.shape[1])
        if position_embeddings is None:
            position_embeddings = self.positions(hidden_states, keep)
        return self.sequence(hidden_states, position_embeddings, keep)[0], None


def decoder_layers(model) -> list[nn.Module]:
    """The decoder layers of a Llama-family causal LM (``model.model.layers``)."""
    inner = getattr(model, "model", None)
    layers = getattr(inner, "layers", None)
    if not isinstance(layers, nn.ModuleList) or not all(
            hasattr(layer, "self_attn") and hasattr(layer, "mlp") for layer in layers):
        return []
    return list(layers)


def swap_decoder_attention(model, mechanism: str, *, layers=None, keep_softmax=(),
                           **options) -> list[int]:
    """Replace the attention of ``layers`` (default: all) of a Llama-family model by
    ``mechanism`` (a ``DecoderAttention``), except ``keep_softmax``; returns the indices
    swapped. ``softmax`` gives the original model with a decoding cache."""
    from attnarena.subject import resolve_layers

    found = decoder_layers(model)
    if not found:
        raise ValueError(f"found no Llama-style decoder layers in {type(model).__name__}")
    check_decoder_swap(mechanism, options)
    chosen = resolve_layers(len(found), layers, keep_softmax)
    for index in chosen:
        if isinstance(found[index].self_attn, DecoderAttention) \
                and found[index].self_attn.mechanism != "softmax":
            raise ValueError(f"layer {index} is already swapped "
                             f"({found[index].self_attn.mechanism})")
    rotary = model.model.rotary_emb
    no_transformers_cache(model)
    for index in chosen:
        found[index].self_attn = DecoderAttention(found[index].self_attn, mechanism, options,
                                                  rotary=rotary)
    return chosen


def no_transformers_cache(model) -> None:
    """Turn transformers' key/value cache off: the swapped layers carry their own state."""
    model.config.use_cache = False
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.use_cache = False


def decoder_swap_record(model) -> dict:
    """Which layers hold which mechanism, as plain data (softmax layers left out)."""
    return {"layers": {str(i): {"mixer": layer.self_attn.mechanism,
                                "options": layer.self_attn.options}
                       for i, layer in enumerate(decoder_layers(model))
                       if isinstance(layer.self_attn, DecoderAttention)
                       and layer.self_attn.mechanism != "softmax"}}
