"""
The assembled speech recogniser: encoder + projector + CTC head + frozen Llama decoder, and its files.

    audio -> mel.py -> AudioEncoder -> Projector -> [audio embeddings | text embeddings] -> Llama -> text
                                  \\-> ctc_head -> CTC log-probs

Two ways in (SPEC section 8):
- `load_release(model.pt, llama_dir)`: the released checkpoint-92000 (a torch.save'd dict of every tensor not
  under `llm.`), dimensions inferred from its shapes, names checked strictly, the decoder's vocabulary
  extended with the release's frozen mean rows (SPEC section 3 quirk).
- `save_model` / `load_model`: our own self-describing model folder
      config.json        encoder config, vocabulary size, how the decoder vocabulary was extended,
                         level_dbfs when the front end normalises the level (mel.normalize_level)
      model.safetensors  every tensor the decoder folder does not hold
      tokenizer.model    (or tokenizer.json)
      decoder/           the frozen Llama in Hugging Face format (or a path to one in config.json)
Losses live in train.py and decoding in decode.py; this file only builds and stores the model.
"""
import json
import os
import re
import shutil
import tempfile
from pathlib import Path

import torch
import torch.nn as nn
from safetensors.torch import load_file, save_file

from decoder import Llama, load_llama
from encoder import AudioEncoder, EncoderConfig, Projector

RELEASE_HEAD_DIM = 64  # both releases use 64-d heads: the one dimension a checkpoint's shapes cannot tell
EXTRA_ROWS = ("new_rows", "output_new_rows")  # decoder rows added by Llama.extend_vocab: not in the base folder


def extra_rows(llm: Llama) -> list:
    """The decoder's added vocabulary rows (empty when the tokenizer fits the base vocabulary)."""
    return [p for p in (getattr(llm, n) for n in EXTRA_ROWS) if p is not None]


class ASRModel(nn.Module):
    def __init__(self, enc_cfg: EncoderConfig, llm: Llama, vocab_size: int):
        super().__init__()
        self.encoder = AudioEncoder(enc_cfg)
        self.projector = Projector(enc_cfg.dim, llm.config.dim, enc_cfg.norm_eps)
        self.ctc_head = nn.Linear(enc_cfg.dim, vocab_size)  # on the encoder output, blank id 0
        self.llm = llm
        self.vocab_size = vocab_size
        self.level_dbfs = None  # front end: mel.normalize_level to this RMS before the log-mel; None (the release): off

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
    """Encoder dimensions from the release's tensor shapes (SPEC section 8)."""
    try:
        dim, n_mels, _ = sd["encoder.conv_stack.0.weight"].shape
        n_convs = len([k for k in sd if re.fullmatch(r"encoder\.conv_stack\.\d+\.weight", k)])
        n_layers = len([k for k in sd if re.fullmatch(r"encoder\.layers\.\d+\.norm1\.weight", k)])
    except KeyError as e:
        raise ValueError(f"{path}: not a SozKZ OmniAudio checkpoint (no tensor {e.args[0]})") from None
    if dim % RELEASE_HEAD_DIM:
        raise ValueError(f"{path}: encoder width {dim} is not a multiple of the release's head size 64")
    return EncoderConfig(n_mels=n_mels, dim=dim, n_heads=dim // RELEASE_HEAD_DIM, n_layers=n_layers, n_convs=n_convs)


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
        raise ValueError(f"{checkpoint}: expected a dict of tensors (SPEC section 8)")
    enc_cfg = infer_encoder_config(sd, checkpoint)
    vocab = sd["ctc_head.weight"].shape[0] if "ctc_head.weight" in sd else None
    if vocab is None:
        raise ValueError(f"{checkpoint}: no ctc_head.weight, cannot tell the vocabulary size")
    if tokenizer_vocab is not None and vocab != tokenizer_vocab:
        raise ValueError(f"{checkpoint}: has {vocab} output ids but the tokenizer has {tokenizer_vocab}"
                         + (" (one of the older 50257-id checkpoints, not checkpoint-92000)" if vocab == 50257 else ""))
    llm = load_llama(decoder_dir, dtype=dtype, device="cpu")
    width = sd["projector.linear.weight"].shape[0] if "projector.linear.weight" in sd else None
    if width != llm.config.dim:
        raise ValueError(f"{checkpoint}: projector outputs {width} but the decoder in {decoder_dir} is {llm.config.dim} wide")
    if vocab > llm.vocab_size:
        llm.extend_vocab(vocab, trainable=False)  # SPEC section 3: the release's frozen mean rows
    elif vocab < llm.vocab_size:
        raise ValueError(f"{checkpoint}: has {vocab} output ids, fewer than the decoder's {llm.vocab_size}")
    model = ASRModel(enc_cfg, llm, vocab)
    # the extended rows are in no released file (SPEC section 3): they stay the mean rows extend_vocab made
    check_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("llm.")}, sd, checkpoint)
    model.load_state_dict(sd, strict=False)  # llm.* came from decoder_dir; everything else was checked above
    return model.to(device=device).eval()


# ---------------------------------------------------------------------------------------------------------------
# our own model folders

def save_model(model: ASRModel, folder, tokenizer=None, decoder=None, copy_decoder=False, dtype=None,
               extra_config=None):
    """
    Write a model folder atomically (a temporary folder, then rename).
    tokenizer: path of the tokenizer file to copy in. decoder: path of the HF Llama folder; copied in as
    decoder/ when `copy_decoder`, else recorded as a relative path (training checkpoints: the frozen base
    never changes, so it is not copied a hundred times).
    dtype: store weights as e.g. torch.float16 to halve a shipped model's size.
    """
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}."))
    tmp.chmod(0o755)  # mkdtemp makes it private; a model folder is for everyone
    try:
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
                shutil.copytree(decoder, tmp / "decoder")
                config["decoder"] = "decoder"
            else:
                config["decoder"] = os.path.relpath(Path(decoder).resolve(), folder.resolve())
        config.update(extra_config or {})
        (tmp / "config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")
        if folder.exists():
            old = folder.with_name(f".{folder.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(folder, old)
            os.replace(tmp, folder)
            shutil.rmtree(old)
        else:
            os.replace(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def load_model(folder, dtype=torch.float32, device="cpu", decoder=None) -> ASRModel:
    """A model folder written by save_model -> ASRModel in eval mode (strict: every tensor checked)."""
    folder = Path(folder)
    cfg_path = folder / "config.json"
    if not cfg_path.is_file():
        raise ValueError(f"{folder}: not a model folder (no config.json)")
    config = json.loads(cfg_path.read_text())
    if config.get("format") != "sozkz-asr":
        raise ValueError(f"{cfg_path}: not a sozkz-asr model config")
    if not decoder and "decoder" not in config:
        raise ValueError(f"{cfg_path}: names no decoder folder; pass one (decode.py --decoder LLAMA_DIR)")
    decoder = Path(decoder) if decoder else (folder / config["decoder"])
    llm = load_llama(decoder, dtype=dtype, device="cpu")
    if config["vocab_size"] > llm.vocab_size:
        llm.extend_vocab(config["vocab_size"], trainable=config.get("extra_rows_trainable", False))
    model = ASRModel(EncoderConfig(**config["encoder"]), llm, config["vocab_size"])
    sd = load_file(folder / "model.safetensors")
    check_state_dict(model.own_state_dict(), sd, folder / "model.safetensors")
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in sd.items()}, strict=False)
    model.level_dbfs = config.get("level_dbfs")
    model.llm.freeze()  # inference: nothing trains; train.py re-enables what it trains
    return model.to(device=device).eval()


def tokenizer_path(folder) -> Path | None:
    config = json.loads((Path(folder) / "config.json").read_text())
    return Path(folder) / config["tokenizer"] if "tokenizer" in config else None
