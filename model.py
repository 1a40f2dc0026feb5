"""
The assembled speech recogniser: encoder + projector + CTC head + frozen Llama decoder, and its files.

    audio -> mel.py -> AudioEncoder -> Projector -> [audio embeddings | text embeddings] -> Llama -> text
                                  \\-> ctc_head -> CTC log-probs

Two ways in (recipe §8):
- `load_release(model.pt, llama_dir)`: the released checkpoint-92000 (a torch.save'd dict of every tensor not
  under `llm.`), dimensions inferred from its shapes, names checked strictly, the decoder's vocabulary
  extended with the release's frozen mean rows (recipe §3 quirk).
- `save_model` / `load_model`: our own self-describing model folder
      config.json        encoder config, vocabulary size, how the decoder vocabulary was extended,
                         level_dbfs when the front end normalises the level (mel.normalize_level)
      model.safetensors  every tensor the decoder folder does not hold
      tokenizer.model    (or tokenizer.json)
      decoder/           the frozen Llama in Hugging Face format (training checkpoints: a relative path to one)
`ASRModel.forward` is the model as training runs it; the prompt functions beside it are shared with search.py.
Losses live in train.py and decoding strategies in search.py.
"""
import json
import math
import os
import re
import shutil
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn as nn
from safetensors.torch import save_file

from atomic import atomic_folder
from decoder import (CheckpointError, Llama, check_finite, load_llama, read_json, read_safetensors,
                     safetensors_header)
from encoder import AudioEncoder, EncoderConfig, Projector
from mel import N_FFT

RELEASE_HEAD_DIM = 64  # both releases use 64-d heads: the one dimension a checkpoint's shapes cannot tell
EXTRA_ROWS = ("new_rows", "output_new_rows")  # decoder rows added by Llama.extend_vocab: not in the base folder
MAX_VOCAB, MAX_WIDTH, MAX_LAYERS = 1 << 24, 1 << 16, 1024  # a model folder's sizes, as a Llama config's are bounded


def extra_rows(llm: Llama) -> list:
    """The decoder's added vocabulary rows (empty when the tokenizer fits the base vocabulary)."""
    return [p for p in (getattr(llm, n) for n in EXTRA_ROWS) if p is not None]


# ---------------------------------------------------------------------------------------------------------------
# the decoder's prompt: [audio embeddings | text embeddings]. Training (ASRModel.forward) and every search
# (search.DecoderState) build it with these functions, so a change to the prompt is a change here alone.

def decoder_prompt(llm: Llama, audio: torch.Tensor, lengths: torch.Tensor | None):
    """What the decoder reads before the text: audio (B, T', d), lengths (B,) or None -> prompt (B, P, d), lengths.

    The release's prompt is the audio embeddings alone (recipe §4): P = T', lengths unchanged. Item b's prompt
    is its first lengths[b] slots (right padding); lengths=None is the original's unmasked maths, every slot real.
    """
    return audio, lengths


def prompt_key_mask(lengths: torch.Tensor, P: int) -> torch.Tensor:
    """(B,) prompt lengths -> (B, P) bool, True at the slots the text may attend to: [3, 1], P=3 -> [[1,1,1], [1,0,0]]."""
    return torch.arange(P, device=lengths.device)[None, :] < lengths[:, None]


def text_positions(lengths: torch.Tensor | None, P: int, L: int, start: int = 0, batch: int = 1) -> torch.Tensor:
    """RoPE positions (B, L) of text tokens start..start+L-1: each item's text continues at its own prompt length,
    exactly as if it were alone ([3, 1], L=2 -> [[3, 4], [1, 2]]); lengths=None: after the padded prompt, P + i."""
    i = torch.arange(start, start + L, device=None if lengths is None else lengths.device)
    return (P + i).expand(batch, L) if lengths is None else lengths[:, None] + i


def predicting_positions(lengths: torch.Tensor | None, P: int, L: int, batch: int = 1) -> torch.Tensor:
    """Slots (B, L+1) of [prompt | L text tokens] whose outputs predict text[0], ..., text[L-1], EOS: the last prompt
    slot, then every text slot. An item's own text ends at its length: later outputs are ignored by the loss."""
    last = torch.full((batch,), P - 1) if lengths is None else lengths - 1  # (B,)
    text = P + torch.arange(L, device=last.device)
    return torch.cat([last[:, None], text.expand(len(last), L)], dim=1)


class ASROutput(NamedTuple):
    ctc_log_probs: torch.Tensor         # (B, T', V) float32, on the encoder output
    enc_lengths: torch.Tensor           # (B,) encoder frames of each item (all T' for the unmasked original)
    logits: torch.Tensor | None = None  # (B, L+1, V) float32 at the predicting positions; None without text
    audio: torch.Tensor | None = None   # (B, T', d_dec) the projected audio the decoder reads; None without text


class ASRModel(nn.Module):
    def __init__(self, enc_cfg: EncoderConfig, llm: Llama, vocab_size: int):
        super().__init__()
        self.encoder = AudioEncoder(enc_cfg)
        self.projector = Projector(enc_cfg.dim, llm.config.dim, enc_cfg.norm_eps)
        self.ctc_head = nn.Linear(enc_cfg.dim, vocab_size)  # on the encoder output, blank id 0
        self.llm = llm
        self.vocab_size = vocab_size
        self.level_dbfs = None  # front end: mel.normalize_level to this RMS before the log-mel; None (the release): off

    def forward(self, mel, mel_lengths=None, tokens=None, token_lengths=None) -> ASROutput:
        """The whole model as training sees it (the README's box): audio -> CTC log-probs, and, given the
        transcripts, [prompt | text] -> the decoder's logits at the L+1 positions that predict text + EOS.

        mel : (B, n_mels, T) log-mels; mel_lengths : (B,) or None (the original: no masks, every item as long as
        the batch). tokens : (B, L) text ids, any padding after token_lengths (B,) (the causal decoder never reads
        it) or None for the encoder alone (CTC training). Only the predicting positions are projected onto the
        vocabulary (the original projected every audio frame too).
        """
        enc, audio, enc_lengths = self.encode(mel, mel_lengths)
        ctc = self.ctc_log_probs(enc)
        frames = enc_lengths if enc_lengths is not None else torch.full((enc.shape[0],), enc.shape[1], device=enc.device)
        if tokens is None:
            return ASROutput(ctc, frames)
        return ASROutput(ctc, frames, self.text_logits(audio, enc_lengths, tokens), audio)

    def text_logits(self, audio, lengths, tokens):
        """Audio embeddings (B, T', d), lengths (B,) or None, tokens (B, L) -> logits (B, L+1, V) float32."""
        prompt, lengths = decoder_prompt(self.llm, audio, lengths)
        (B, P, D), L = prompt.shape, tokens.shape[1]
        x = torch.cat([prompt, self.llm.embed(tokens).to(prompt.dtype)], dim=1)  # (B, P+L, D)
        positions = key_mask = None  # the original: RoPE position = slot, plain causal attention
        if lengths is not None:  # padded prompt slots are hidden; each item's text continues at its own length
            slots = torch.arange(P, device=x.device).expand(B, P)
            positions = torch.cat([slots, text_positions(lengths, P, L)], dim=1)  # (B, P+L)
            key_mask = torch.cat([prompt_key_mask(lengths, P), torch.ones(B, L, dtype=torch.bool, device=x.device)], 1)
        h = self.llm(x, positions=positions, key_mask=key_mask)  # (B, P+L, D)
        where = predicting_positions(lengths, P, L, B).to(x.device)  # (B, L+1)
        return self.llm.logits(h.gather(1, where[..., None].expand(B, L + 1, D)))

    def encode(self, mel, lengths=None):
        """
        mel : (B, n_mels, T); lengths : (B,) or None (the original's unmasked maths)
        returns enc (B, T', d_enc), audio embeddings (B, T', d_dec), enc_lengths (B,) or None
        """
        enc, enc_lengths = self.encoder(mel, lengths)
        return enc, self.projector(enc), enc_lengths

    def ctc_log_probs(self, enc):  # (B, T', d_enc) -> (B, T', vocab) float32
        return self.ctc_head(enc).float().log_softmax(-1)

    def own_state_dict(self) -> dict:
        """Every tensor the decoder folder does not hold: encoder, projector, ctc head, trainable extra rows."""
        return {k: v for k, v in self.state_dict().items()
                if not k.startswith("llm.") or k.split(".", 1)[1] in EXTRA_ROWS}


# ---------------------------------------------------------------------------------------------------------------
# the released checkpoint

def infer_encoder_config(sd: dict, path) -> EncoderConfig:
    """Encoder dimensions from the release's tensor shapes (recipe §8)."""
    dim, n_mels, _ = release_shape(sd, "encoder.conv_stack.0.weight", 3, path)
    n_convs = len([k for k in sd if re.fullmatch(r"encoder\.conv_stack\.\d+\.weight", k)])
    n_layers = len([k for k in sd if re.fullmatch(r"encoder\.layers\.\d+\.norm1\.weight", k)])
    if dim % RELEASE_HEAD_DIM:
        raise ValueError(f"{path}: encoder width {dim} is not a multiple of the release's head size 64")
    # a model folder's checks (bands the front end can compute, heads dividing the width, sizes bounded)
    return encoder_config(dict(n_mels=n_mels, dim=dim, n_heads=dim // RELEASE_HEAD_DIM, n_layers=n_layers,
                               n_convs=n_convs), path)


def release_shape(sd: dict, name: str, ndim: int, path) -> tuple:
    """The shape of sd[name], which the release's sizes are read from: ValueError naming the file when the tensor
    is missing or not of `ndim` dimensions (a scalar ctc_head.weight cannot say how many ids there are)."""
    if name not in sd:
        raise ValueError(f"{path}: not a SozKZ OmniAudio checkpoint (no tensor {name})")
    if sd[name].dim() != ndim:
        raise ValueError(f"{path}: tensor {name} has shape {tuple(sd[name].shape)}, expected {ndim} dimensions")
    return tuple(sd[name].shape)


def check_state_dict(want: dict, sd: dict, path):
    """Strict name and shape check of sd against want ({name: tensor}): one error naming every problem."""
    want = {k: v.shape for k, v in want.items()}
    missing = sorted(set(want) - set(sd))
    unexpected = sorted(set(sd) - set(want))
    misshaped = sorted(f"{k} {tuple(sd[k].shape)} != {tuple(s)}" for k, s in want.items()
                       if k in sd and sd[k].shape != s)
    problems = [f"{name}: {', '.join(keys)}" for name, keys in
                [("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped)] if keys]
    if problems:
        raise ValueError(f"{path}: incompatible checkpoint; " + "; ".join(problems))


def load_release(checkpoint, decoder_dir, tokenizer_vocab: int | None = None, dtype=torch.float32, device="cpu"):
    """The released model.pt + its Llama base -> ASRModel in eval mode, exactly as the original decodes it."""
    checkpoint = Path(checkpoint)
    if not checkpoint.is_file():
        raise ValueError(f"{checkpoint}: checkpoint file not found")
    try:
        sd = torch.load(checkpoint, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:
        raise ValueError(f"{checkpoint}: cannot read as a torch checkpoint ({type(e).__name__})") from None
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ValueError(f"{checkpoint}: expected a dict of tensors (recipe §8)")
    check_finite(sd, checkpoint)
    enc_cfg = infer_encoder_config(sd, checkpoint)
    if "ctc_head.weight" not in sd:
        raise ValueError(f"{checkpoint}: no ctc_head.weight, cannot tell the vocabulary size")
    vocab = release_shape(sd, "ctc_head.weight", 2, checkpoint)[0]
    if tokenizer_vocab is not None and vocab != tokenizer_vocab:
        raise ValueError(f"{checkpoint}: has {vocab} output ids but the tokenizer has {tokenizer_vocab}"
                         + (" (one of the older 50257-id checkpoints, not checkpoint-92000)" if vocab == 50257 else ""))
    llm = load_llama(decoder_dir, dtype=dtype, device="cpu")
    width = release_shape(sd, "projector.linear.weight", 2, checkpoint)[0] if "projector.linear.weight" in sd else None
    if width != llm.config.dim:
        raise ValueError(f"{checkpoint}: projector outputs {width} but the decoder in {decoder_dir} is {llm.config.dim} wide")
    if vocab > llm.vocab_size:
        llm.extend_vocab(vocab, trainable=False)  # recipe §3: the release's frozen mean rows
    elif vocab < llm.vocab_size:
        raise ValueError(f"{checkpoint}: has {vocab} output ids, fewer than the decoder's {llm.vocab_size}")
    # the extended rows are in no released file (recipe §3): they stay the mean rows extend_vocab made
    model = assemble(enc_cfg, llm, vocab, sd, checkpoint, lambda m: {k: v for k, v in m.state_dict().items()
                                                                     if not k.startswith("llm.")})
    return model.to(device=device).eval()


def assemble(enc_cfg: EncoderConfig, llm: Llama, vocab: int, sd: dict, path, wanted=ASRModel.own_state_dict):
    """ASRModel around a loaded llm, its other tensors taken from sd after a strict name and shape check against
    wanted(model). Built on the meta device and then assigned, so no random init is drawn only to be
    overwritten (0.7 s for the 300m encoder); every float tensor is stored in float32, as training made it."""
    with torch.device("meta"):  # llm keeps its real tensors: it is only attached here
        model = ASRModel(enc_cfg, llm, vocab)
    check_state_dict(wanted(model), sd, path)
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in sd.items()},
                          strict=False, assign=True)  # strict=False: llm.* came from its folder
    left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left:  # wanted() and the model disagree: a bug here, never a bad file
        raise RuntimeError(f"{path}: no value loaded for {', '.join(left)}")
    return model


# ---------------------------------------------------------------------------------------------------------------
# our own model folders

def save_model(model: ASRModel, folder, tokenizer=None, decoder=None, copy_decoder=True, dtype=None,
               extra_config=None):
    """
    Write a model folder atomically (a temporary folder, then rename).
    tokenizer: path of the tokenizer file to copy in. decoder: path of the HF Llama folder; copied in as decoder/
    (hard links where the file system allows: no space taken, and the frozen files are only ever replaced, never
    written in place), so the folder loads wherever it is copied to. copy_decoder=False records a relative path
    instead (training checkpoints, which stay beside their run; load_model then asks for --decoder if moved).
    dtype: store weights as e.g. torch.float16 to halve a shipped model's size.
    """
    folder = Path(folder)
    with atomic_folder(folder) as tmp:
        write_model_files(model, tmp, folder, tokenizer, decoder, copy_decoder, dtype, extra_config)
    return folder


def write_model_files(model: ASRModel, tmp: Path, folder: Path, tokenizer=None, decoder=None, copy_decoder=True,
                      dtype=None, extra_config=None):
    """The files of a model folder, written into `tmp`, which is to become `folder` (save_model's arguments)."""
    sd = {k: (v.to(dtype) if dtype and v.is_floating_point() else v).detach().cpu().contiguous()
          for k, v in model.own_state_dict().items()}
    save_file(sd, tmp / "model.safetensors")
    config = dict(format="sozkz-asr", encoder=model.encoder.cfg.to_dict(), vocab_size=model.vocab_size,
                  base_vocab_size=model.llm.config.vocab_size,
                  extra_rows_trainable=any(p.requires_grad for p in extra_rows(model.llm)))
    if model.level_dbfs is not None:  # absent: no normalisation, so older folders decode as they always did
        config["level_dbfs"] = model.level_dbfs
    if tokenizer is not None:
        shutil.copy(tokenizer, tmp / Path(tokenizer).name)
        config["tokenizer"] = Path(tokenizer).name
    if decoder is not None:
        if copy_decoder:
            shutil.copytree(decoder, tmp / "decoder", copy_function=link_or_copy)
            config["decoder"] = "decoder"
        else:
            config["decoder"] = os.path.relpath(Path(decoder).resolve(), Path(folder).resolve())
    config.update(extra_config or {})
    (tmp / "config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")


def link_or_copy(src, dst):
    """A hard link of src at dst, or a copy where links cannot be made (another file system)."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def read_config(folder) -> dict:
    """A model folder's config.json, every field save_model writes checked: CheckpointError (a ValueError), one
    line naming the file and the field, when it is missing, mistyped or impossible."""
    path = Path(folder) / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{folder}: not a model folder (no config.json)")
    config = read_json(path)
    if config.get("format") != "sozkz-asr":
        raise CheckpointError(f"{path}: not a sozkz-asr model config (no \"format\": \"sozkz-asr\")")
    fields = {"encoder": dict, "vocab_size": int, "base_vocab_size": int, "extra_rows_trainable": bool,
              "tokenizer": str, "decoder": str, "decode": dict}
    for key, kind in fields.items():
        v = config.get(key)
        if key in ("encoder", "vocab_size") and v is None:
            raise CheckpointError(f"{path}: missing key {key!r}")
        if v is not None and (not isinstance(v, kind) or (kind is int and isinstance(v, bool))):
            raise CheckpointError(f"{path}: {key} is {v!r}, expected {kind.__name__}")
    if not 1 <= config["vocab_size"] <= MAX_VOCAB:
        raise CheckpointError(f"{path}: vocab_size {config['vocab_size']} is not in 1..{MAX_VOCAB}")
    level = config.get("level_dbfs")  # absent or null: no level normalisation
    if level is not None and (isinstance(level, bool) or not isinstance(level, (int, float))
                              or not -100 <= level <= 0):
        raise CheckpointError(f"{path}: level_dbfs is {level!r}, expected a number of dBFS in [-100, 0]")
    encoder_config(config["encoder"], path)
    return config


def encoder_config(d: dict, path) -> EncoderConfig:
    """EncoderConfig from a config's "encoder" object, every field checked (type, range, heads dividing the width)."""
    known = {name: type(value) for name, value in EncoderConfig().to_dict().items()}  # int or float
    unknown = sorted(set(d) - set(known))
    if unknown:
        raise CheckpointError(f"{path}: encoder has unknown keys {', '.join(unknown)}")
    for key, value in d.items():
        ok = isinstance(value, int) if known[key] is int else isinstance(value, (int, float)) and math.isfinite(value)
        if isinstance(value, bool) or not ok or value < 0:
            raise CheckpointError(f"{path}: encoder.{key} is {value!r}, expected a non-negative {known[key].__name__}")
    cfg = EncoderConfig(**d)
    for key, most in (("dim", MAX_WIDTH), ("n_layers", MAX_LAYERS)):  # decoder.LlamaConfig.from_hf's limits
        if getattr(cfg, key) > most:
            raise CheckpointError(f"{path}: encoder.{key} is {getattr(cfg, key)}, more than {most}")
    if not 1 <= cfg.n_mels <= N_FFT // 2 + 1:  # the front end computes cfg.n_mels bands from 201 FFT bins
        raise CheckpointError(f"{path}: encoder.n_mels is {cfg.n_mels}, not between 1 and {N_FFT // 2 + 1}")
    if not 1 <= cfg.n_heads <= cfg.dim or cfg.dim % cfg.n_heads or (cfg.dim // cfg.n_heads) % 2:
        raise CheckpointError(f"{path}: encoder.n_heads {cfg.n_heads} does not divide encoder.dim {cfg.dim} into "
                              "heads of even size")
    if not (1 <= cfg.n_convs <= 6 and cfg.norm_eps > 0 and cfg.rope_base > 0 and cfg.dropout < 1):
        raise CheckpointError(f"{path}: encoder n_convs {cfg.n_convs}, norm_eps {cfg.norm_eps}, rope_base "
                              f"{cfg.rope_base} or dropout {cfg.dropout} is out of range")
    return cfg


def load_model(folder, dtype=torch.float32, device="cpu", decoder=None) -> ASRModel:
    """A model folder written by save_model -> ASRModel in eval mode (strict: every tensor checked, and finite)."""
    folder = Path(folder)
    config = read_config(folder)
    cfg_path = folder / "config.json"
    if not decoder and "decoder" not in config:
        raise ValueError(f"{cfg_path}: names no decoder folder; pass one (decode.py --decoder LLAMA_DIR)")
    if not decoder and not (folder / config["decoder"] / "config.json").is_file():  # a checkpoint moved from its run
        raise CheckpointError(f"{cfg_path}: its decoder {config['decoder']!r} (a path relative to the folder) is "
                              "not there; pass the Llama folder (decode.py --decoder LLAMA_DIR)")
    decoder = Path(decoder) if decoder else (folder / config["decoder"])
    llm = load_llama(decoder, dtype=dtype, device="cpu")
    weights = folder / "model.safetensors"
    if not weights.is_file():
        raise CheckpointError(f"{weights}: no such file")
    enc_cfg = encoder_config(config["encoder"], cfg_path)
    with torch.device("meta"):  # the config's sizes against the file's header first: no memory spent on a lie
        want = _assemble(Llama(llm.config), enc_cfg, config).own_state_dict()
    header = {n: torch.empty(shape, device="meta") for n, shape in safetensors_header(str(weights)).items()}
    check_state_dict(want, header, weights)
    if config["vocab_size"] > llm.vocab_size:
        llm.extend_vocab(config["vocab_size"], trainable=config.get("extra_rows_trainable", False))
    model = assemble(enc_cfg, llm, config["vocab_size"], read_safetensors(str(weights)), weights)
    model.level_dbfs = config.get("level_dbfs")
    model.llm.freeze()  # inference: nothing trains; train.py re-enables what it trains
    return model.to(device=device).eval()


def _assemble(llm: Llama, enc_cfg: EncoderConfig, config: dict) -> ASRModel:
    """The ASRModel a folder's config describes around `llm`, its vocabulary extended as the config says."""
    if config["vocab_size"] > llm.vocab_size:
        llm.extend_vocab(config["vocab_size"], trainable=config.get("extra_rows_trainable", False))
    return ASRModel(enc_cfg, llm, config["vocab_size"])


def decoder_path(folder) -> Path | None:
    """The decoder folder a model folder names (its own decoder/, or a checkpoint's relative path), or None."""
    config = read_config(folder)
    return Path(folder) / config["decoder"] if "decoder" in config else None


def tokenizer_path(folder) -> Path | None:
    config = read_config(folder)
    return Path(folder) / config["tokenizer"] if "tokenizer" in config else None
