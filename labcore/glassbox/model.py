"""A glass-box decoder-only transformer, written to be read.

One file, nanoGPT-sized, with a hook point (labcore.glassbox.hooks.HookPoint) on every activation a
learner wants to look at. Attention is computed by hand so the scores and the pattern exist as
tensors whenever something looks at them; with no such hook active, GPTConfig.attn_impl may
switch to the fused F.scaled_dot_product_attention (by default on CUDA only). Variants are
switched by the config, so one class covers a 2017-style block (learned or sinusoidal
positions, LayerNorm, GELU) and a Llama-style block (RoPE, RMSNorm, SwiGLU), and the pieces
can be compared one at a time.

Shapes: B batch, T positions, d d_model, H n_heads, dh d_head, m d_mlp, V vocab.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields, replace
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from labcore.glassbox.hooks import HookedModule, HookPoint, expand_hook_names

Positional = Literal["learned", "sinusoidal", "rope", "none"]
NormKind = Literal["layernorm", "rmsnorm", "none"]
MLPKind = Literal["gelu", "swiglu", "none"]


class ConfigError(ValueError):
    """A model config that cannot build a model; the message names the field and the fix."""


@dataclass(frozen=True)
class GPTConfig:
    vocab_size: int = 64  # number of token ids
    n_ctx: int = 64  # longest sequence; size of the learned position table
    d_model: int = 64  # width of the residual stream
    n_layers: int = 2  # number of transformer blocks
    n_heads: int = 4  # attention heads per block
    d_head: int | None = None  # per-head width; default d_model // n_heads
    d_mlp: int | None = None  # MLP hidden width; default 4·d_model (8/3·d_model rounded for swiglu)
    positional: Positional = "learned"  # how position enters: added table, added sinusoids, rotated q/k, or not at all
    norm: NormKind = "layernorm"  # pre-norm before attention, MLP and unembedding
    mlp: MLPKind = "gelu"  # "none" gives an attention-only model
    tied_embeddings: bool = True  # unembedding = embeddingᵀ (Vaswani et al. §3.4, nanoGPT)
    attn_scale: float | None = None  # multiplies q·k; default 1/√d_head (None); 1.0 = unscaled
    embed_scale: float = 1.0  # multiplies the token embedding (Vaswani et al. use √d_model)
    bias: bool = False  # biases on the linear layers and norms
    init_std: float = 0.02  # std of the normal init of weights and embeddings
    rope_theta: float = 10000.0  # RoPE base frequency
    norm_eps: float = 1e-5  # epsilon inside LayerNorm/RMSNorm
    # attention kernel: "manual" = by hand (scores and pattern exist); "sdpa" = fused
    # F.scaled_dot_product_attention whenever no hook on q/k/scores/pattern/z is active;
    # "auto" = sdpa on CUDA tensors only (CPU runs stay bitwise identical to "manual")
    attn_impl: Literal["auto", "manual", "sdpa"] = "auto"
    # "pre": x + sublayer(norm(x)), final norm before the unembedding (GPT-2); "post": norm(x + sublayer(x)),
    # no final norm (Vaswani et al. 2017; the post-LN of Xiong et al. 2020, arXiv 2002.04745)
    norm_position: Literal["pre", "post"] = "pre"

    def __post_init__(self) -> None:
        def bad(field: str, why: str) -> ConfigError:
            return ConfigError(f"GPTConfig.{field}={getattr(self, field)!r}: {why}")

        for name in ("vocab_size", "n_ctx", "d_model", "n_layers", "n_heads"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise bad(name, "must be a positive integer")
        if self.d_head is None and self.d_model % self.n_heads:
            raise bad(
                "d_model",
                f"not divisible by n_heads={self.n_heads}; change one of them or set d_head explicitly",
            )
        if self.d_head is not None and self.d_head < 1:
            raise bad("d_head", "must be a positive integer")
        if self.d_mlp is not None and self.d_mlp < 1:
            raise bad("d_mlp", "must be a positive integer")
        if self.positional not in ("learned", "sinusoidal", "rope", "none"):
            raise bad("positional", "use one of learned, sinusoidal, rope, none")
        if self.norm not in ("layernorm", "rmsnorm", "none"):
            raise bad("norm", "use one of layernorm, rmsnorm, none")
        if self.attn_impl not in ("auto", "manual", "sdpa"):
            raise bad("attn_impl", "use one of auto, manual, sdpa")
        if self.mlp not in ("gelu", "swiglu", "none"):
            raise bad("mlp", "use one of gelu, swiglu, none")
        if self.norm_position not in ("pre", "post"):
            raise bad("norm_position", "use one of pre, post")
        if self.positional == "rope" and self.head_dim % 2:
            raise bad("d_head", "RoPE rotates pairs of dimensions, so d_head must be even")
        if self.positional == "sinusoidal" and self.d_model % 2:
            raise bad("d_model", "sinusoidal positions pair sin/cos, so d_model must be even")

    @property
    def head_dim(self) -> int:
        return self.d_head if self.d_head is not None else self.d_model // self.n_heads

    @property
    def mlp_dim(self) -> int:
        if self.d_mlp is not None:
            return self.d_mlp
        if self.mlp == "swiglu":  # keep the parameter count of a 4·d GELU MLP (Shazeer 2020)
            return int(8 * self.d_model / 3)
        return 4 * self.d_model

    @property
    def scale(self) -> float:
        return self.attn_scale if self.attn_scale is not None else 1.0 / math.sqrt(self.head_dim)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> GPTConfig:
        data = json.loads(text)
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ConfigError(f"GPTConfig has no field(s) {sorted(unknown)}; saved by a newer labcore?")
        return cls(**data)


def sinusoidal_positions(n_positions: int, d_model: int, dtype=torch.float32) -> torch.Tensor:
    """PE(pos, 2i) = sin(pos / 10000^(2i/d)), PE(pos, 2i+1) = cos(...)  (Vaswani et al. §3.5)."""
    pos = torch.arange(n_positions, dtype=torch.float64)[:, None]  # (T, 1)
    freq = 10000.0 ** (-torch.arange(0, d_model, 2, dtype=torch.float64) / d_model)  # (d/2,)
    angles = pos * freq  # (T, d/2)
    pe = torch.zeros(n_positions, d_model, dtype=torch.float64)
    pe[:, 0::2] = torch.sin(angles)
    pe[:, 1::2] = torch.cos(angles)
    return pe.to(dtype)


def rope_cos_sin(n_positions: int, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin tables (T, dh) for rotary embeddings, in the rotate-half layout Llama uses."""
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)  # (dh/2,)
    angles = torch.arange(n_positions, dtype=torch.float32)[:, None] * inv_freq  # (T, dh/2)
    angles = torch.cat([angles, angles], dim=-1)  # (T, dh)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate each pair (x_i, x_{i+dh/2}) by its position's angle: x·cos + rotate_half(x)·sin."""
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos[:, None, :] + rotated * sin[:, None, :]  # x: (B, T, H, dh); cos: (T, dh)


class RMSNorm(nn.Module):
    """x / √(mean(x²) + ε) · g  (Zhang & Sennrich 2019), no mean subtraction."""

    def __init__(self, d: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


class Norm(nn.Module):
    """The configured pre-norm, followed by a hook on its output."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        if cfg.norm == "layernorm":
            self.norm = nn.LayerNorm(cfg.d_model, eps=cfg.norm_eps, bias=cfg.bias)
        elif cfg.norm == "rmsnorm":
            self.norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        else:
            self.norm = nn.Identity()
        self.hook_normalized = HookPoint()  # (B, T, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.hook_normalized(self.norm(x))


class Attention(nn.Module):
    """Causal multi-head attention, softmax(q·kᵀ · scale + mask) · v, computed explicitly."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.cfg = cfg
        H, dh, d = cfg.n_heads, cfg.head_dim, cfg.d_model
        self.W_Q = nn.Linear(d, H * dh, bias=cfg.bias)
        self.W_K = nn.Linear(d, H * dh, bias=cfg.bias)
        self.W_V = nn.Linear(d, H * dh, bias=cfg.bias)
        self.W_O = nn.Linear(H * dh, d, bias=cfg.bias)
        self.hook_q = HookPoint()  # (B, T, H, dh)
        self.hook_k = HookPoint()  # (B, T, H, dh)
        self.hook_v = HookPoint()  # (B, T, H, dh)
        self.hook_attn_scores = HookPoint()  # (B, H, T_q, T_k)
        self.hook_pattern = HookPoint()  # (B, H, T_q, T_k)
        self.hook_z = HookPoint()  # (B, T, H, dh)
        self.hook_result = HookPoint()  # (B, T, H, d)

    def _use_sdpa(self, x: torch.Tensor) -> bool:
        """The fused kernel only when the config allows it and no hook would miss an activation."""
        impl = self.cfg.attn_impl
        if impl == "manual" or (impl == "auto" and not x.is_cuda):
            return False
        watched = (self.hook_q, self.hook_k, self.hook_attn_scores, self.hook_pattern, self.hook_z)
        return not any(h._forward_hooks or h._forward_pre_hooks for h in watched)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
        B, T, _ = x.shape
        H, dh = self.cfg.n_heads, self.cfg.head_dim
        q = self.W_Q(x).view(B, T, H, dh)  # (B, T, H, dh)
        k = self.W_K(x).view(B, T, H, dh)
        v = self.hook_v(self.W_V(x).view(B, T, H, dh))
        if rope is not None:
            cos, sin = rope
            q, k = apply_rope(q, cos[:T], sin[:T]), apply_rope(k, cos[:T], sin[:T])
        if self._use_sdpa(x):  # nobody looks at q, k, scores, pattern or z: fused kernel
            z = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                               is_causal=True, scale=self.cfg.scale).transpose(1, 2)
        else:
            q, k = self.hook_q(q), self.hook_k(k)

            scores = torch.einsum("bqhd,bkhd->bhqk", q, k) * self.cfg.scale  # (B, H, T_q, T_k)
            causal = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
            scores = self.hook_attn_scores(scores.masked_fill(~causal, float("-inf")))
            pattern = self.hook_pattern(scores.softmax(dim=-1))  # rows sum to 1 over keys ≤ query

            z = self.hook_z(torch.einsum("bhqk,bkhd->bqhd", pattern, v))  # (B, T, H, dh)
        if not self.hook_result._forward_hooks:  # nobody looks at single heads: one matmul
            return self.W_O(z.reshape(B, T, H * dh))  # (B, T, d)
        # Each head's contribution to the residual stream: z_h @ W_O[:, h-th block]ᵀ.
        if type(self.W_O) is nn.Linear:
            W_O = self.W_O.weight.view(self.cfg.d_model, H, dh)  # (d, H, dh)
            result = torch.einsum("bqhd,mhd->bqhm", z, W_O)  # (B, T, H, d), same FLOPs as W_O(z)
        else:
            # W_O is wrapped (LoRA, 4-bit): its weight attribute may not be the function it computes,
            # so call the module on each head's slice of z alone (H× the cost, only when hooked).
            per_head = torch.einsum("bqhd,hg->bqhgd", z, torch.eye(H, dtype=z.dtype, device=z.device))
            result = self.W_O(per_head.reshape(B, T, H, H * dh))  # bias added once per head
            if getattr(self.W_O, "bias", None) is not None:
                result = result - self.W_O.bias
        result = self.hook_result(result)
        out = result.sum(dim=2)  # (B, T, d)
        if self.W_O.bias is not None:
            out = out + self.W_O.bias
        return out


class MLP(nn.Module):
    """Position-wise feed-forward: GELU(x W_in) W_out, or SwiGLU: (SiLU(x W_gate) ⊙ x W_in) W_out."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.kind = cfg.mlp
        d, m = cfg.d_model, cfg.mlp_dim
        self.W_in = nn.Linear(d, m, bias=cfg.bias)
        if cfg.mlp == "swiglu":
            self.W_gate = nn.Linear(d, m, bias=cfg.bias)
        self.W_out = nn.Linear(m, d, bias=cfg.bias)
        self.hook_pre = HookPoint()  # (B, T, m)
        self.hook_post = HookPoint()  # (B, T, m)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "swiglu":
            pre = self.hook_pre(self.W_gate(x))  # (B, T, m)
            post = self.hook_post(F.silu(pre) * self.W_in(x))
        else:
            pre = self.hook_pre(self.W_in(x))
            post = self.hook_post(F.gelu(pre))
        return self.W_out(post)  # (B, T, d)


class Block(nn.Module):
    """Pre-norm block: resid_mid = resid_pre + attn(ln1(resid_pre)); resid_post = resid_mid + mlp(ln2(resid_mid)).

    With GPTConfig.norm_position="post" the norms come after the residual add instead (_forward_post).
    """

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.post_norm = cfg.norm_position == "post"
        self.hook_resid_pre = HookPoint()  # (B, T, d)
        self.ln1 = Norm(cfg)
        self.attn = Attention(cfg)
        self.hook_attn_out = HookPoint()  # (B, T, d)
        self.has_mlp = cfg.mlp != "none"
        if self.has_mlp:
            self.hook_resid_mid = HookPoint()  # (B, T, d)
            self.ln2 = Norm(cfg)
            self.mlp = MLP(cfg)
            self.hook_mlp_out = HookPoint()  # (B, T, d)
        self.hook_resid_post = HookPoint()  # (B, T, d)

    def forward(self, resid: torch.Tensor, rope) -> torch.Tensor:
        if self.post_norm:
            return self._forward_post(resid, rope)
        resid = self.hook_resid_pre(resid)
        resid = resid + self.hook_attn_out(self.attn(self.ln1(resid), rope))
        if self.has_mlp:
            resid = self.hook_resid_mid(resid)
            resid = resid + self.hook_mlp_out(self.mlp(self.ln2(resid)))
        return self.hook_resid_post(resid)

    def _forward_post(self, resid: torch.Tensor, rope) -> torch.Tensor:
        """Post-norm: resid_mid = ln1(resid_pre + attn(resid_pre)); resid_post = ln2(resid_mid + mlp(resid_mid))."""
        resid = self.hook_resid_pre(resid)
        resid = self.ln1(resid + self.hook_attn_out(self.attn(resid, rope)))
        if self.has_mlp:
            resid = self.hook_resid_mid(resid)
            resid = self.ln2(resid + self.hook_mlp_out(self.mlp(resid)))
        return self.hook_resid_post(resid)


class GPT(HookedModule):
    """Decoder-only transformer: embed → blocks → final norm → unembed, hooks everywhere."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        if not isinstance(cfg, GPTConfig):
            raise ConfigError(f"GPT needs a GPTConfig, got {type(cfg).__name__}")
        self.cfg = cfg
        self.W_E = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.hook_embed = HookPoint()  # (B, T, d)
        if cfg.positional == "learned":
            self.W_pos = nn.Embedding(cfg.n_ctx, cfg.d_model)
        elif cfg.positional == "sinusoidal":
            self.register_buffer("W_pos", sinusoidal_positions(cfg.n_ctx, cfg.d_model), persistent=False)
        if cfg.positional in ("learned", "sinusoidal"):
            self.hook_pos_embed = HookPoint()  # (B, T, d)
        if cfg.positional == "rope":
            cos, sin = rope_cos_sin(cfg.n_ctx, cfg.head_dim, cfg.rope_theta)
            self.register_buffer("rope_cos", cos, persistent=False)
            self.register_buffer("rope_sin", sin, persistent=False)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        # post-norm: the last block already ends in a norm, so no final one (no parameters, hook kept)
        self.ln_final = Norm(replace(cfg, norm="none") if cfg.norm_position == "post" else cfg)
        if not cfg.tied_embeddings:
            self.W_U = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.reset_parameters()
        self.setup_hooks()

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Normal(0, init_std) weights; residual-writing projections scaled by 1/√(2·n_layers) (GPT-2)."""
        std = self.cfg.init_std
        for name, p in self.named_parameters():
            if name.endswith("bias"):
                p.zero_()
            elif p.dim() == 1:  # norm gains
                p.fill_(1.0)
            elif name.endswith(("W_O.weight", "W_out.weight")):
                p.normal_(0.0, std / math.sqrt(2 * self.cfg.n_layers), generator=generator)
            else:
                p.normal_(0.0, std, generator=generator)

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        """Token (+ position) embedding: the residual stream entering block 0. (B, T) -> (B, T, d)."""
        B, T = tokens.shape
        if T > self.cfg.n_ctx:
            raise ValueError(f"sequence length {T} exceeds n_ctx={self.cfg.n_ctx}")
        if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= self.cfg.vocab_size):
            raise ValueError(
                f"token ids must lie in [0, {self.cfg.vocab_size}); got [{int(tokens.min())}, {int(tokens.max())}]"
            )
        resid = self.hook_embed(self.W_E(tokens) * self.cfg.embed_scale)
        if self.cfg.positional == "learned":
            resid = resid + self.hook_pos_embed(self.W_pos.weight[:T].expand(B, T, -1))
        elif self.cfg.positional == "sinusoidal":
            resid = resid + self.hook_pos_embed(self.W_pos[:T].expand(B, T, -1))
        return resid

    def unembed(self, resid: torch.Tensor) -> torch.Tensor:
        """Final norm and unembedding: (…, d) -> (…, V). Applied to any layer's residual it is the logit lens."""
        x = self.ln_final(resid)
        weight = self.W_E.weight if self.cfg.tied_embeddings else self.W_U.weight
        return F.linear(x, weight)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, T) token ids -> (B, T, V) next-token logits."""
        resid = self.embed(tokens)
        rope = (self.rope_cos, self.rope_sin) if self.cfg.positional == "rope" else None
        for block in self.blocks:
            resid = block(resid, rope)
        return self.unembed(resid)

    def expected_hook_names(self) -> list[str]:
        """The documented hook names (labcore.glassbox.hooks.HOOK_SHAPES) that apply to this config."""
        cfg = self.cfg

        def applies(name: str) -> bool:
            if name == "hook_pos_embed":
                return cfg.positional in ("learned", "sinusoidal")
            if cfg.mlp == "none" and any(s in name for s in ("mlp", "ln2", "resid_mid")):
                return False
            return True

        return expand_hook_names(cfg.n_layers, applies)

    def num_params(self, trainable_only: bool = False) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)
