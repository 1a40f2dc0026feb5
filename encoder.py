"""
The audio encoder of SozKZ OmniAudio v2: log-mel -> conv subsampling -> pre-norm transformer, and the projector.

Follows docs/recipe.md §2 exactly, so the released checkpoint-92000 loads by name:
  conv_stack: Conv1d(n_mels->d, k3, s2) GELU Conv1d(d->d, k3, s2) GELU   (4x fewer frames: 100 -> 25 per second)
  norm:       RMSNorm(d)
  layers:     pre-norm blocks, RoPE self-attention with biased q/k/v/o, SwiGLU feed-forward
  (no norm after the last block)
The projector (encoder width -> decoder width) lives here too; the CTC head on the encoder output is in model.py.

The original has no padding masks (a quirk, recipe §1). `lengths=None` reproduces that maths exactly; passing `lengths`
masks padded frames out of attention so an item's output does not depend on its batch.
"""
import math
from dataclasses import dataclass, asdict

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint

from decoder import RMSNorm, apply_rope, rope_tables  # the same RMSNorm and rotate-half RoPE as the Llama decoder
from mel import N_MELS


@dataclass
class EncoderConfig:
    n_mels: int = N_MELS        # log-mel bins in (80); the front end computes as many (decode.py, dataset.py)
    dim: int = 640              # model width d
    n_heads: int = 10           # attention heads (head_dim = dim / n_heads = 64)
    n_layers: int = 14          # transformer blocks
    n_convs: int = 2            # stride-2 convolutions: 2**n_convs subsampling
    rope_base: float = 10000.0  # RoPE theta
    dropout: float = 0.1        # on attention weights, attention output and FFN output (training only)
    norm_eps: float = 1e-6      # RMSNorm epsilon

    @property
    def ffn_dim(self) -> int:
        # SwiGLU hidden size: 8/3 d rounded up to a multiple of 64 (1728 for d=640)
        return 64 * math.ceil(int(self.dim * 8 / 3) / 64)

    def to_dict(self) -> dict:
        return asdict(self)


ENCODER_PRESETS = {
    "300m": dict(dim=640, n_heads=10, n_layers=14, n_convs=2),  # checkpoint-92000 (decoder width 1024)
    "150m": dict(dim=512, n_heads=8, n_layers=12, n_convs=2),   # sister release (decoder width 768)
    "teach": dict(dim=192, n_heads=4, n_layers=6, n_convs=2),   # the small teaching model trained on a CPU
    "tiny": dict(dim=64, n_heads=2, n_layers=2, n_convs=2),     # tests and smoke runs
}


def subsampled_lengths(lengths: torch.Tensor, n_convs: int = 2) -> torch.Tensor:
    """Frames after each Conv1d(k=3, s=2, p=1): floor((n - 1) / 2) + 1, e.g. 1501 -> 751 -> 376."""
    for _ in range(n_convs):
        lengths = (lengths - 1) // 2 + 1
    return lengths


class EncoderBlock(nn.Module):
    """x += o(attn(norm1 x)); x += down(silu(gate(norm2 x)) * up(norm2 x))."""

    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        d, f = cfg.dim, cfg.ffn_dim
        self.n_heads, self.dropout = cfg.n_heads, cfg.dropout
        self.norm1 = RMSNorm(d, cfg.norm_eps)
        self.q_proj, self.k_proj = nn.Linear(d, d), nn.Linear(d, d)
        self.v_proj, self.o_proj = nn.Linear(d, d), nn.Linear(d, d)
        self.norm2 = RMSNorm(d, cfg.norm_eps)
        self.gate_proj = nn.Linear(d, f, bias=False)
        self.up_proj = nn.Linear(d, f, bias=False)
        self.down_proj = nn.Linear(f, d, bias=False)
        self.drop = nn.Dropout(cfg.dropout)

    def attention(self, x, cos, sin, mask):
        B, T, d = x.shape
        split = lambda t: t.view(B, T, self.n_heads, d // self.n_heads).transpose(1, 2)  # (B, H, T, hd)
        q = apply_rope(split(self.q_proj(x)), cos, sin)
        k = apply_rope(split(self.k_proj(x)), cos, sin)
        v = split(self.v_proj(x))
        p = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)  # bidirectional
        return self.o_proj(y.transpose(1, 2).reshape(B, T, d))

    def forward(self, x, cos, sin, mask=None):
        x = x + self.drop(self.attention(self.norm1(x), cos, sin, mask))
        h = self.norm2(x)
        return x + self.drop(self.down_proj(F.silu(self.gate_proj(h)) * self.up_proj(h)))


class AudioEncoder(nn.Module):
    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.cfg = cfg
        convs = []
        for i in range(cfg.n_convs):
            convs += [nn.Conv1d(cfg.n_mels if i == 0 else cfg.dim, cfg.dim, 3, stride=2, padding=1), nn.GELU()]
        self.conv_stack = nn.Sequential(*convs)  # names conv_stack.0 / .2 as in the release
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.layers = nn.ModuleList(EncoderBlock(cfg) for _ in range(cfg.n_layers))
        self.grad_checkpointing = False  # recompute blocks in backward to save activation memory (train.py flag)

    def forward(self, mel, lengths=None):
        """
        mel : (B, n_mels, T) log-mel, padded with 0.0
        lengths : (B,) true frame counts, or None for the original's unmasked maths
        returns x : (B, T', dim) and the subsampled lengths (or None)
        """
        x, out_lengths = mel, None
        if lengths is None:
            x = self.conv_stack(x)
        else:
            out_lengths = lengths.to(x.device)
            x = x * _keep(out_lengths, x.shape[-1])[:, None, :].to(x.dtype)  # padding must read as 0.0
            for conv, act in zip(self.conv_stack[0::2], self.conv_stack[1::2]):
                out_lengths = subsampled_lengths(out_lengths, 1)
                x = act(conv(x))  # (B, d, T_i)
                # zero frames past each item's end: alone, the next conv would read its zero padding there
                x = x * _keep(out_lengths, x.shape[-1])[:, None, :].to(x.dtype)
        x = self.norm(x.transpose(1, 2))  # (B, T', d)
        T = x.shape[1]
        cos, sin = rope_tables(self.cfg.dim // self.cfg.n_heads, T, self.cfg.rope_base, x.device)  # (T', hd)
        cos, sin = cos.to(x.dtype), sin.to(x.dtype)
        # padded keys hidden from every query: (B, 1, 1, T')
        mask = None if out_lengths is None else _keep(out_lengths, T)[:, None, None, :]
        for layer in self.layers:
            if self.grad_checkpointing and self.training:
                x = torch.utils.checkpoint.checkpoint(layer, x, cos, sin, mask, use_reentrant=False)
            else:
                x = layer(x, cos, sin, mask)
        return x, out_lengths


def _keep(lengths, T):
    """(B, T) bool, True on the first lengths[b] frames."""
    return torch.arange(T, device=lengths.device)[None, :] < lengths[:, None]


class Projector(nn.Module):
    """Encoder width -> decoder width: Linear (with bias) then RMSNorm, no activation (recipe §2)."""

    def __init__(self, in_dim: int, out_dim: int, eps: float = 1e-6):
        super().__init__()
        self.linear = nn.Linear(in_dim, out_dim)
        self.norm = RMSNorm(out_dim, eps)

    def forward(self, x):  # (B, T', d_enc) -> (B, T', d_dec)
        return self.norm(self.linear(x))
