"""A Llama decoder in plain PyTorch, read from and written to a Hugging Face Llama folder.

Follows Meta's llama3 `model.py` (small pure functions for RoPE and grouped KV heads) and gpt-fast
(an explicit `KVCache` module with preallocated buffers, a weight map from Hugging Face names,
`load_state_dict(strict=True, assign=True)`). Numerics match transformers' `LlamaForCausalLM`:
RMSNorm in float32, rotate-half RoPE, SwiGLU, no biases (recipe §3). Holds the release's vocabulary
resize too (50257 -> 100000 rows, new rows = the mean row: recipe §3 quirk).
In the ASR model it is frozen; `Llama(cfg)` with random weights is trainable, to pretrain our own.
Does not do: rope_scaling, biases, sliding windows, tensor parallelism, decoding (search.py does).
"""
import json
import math
import os
import re
from dataclasses import dataclass, replace

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file

from atomic import atomic_folder

MAX_POSITIONS = 1 << 17  # the longest RoPE table a config may ask for (131072 positions, Llama 3.1's)


class CheckpointError(ValueError):
    """A Llama folder we cannot read; the message is one line naming the file and the problem."""


DEVICES = ("auto", "cpu", "cuda")  # every script's --device choices


def pick_device(name: str) -> str:
    """A --device value -> "cuda" or "cpu" (auto: cuda when there is one); ValueError, one line, for cuda without
    CUDA, so that the scripts can say so and exit 2 instead of failing later with a traceback."""
    index = re.fullmatch(r"cuda:(\d+)", name)  # one GPU of several (train.py)
    if name not in DEVICES and not index:
        raise ValueError(f"--device {name!r}: expected one of {', '.join(DEVICES)}")
    if name.startswith("cuda") and not torch.cuda.is_available():
        why = "this torch is built without CUDA" if torch.version.cuda is None else "no CUDA device is visible"
        raise ValueError(f"--device {name}: {why}; use --device cpu (or auto)")
    if index and int(index[1]) >= torch.cuda.device_count():
        raise ValueError(f"--device {name}: there are {torch.cuda.device_count()} CUDA devices (cuda:0 ...)")
    return name if name != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")


def read_json(path: str) -> dict:
    """A JSON object from a file, or CheckpointError naming the file and what is wrong with it."""
    try:
        with open(path, encoding="utf-8") as f:
            d = json.load(f)
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})") from None
    except UnicodeDecodeError:
        raise CheckpointError(f"{path}: not UTF-8 text") from None
    except (ValueError, RecursionError) as e:  # an integer of over 4300 digits; arrays nested thousands deep
        why = "nested too deeply" if isinstance(e, RecursionError) else str(e).split(";")[0]
        raise CheckpointError(f"{path}: not JSON we read ({why})") from None
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read ({e.strerror})") from None
    if not isinstance(d, dict):
        raise CheckpointError(f"{path}: expected a JSON object, found {type(d).__name__}")
    return d


def safetensors_header(path: str) -> dict[str, tuple]:
    """{tensor name: shape} of a safetensors file, read from its header; CheckpointError when it is not one."""
    try:
        with safe_open(path, framework="pt") as f:
            return {n: tuple(f.get_slice(n).get_shape()) for n in f.keys()}
    except Exception as e:  # safetensors raises its own SafetensorError (not an OSError) on a cut or garbage file
        raise CheckpointError(f"{path}: not a readable safetensors file ({_first_line(e)})") from None


def read_safetensors(path: str, names=None) -> dict[str, torch.Tensor]:
    """The tensors (all, or those in `names`) of a safetensors file, each checked finite; CheckpointError naming
    the file and the first problem (a cut file, a tensor holding NaN or inf)."""
    try:
        with safe_open(path, framework="pt") as f:
            tensors = {n: f.get_tensor(n) for n in f.keys() if names is None or n in names}
    except Exception as e:
        raise CheckpointError(f"{path}: not a readable safetensors file ({_first_line(e)})") from None
    check_finite(tensors, path)
    return tensors


def check_finite(tensors: dict, path):
    """CheckpointError naming the first floating tensor that holds NaN or inf (a damaged or diverged file)."""
    for name, t in tensors.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise CheckpointError(f"{path}: tensor {name} holds NaN or inf")


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


@dataclass
class LlamaConfig:
    vocab_size: int              # rows stored in the checkpoint (before extend_vocab)
    dim: int                     # hidden_size
    n_layers: int                # num_hidden_layers
    n_heads: int                 # num_attention_heads
    n_kv_heads: int              # num_key_value_heads; fewer than n_heads = grouped-query attention
    ffn_dim: int                 # intermediate_size of the SwiGLU
    norm_eps: float = 1e-6       # rms_norm_eps
    rope_theta: float = 10000.0  # RoPE base
    max_seq_len: int = 2048      # max_position_embeddings: length of the RoPE tables
    tie_embeddings: bool = True  # the output head is the embedding matrix
    bos_id: int = 0
    eos_id: int = 0
    pad_id: int = 1

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    @classmethod
    def from_hf(cls, d: dict, source: str = "config.json") -> "LlamaConfig":
        """Read a transformers config.json dict (v4 or v5 keys); refuse what this decoder does not implement,
        and any missing, mistyped or impossible value, in one line naming `source`."""
        def refuse(problem):
            raise CheckpointError(f"{source}: {problem}")
        if not isinstance(d, dict):
            refuse(f"expected a JSON object, found {type(d).__name__}")
        rope = d.get("rope_parameters") or {}  # transformers 5 moved rope_theta / rope_scaling here
        if not isinstance(rope, dict):
            refuse(f"rope_parameters {rope!r} is not an object")
        if d.get("model_type", "llama") != "llama":
            refuse(f"model_type {d['model_type']!r} is not llama")
        if d.get("rope_scaling") is not None or rope.get("rope_type", "default") != "default":
            refuse(f"rope scaling {d.get('rope_scaling') or rope} is not supported (plain RoPE only)")
        if d.get("hidden_act", "silu") != "silu":
            refuse(f"hidden_act {d['hidden_act']!r} is not supported (silu only)")
        if d.get("attention_bias") or d.get("mlp_bias"):
            refuse("attention_bias / mlp_bias are not supported (no biases)")

        def integer(key, most, default=None, least=1):
            v = d.get(key)
            if v is None:  # absent, or null as some configs write it
                if default is None:
                    refuse(f"missing key {key!r}")
                v = default
            if isinstance(v, bool) or not isinstance(v, int) or not least <= v <= most:
                refuse(f"{key} is {v!r}, expected an integer in {least}..{most}")
            return v

        def number(key, default):
            v = d.get(key, default)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not (math.isfinite(v) and v > 0):
                refuse(f"{key} is {v!r}, expected a positive number")
            return float(v)

        def token_id(key, default):
            v = d.get(key)
            v = v[0] if isinstance(v, list) and v else v  # several EOS ids: the first is ours
            if v is None:
                return default
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                refuse(f"{key} is {d.get(key)!r}, expected a token id")
            return v

        vocab, dim = integer("vocab_size", 1 << 24), integer("hidden_size", 1 << 16)
        heads = integer("num_attention_heads", dim)
        kv_heads = integer("num_key_value_heads", heads, default=heads)
        if dim % heads or heads % kv_heads or (dim // heads) % 2:
            refuse(f"hidden_size {dim} / num_attention_heads {heads} / num_key_value_heads {kv_heads}: the heads "
                   "must divide the width into even head sizes, and the key/value heads the heads")
        if d.get("head_dim") not in (None, dim // heads):
            refuse(f"head_dim {d.get('head_dim')} is not hidden_size / num_attention_heads ({dim}/{heads})")
        tie = d.get("tie_word_embeddings", True)
        if not isinstance(tie, bool):
            refuse(f"tie_word_embeddings is {tie!r}, expected true or false")
        return cls(
            vocab_size=vocab, dim=dim, n_layers=integer("num_hidden_layers", 1024), n_heads=heads,
            n_kv_heads=kv_heads, ffn_dim=integer("intermediate_size", 1 << 20),
            norm_eps=number("rms_norm_eps", 1e-6), rope_theta=number("rope_theta", rope.get("rope_theta", 10000.0)),
            max_seq_len=integer("max_position_embeddings", MAX_POSITIONS, default=2048), tie_embeddings=tie,
            bos_id=token_id("bos_token_id", 0), eos_id=token_id("eos_token_id", 0), pad_id=token_id("pad_token_id", 1))

    def to_hf(self, dtype: torch.dtype = torch.float32) -> dict:
        """A config.json dict that transformers' LlamaForCausalLM reads (v4 keys, which v5 also accepts)."""
        return {
            "architectures": ["LlamaForCausalLM"], "model_type": "llama",
            "vocab_size": self.vocab_size, "hidden_size": self.dim, "intermediate_size": self.ffn_dim,
            "num_hidden_layers": self.n_layers, "num_attention_heads": self.n_heads,
            "num_key_value_heads": self.n_kv_heads, "head_dim": self.head_dim, "hidden_act": "silu",
            "rms_norm_eps": self.norm_eps, "rope_theta": self.rope_theta, "rope_scaling": None,
            "max_position_embeddings": self.max_seq_len, "tie_word_embeddings": self.tie_embeddings,
            "bos_token_id": self.bos_id, "eos_token_id": self.eos_id, "pad_token_id": self.pad_id,
            "attention_bias": False, "mlp_bias": False, "initializer_range": 0.02,
            "torch_dtype": str(dtype).removeprefix("torch."),
        }


def rope_tables(head_dim: int, max_len: int, theta: float, device=None):
    """cos, sin (max_len, head_dim) in float32 for angles pos * theta**(-2i/head_dim), both halves alike."""
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, device=device).float() / head_dim)  # (hd/2,)
    angles = torch.outer(torch.arange(max_len, device=device).float(), inv_freq)  # (L, hd/2)
    emb = torch.cat([angles, angles], dim=-1)  # (L, hd): rotate-half pairs dim i with i + hd/2
    return emb.cos(), emb.sin()


def rotate_half(x):
    """(x1, x2) -> (-x2, x1) over the two halves of the last dim."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def apply_rope(x, cos, sin):
    """Rotate q or k (B, H, T, hd) by its positions' angles; cos/sin (T, hd) or (B, 1, T, hd)."""
    return x * cos + rotate_half(x) * sin


def repeat_kv(x, n_rep: int):
    """(B, KVH, S, hd) -> (B, KVH * n_rep, S, hd), i.e. torch.repeat_interleave(x, dim=1, repeats=n_rep)."""
    if n_rep == 1:
        return x  # plain multi-head attention: no copy
    B, H, S, hd = x.shape
    return x[:, :, None].expand(B, H, n_rep, S, hd).reshape(B, H * n_rep, S, hd)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        """Normalise in float32, cast back, then scale (as HF Llama does, so bfloat16 matches too)."""
        xf = x.float()
        return self.weight * (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype)


class KVCache(nn.Module):
    """Keys and values of one layer for max_len slots, allocated once and written in place."""

    def __init__(self, batch: int, n_kv_heads: int, max_len: int, head_dim: int, device=None, dtype=torch.float32):
        super().__init__()
        shape = (batch, n_kv_heads, max_len, head_dim)
        self.register_buffer("k", torch.zeros(shape, device=device, dtype=dtype), persistent=False)
        self.register_buffer("v", torch.zeros(shape, device=device, dtype=dtype), persistent=False)

    def update(self, start: int, k, v):
        """Write k, v (B, KVH, T, hd) at slots [start, start+T); return every slot so far (B, KVH, start+T, hd)."""
        end = start + k.shape[2]
        if end > self.k.shape[2]:
            raise ValueError(f"KV cache holds {self.k.shape[2]} slots, asked for {end}")
        self.k[:, :, start:end] = k
        self.v[:, :, start:end] = v
        return self.k[:, :, :end], self.v[:, :, :end]  # views, no copy


class Attention(nn.Module):
    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        self.wq = nn.Linear(cfg.dim, cfg.n_heads * cfg.head_dim, bias=False)
        self.wk = nn.Linear(cfg.dim, cfg.n_kv_heads * cfg.head_dim, bias=False)
        self.wv = nn.Linear(cfg.dim, cfg.n_kv_heads * cfg.head_dim, bias=False)
        self.wo = nn.Linear(cfg.n_heads * cfg.head_dim, cfg.dim, bias=False)

    def forward(self, x, cos, sin, mask, is_causal: bool, start: int, cache: KVCache | None, probs=None):
        """(B, T, dim) -> (B, T, dim); with a cache, attends to every slot written so far.

        probs: a list to append this layer's attention probabilities (B, H, T, S) float32 to (plot.py); the
        explicit softmax then replaces SDPA, which never forms them.
        """
        B, T, _ = x.shape
        q = self.wq(x).view(B, T, self.n_heads, self.head_dim).transpose(1, 2)  # (B, H, T, hd)
        k = self.wk(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)  # (B, KVH, T, hd)
        v = self.wv(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)  # (B, KVH, T, hd)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is not None:
            k, v = cache.update(start, k, v)  # (B, KVH, S, hd)
        n_rep = self.n_heads // self.n_kv_heads
        k, v = repeat_kv(k, n_rep), repeat_kv(v, n_rep)  # (B, H, S, hd)
        if probs is None:
            o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal)  # (B, H, T, hd)
        else:
            p = attention_probs(q, k, mask, is_causal)  # (B, H, T, S)
            probs.append(p)
            o = p.to(v.dtype) @ v  # (B, H, T, hd)
        return self.wo(o.transpose(1, 2).reshape(B, T, -1))


def attention_probs(q, k, mask, is_causal: bool):
    """softmax(q k^T / sqrt(hd)) in float32 (B, H, T, S), masked as SDPA's attn_mask (True = attend) / is_causal."""
    scores = (q.float() @ k.float().transpose(-2, -1)) / q.shape[-1] ** 0.5  # (B, H, T, S)
    if is_causal:  # SDPA's flag: query i sees keys 0..i (T == S here)
        mask = torch.ones(q.shape[2], k.shape[2], dtype=torch.bool, device=q.device).tril()
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return scores.softmax(-1)


class FeedForward(nn.Module):
    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.w1 = nn.Linear(cfg.dim, cfg.ffn_dim, bias=False)  # gate_proj
        self.w3 = nn.Linear(cfg.dim, cfg.ffn_dim, bias=False)  # up_proj
        self.w2 = nn.Linear(cfg.ffn_dim, cfg.dim, bias=False)  # down_proj

    def forward(self, x):
        """SwiGLU: w2(silu(w1 x) * w3 x)."""
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class Block(nn.Module):
    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.attention_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.attention = Attention(cfg)
        self.ffn_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.feed_forward = FeedForward(cfg)

    def forward(self, x, cos, sin, mask, is_causal, start, cache, probs=None):
        """Pre-norm residual block: (B, T, dim) -> (B, T, dim)."""
        x = x + self.attention(self.attention_norm(x), cos, sin, mask, is_causal, start, cache, probs)
        return x + self.feed_forward(self.ffn_norm(x))


def attention_mask(B: int, T: int, start: int, key_start: int, key_mask, device):
    """Boolean mask (B|1, 1, T, S) over key slots [key_start, start+T), True = attend; None when not needed."""
    end = start + T
    if key_mask is None and (T == 1 or key_start == start):
        return None, T > 1  # one new token sees every slot; else SDPA's own causal flag is exact
    i = torch.arange(start, end, device=device)[:, None]  # query slots (T, 1)
    j = torch.arange(key_start, end, device=device)[None, :]  # key slots (1, S)
    mask = (j <= i)[None, None]  # (1, 1, T, S) causal in slot order
    if key_mask is not None:
        if tuple(key_mask.shape) != (B, end):
            raise ValueError(f"key_mask has shape {tuple(key_mask.shape)}, expected {(B, end)}")
        # a query always sees its own slot, so a padded query never gets an all-masked (NaN) softmax
        mask = (mask & key_mask[:, None, None, key_start:].bool()) | (j == i)  # (B, 1, T, S)
    return mask, False


class Llama(nn.Module):
    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.config = cfg
        # under `with torch.device("meta")` (load_llama: shapes only, every value then assigned from the file)
        # nothing is computed: meta maths such as a normal_ draw import torch._dynamo, seconds of start-up
        shapes_only = torch.get_default_device().type == "meta"
        empty = torch.empty(cfg.vocab_size, cfg.dim) if shapes_only else None  # nn.Embedding skips its init then
        self.tok_embeddings = nn.Embedding(cfg.vocab_size, cfg.dim, _weight=empty)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.output = None if cfg.tie_embeddings else nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        self.register_parameter("new_rows", None)  # (n_new, dim) embedding rows added by extend_vocab
        self.register_parameter("output_new_rows", None)  # the same for an untied head
        self._repeat_key = self._repeated = None  # _one_row_repeated's answer, per version of the extended rows
        if shapes_only:  # so are RoPE's tables (they follow from the config): load_llama builds them after
            self.register_buffer("rope_cos", None, persistent=False)
            self.register_buffer("rope_sin", None, persistent=False)
        else:
            self.reset_rope()
            self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m):
        """Normal(0, 0.02) for every matrix, as HF's initializer_range; norms start at 1."""
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, mean=0.0, std=0.02)

    def reset_rope(self, device=None):
        """(Re)build the RoPE tables once (not saved: they follow from the config)."""
        cos, sin = rope_tables(self.config.head_dim, self.config.max_seq_len, self.config.rope_theta, device)
        self.register_buffer("rope_cos", cos, persistent=False)  # (L, hd) float32
        self.register_buffer("rope_sin", sin, persistent=False)

    @property
    def vocab_size(self) -> int:
        return self.config.vocab_size + (0 if self.new_rows is None else self.new_rows.shape[0])

    def freeze(self) -> "Llama":
        """No parameter takes gradients; gradients still flow through to inputs_embeds."""
        for p in self.parameters():
            p.requires_grad_(False)
        return self

    def embed(self, ids):
        """(B, T) ids -> (B, T, dim); ids past the stored rows read the extended rows."""
        base = self.config.vocab_size
        if self.new_rows is None:
            return self.tok_embeddings(ids)
        old = self.tok_embeddings(ids.clamp(max=base - 1))
        new = F.embedding((ids - base).clamp(min=0), self.new_rows)
        return torch.where((ids >= base)[..., None], new, old)  # (B, T, dim)

    def rows(self):
        """Every id's embedding row, extended rows included: (vocab_size, dim)."""
        return self.embed(torch.arange(self.vocab_size, device=self.tok_embeddings.weight.device))

    def forward(self, inputs_embeds, start: int = 0, caches: list[KVCache] | None = None,
                positions=None, key_mask=None, attn_mask=None, attn_probs: list | None = None):
        """(B, T, dim) embeddings at slots [start, start+T) -> hidden (B, T, dim) after the final norm.

        positions (B, T): RoPE positions when they are not the slots; key_mask (B, start+T): key slots that may
        be seen (causal order otherwise); attn_mask (B|1, 1, T, start+T): the whole mask, given instead.
        attn_probs: a list that gets each layer's attention probabilities (B, H, T, S), by an explicit softmax
        (slower; the default path is SDPA, which never forms them).
        """
        x = inputs_embeds
        B, T, _ = x.shape
        if positions is None:
            if start + T > self.config.max_seq_len:
                raise ValueError(f"slots up to {start + T} exceed max_seq_len {self.config.max_seq_len}")
            cos, sin = self.rope_cos[start:start + T], self.rope_sin[start:start + T]  # (T, hd)
        else:
            cos, sin = self.rope_cos[positions][:, None], self.rope_sin[positions][:, None]  # (B, 1, T, hd)
        cos, sin = cos.to(x.dtype), sin.to(x.dtype)
        key_start = 0 if caches is not None else start  # without a cache only this call's keys exist
        if attn_mask is None:
            mask, is_causal = attention_mask(B, T, start, key_start, key_mask, x.device)
        else:
            mask, is_causal = attn_mask, False
        for i, layer in enumerate(self.layers):
            x = layer(x, cos, sin, mask, is_causal, start, None if caches is None else caches[i], attn_probs)
        return self.norm(x)

    def logits(self, hidden):
        """(B, T, dim) -> (B, T, vocab) float32, over stored and extended rows."""
        if self.output is None:
            w, extra = self.tok_embeddings.weight, self.new_rows
        else:
            w, extra = self.output.weight, self.output_new_rows
        out = F.linear(hidden, w)  # (B, T, base vocab)
        if extra is not None:  # two matmuls: no concatenated weight copy
            if self._one_row_repeated(extra):  # the release's frozen mean rows: one dot product serves them all
                new = F.linear(hidden, extra[:1]).expand(*hidden.shape[:-1], extra.shape[0])
            else:
                new = F.linear(hidden, extra)
            out = torch.cat([out, new], dim=-1)
        return out.float()

    def _one_row_repeated(self, rows) -> bool:
        """Whether frozen rows are all one row (recipe §3: 49,743 of the release's 100,000, ~13 % of a decoding
        step's weight reads). Checked once per version of the tensor: an in-place change is seen."""
        if rows.requires_grad:
            return False
        key = (rows.data_ptr(), rows._version)
        if self._repeat_key != key:
            self._repeat_key, self._repeated = key, bool((rows == rows[:1]).all())
        return self._repeated

    def new_caches(self, batch: int, max_len: int, device=None, dtype=torch.float32) -> list[KVCache]:
        """One empty KVCache per layer."""
        c = self.config
        return [KVCache(batch, c.n_kv_heads, max_len, c.head_dim, device, dtype) for _ in range(c.n_layers)]

    def extend_vocab(self, new_size: int, trainable: bool = False):
        """Add rows [base, new_size), each the mean of the base rows (recipe §3); trainable=True lets only them learn."""
        base = self.config.vocab_size
        if self.new_rows is not None or new_size < base:
            raise ValueError(f"cannot extend a {self.vocab_size}-id vocabulary to {new_size}")
        if new_size == base:
            return

        def mean_rows(w):  # (base, dim) -> (new_size - base, dim), mean taken in float32 as HF's resize does
            if w.is_meta:  # shapes only (model.load_model's header check): meta maths would import torch._dynamo
                return torch.empty(new_size - base, w.shape[1], dtype=w.dtype, device="meta")
            return w.detach().float().mean(0, keepdim=True).expand(new_size - base, -1).to(w.dtype).clone()
        # separate parameters beside the stored matrices, so the base rows cannot move
        self.new_rows = nn.Parameter(mean_rows(self.tok_embeddings.weight), requires_grad=trainable)
        if self.output is not None:
            self.output_new_rows = nn.Parameter(mean_rows(self.output.weight), requires_grad=trainable)


# Hugging Face tensor name -> ours; {} is the layer index (gpt-fast style)
WEIGHT_MAP = {
    "model.embed_tokens.weight": "tok_embeddings.weight",
    "model.layers.{}.self_attn.q_proj.weight": "layers.{}.attention.wq.weight",
    "model.layers.{}.self_attn.k_proj.weight": "layers.{}.attention.wk.weight",
    "model.layers.{}.self_attn.v_proj.weight": "layers.{}.attention.wv.weight",
    "model.layers.{}.self_attn.o_proj.weight": "layers.{}.attention.wo.weight",
    "model.layers.{}.mlp.gate_proj.weight": "layers.{}.feed_forward.w1.weight",
    "model.layers.{}.mlp.up_proj.weight": "layers.{}.feed_forward.w3.weight",
    "model.layers.{}.mlp.down_proj.weight": "layers.{}.feed_forward.w2.weight",
    "model.layers.{}.input_layernorm.weight": "layers.{}.attention_norm.weight",
    "model.layers.{}.post_attention_layernorm.weight": "layers.{}.ffn_norm.weight",
    "model.norm.weight": "norm.weight",
    "lm_head.weight": "output.weight",
}


def hf_names(n_layers: int) -> dict[str, str]:
    """WEIGHT_MAP with the layer templates expanded: {hf name: our name} for every possible tensor."""
    return {hf.format(i): ours.format(i) for hf, ours in WEIGHT_MAP.items()
            for i in (range(n_layers) if "{}" in hf else [None])}


def _tensor_files(folder: str) -> dict[str, str]:
    """{tensor name: safetensors path}, from model.safetensors or a sharded model.safetensors.index.json."""
    index, single = os.path.join(folder, "model.safetensors.index.json"), os.path.join(folder, "model.safetensors")
    if os.path.isfile(index):
        weight_map = read_json(index).get("weight_map")
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
            raise CheckpointError(f"{index}: no weight_map of tensor names to shard files")
        files = {name: os.path.join(folder, shard) for name, shard in weight_map.items()}
        for path in sorted(set(files.values())):
            if not os.path.isfile(path):
                raise CheckpointError(f"{path}: shard named in {index} does not exist")
        return files
    if os.path.isfile(single):
        return {name: single for name in safetensors_header(single)}
    raise CheckpointError(f"{folder}: no model.safetensors or model.safetensors.index.json")


def load_llama(folder: str, dtype: torch.dtype = torch.float32, device="cpu") -> Llama:
    """Read a Hugging Face Llama folder strictly (every name and shape checked, every value finite) into a
    frozen Llama; CheckpointError, one line naming the file, for anything wrong."""
    folder = str(folder)
    config_path = os.path.join(folder, "config.json")
    if not os.path.isfile(config_path):
        raise CheckpointError(f"{config_path}: no such file")
    cfg = LlamaConfig.from_hf(read_json(config_path), source=config_path)
    with torch.device("meta"):  # shapes only; the real tensors are assigned below
        model = Llama(cfg)
    shapes = {n: tuple(t.shape) for n, t in model.state_dict().items()}
    ours = {hf: o for hf, o in hf_names(cfg.n_layers).items() if o in shapes}  # no lm_head when tied
    expected = {hf: shapes[o] for hf, o in ours.items()}
    files = _tensor_files(folder)
    found = {}
    for path in sorted(set(files.values())):  # safe_open memory-maps each file; shapes come from headers
        found.update({n: s for n, s in safetensors_header(path).items() if files.get(n) == path})
    # HF ignores a stored lm_head when tied, and old checkpoints kept RoPE's inv_freq buffer: both follow from config
    ignored = {n for n in found if n.endswith("rotary_emb.inv_freq") or (cfg.tie_embeddings and n == "lm_head.weight")}
    missing = sorted(expected.keys() - found.keys())
    unexpected = sorted(found.keys() - expected.keys() - ignored)
    misshaped = [f"{n} {list(found[n])} (expected {list(expected[n])})"
                 for n in sorted(expected.keys() & found.keys()) if found[n] != expected[n]]
    if missing or unexpected or misshaped:
        problems = [f"{what}: {', '.join(names)}" for what, names in
                    [("missing tensors", missing), ("unexpected tensors", unexpected), ("wrong shapes", misshaped)] if names]
        raise CheckpointError(f"{folder}: " + "; ".join(problems))
    state = {}
    for path in sorted(set(files.values())):
        tensors = read_safetensors(path, {n for n in ours if files.get(n) == path})
        state.update({ours[n]: t.to(device=device, dtype=dtype) for n, t in tensors.items()})
    model.load_state_dict(state, strict=True, assign=True)
    model.reset_rope(device)
    return model.freeze()


def save_llama(model: Llama, folder: str):
    """Write config.json + model.safetensors in Hugging Face Llama format (extended rows included), atomically."""
    to_hf = {o: hf for hf, o in hf_names(model.config.n_layers).items()}
    tensors = {to_hf[n]: t for n, t in model.state_dict().items() if n not in ("new_rows", "output_new_rows")}
    if model.new_rows is not None:  # a saved folder is a plain Llama with vocab_size rows
        tensors["model.embed_tokens.weight"] = torch.cat([model.tok_embeddings.weight, model.new_rows])
        if model.output is not None:
            tensors["lm_head.weight"] = torch.cat([model.output.weight, model.output_new_rows])
    tensors = {n: t.detach().contiguous().cpu() for n, t in tensors.items()}
    config = replace(model.config, vocab_size=model.vocab_size).to_hf(model.tok_embeddings.weight.dtype)
    with atomic_folder(folder) as tmp:
        save_file(tensors, tmp / "model.safetensors", metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
