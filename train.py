"""
Train the speech recogniser: the joint CE/CTC recipe of SozKZ OmniAudio v2 (recipe §4, §7).

    python train.py                 # the teaching model, stage 1: ctc on data/synth -> runs/teach/ctc/best
    python train.py --stage e2e     # stage 2: e2e from runs/teach/ctc/best -> runs/teach/e2e/best (decode.py --model)
    python train.py --preset 300m --stage ctc --train train.jsonl --valid valid.jsonl --out runs/ctc
    python train.py --preset 300m --stage e2e --init runs/ctc/best --train ... --out runs/e2e
    torchrun --nproc_per_node 2 train.py ...          (DistributedDataParallel: NCCL on GPUs, gloo on CPU)

Stages: `ctc` trains the encoder and CTC head on CTC alone; `e2e` starts from it and trains encoder, projector and
CTC head on 0.7 CE + 0.3 CTC through the frozen Llama decoder. With no flags, train.py is the teach preset's ctc
stage (scripts/train_teaching_model.sh's): data/synth/{train,valid}.jsonl (made by `python data/prepare_synthetic.py
all`), the shipped tokenizer and decoder in models/teach/, on CUDA with bfloat16 and batch 128 when there is a GPU,
else on the CPU in float32, batch 32; `--stage e2e` is its second stage (from runs/teach/ctc/best: the projector fit
of projector_fit.py, then 4 epochs at lr 1e-3, with 0.3 of the row-CTC, a second CTC loss on the projected audio
scored against the decoder's own embedding rows, added). Every flag overrides; `--preset 300m` is the release's recipe. The original's flaws are fixed by default, each behind
a flag (--no-masks --no-vocab-fix --label-smoothing 0 give back the original's maths):
  --masks           padding masks in encoder and decoder, true lengths for CTC (the original had none)
  --vocab-fix       decoder rows the base Llama lacks (ids >= 50257 in the release) are trainable; the rest stays frozen
  --label-smoothing 0.1 is actually applied (the original configured it and applied none)
CE logits are computed only at the text positions (the original projected every audio frame onto 100k ids).
Gradient accumulation normalises by the tokens (CE) and utterances (CTC) of the whole accumulation window, so
batch 2 x accumulation 2 gives the same update as batch 4 x 1.

Before the first step, bad input stops the run with one line naming the file and the problem, exit 2 (check_config,
drop_unreadable, check_plan, resume); one run at a time holds --out/train.lock. trainer.pt holds only tensors and
plain containers and is loaded with weights_only=True, so a checkpoint never runs code.
"""
import argparse
import copy
import json
import math
import os
import random
import re
import shutil
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from safetensors import SafetensorError
from tqdm import tqdm

from atomic import atomic_folder, write_text
from augment import AugmentConfig
import cli
from dataset import BatchSampler, collate, open_dataset
from decoder import CheckpointError, load_llama, pick_device, read_safetensors
from encoder import ENCODER_PRESETS, EncoderConfig
from mel import LEVEL_DBFS
from model import ASRModel, check_state_dict, decoder_path, extra_rows, load_model, save_model, write_model_files
from projector_fit import fit_projector
from run_folder import WRITE_ERRORS, Log, lock_out, release_out, remove_stale_temporaries, write_problem
from tokenizer import BLANK_ID, Tokenizer


REPO = Path(__file__).resolve().parent


def arg(default, help):
    return field(default=default, metadata=dict(help=help))


@dataclass
class TrainConfig:
    # what to train
    stage: str = arg("e2e", "ctc: encoder + CTC head on CTC alone; e2e: 0.7 CE + 0.3 CTC through the frozen decoder")
    train: str = arg("", "training data: a JSONL manifest or parquet mel files (recipe §7)")
    valid: str = arg("", "validation data, same formats (optional)")
    tokenizer: str = arg("", "tokenizer file: sentencepiece .model or Hugging Face tokenizer.json")
    decoder: str = arg("", "Hugging Face Llama folder of the frozen decoder")
    init: str = arg("", "model folder to start from (e2e starts from the best ctc checkpoint)")
    encoder: str = arg("300m", "encoder preset for a fresh model (encoder.ENCODER_PRESETS)")
    out: str = arg("runs/asr", "output folder: checkpoint-{step}/, best/, log.jsonl")
    # optimisation (the run behind checkpoint-92000, recipe §7)
    batch_size: int = arg(12, "utterances per micro-batch (per process)")
    grad_accum: int = arg(4, "micro-batches per optimiser step")
    lr: float = arg(2e-4, "peak learning rate (AdamW)")
    warmup: float = arg(0.05, "fraction of steps of linear warm-up, then linear decay to 0")
    weight_decay: float = arg(0.01, "AdamW weight decay (matrices only, not norms or biases)")
    clip: float = arg(1.0, "gradient-norm clipping")
    epochs: int = arg(5, "passes over the training data")
    max_steps: int = arg(0, "optimiser steps; 0 = epochs x steps per epoch")
    ctc_loss_weight: float = arg(0.3, "training loss weight w: e2e loss = (1 - w) CE + w CTC (not decode.py's "
                                      "--ctc-weight, the weight of CTC in joint decoding)")
    projector_fit: bool = arg(False, "e2e from a ctc model: first solve the projector by least squares to the decoder's "
                                     "rows of the aligned tokens (projector_fit.py; the release started it at random)")
    row_ctc_weight: float = arg(0.0, "weight r of a second CTC loss added in e2e, + r row-CTC: on the projected audio, "
                                     "scored by cosine against the frozen decoder's own embedding rows, <pad> the "
                                     "blank; it teaches the projector to write the tokens as the decoder reads them "
                                     "(the copy exercises' layout; not in the release: 0)")
    label_smoothing: float = arg(0.1, "CE label smoothing (the original configured 0.1 but applied 0)")
    max_seconds: float = arg(15.0, "training window: longer utterances are skipped, audio cut to this")
    dropout: float = arg(0.1, "encoder dropout")
    # the original's flaws, fixed by default
    masks: bool = arg(True, "padding masks in encoder and decoder and true CTC lengths (--no-masks: the original)")
    vocab_fix: bool = arg(True, "train the decoder rows the base Llama lacks (--no-vocab-fix: frozen mean rows)")
    # augmentation (recipe §1)
    speed_perturb: bool = arg(True, "speed perturbation x{0.9, 1.0, 1.1} (audio manifests only)")
    spec_augment: bool = arg(True, "SpecAugment: 2 frequency masks <= 27 bins, 2 time masks <= 100 frames")
    spec_time_fraction: float = arg(1.0, "SpecAugment: each time mask also <= this fraction of the clip "
                                         "(1: the release's 100 frames alone)")
    # waveform augmentation (augment.py; not in the release, so 0 here): probability of each op, applied in this order
    aug_silence: float = arg(0.0, "probability of a lead-in and a tail of digital silence, each 0-0.5 s (what a "
                                  "clip that starts at a pause holds before its first word)")
    aug_reverb: float = arg(0.0, "probability of a synthetic room: RT60 0.2-0.8 s, direct-to-reverberant 0-10 dB")
    aug_noise: float = arg(0.0, "probability of noise at 5-30 dB SNR: white, pink or brown, or (1 in 4) babble of "
                                "3-5 other utterances")
    aug_telephone: float = arg(0.0, "probability of a telephone line: to 8 kHz and back, band-passed to ~300-3400 Hz")
    aug_gain: float = arg(0.0, "probability of a gain uniform in +-aug_gain_db dB (float, not clipped)")
    aug_gain_db: float = arg(20.0, "range of that gain in dB")
    level_norm: bool = arg(False, f"scale each utterance to {LEVEL_DBFS:g} dBFS RMS before the log-mel; stored in the "
                                  "model folder (config.json level_dbfs), so decoding does the same (release: off)")
    bucket: bool = arg(True, "length-bucketed batches (less padding)")
    # running
    device: str = arg("auto", "where to train: auto (cuda when present, else cpu), cpu, cuda or cuda:N")
    dtype: str = arg("auto", "autocast dtype; auto: bfloat16 on cuda, float32 on cpu")
    grad_checkpointing: bool = arg(False, "recompute encoder blocks in backward: less memory, ~30% more time")
    save_every: int = arg(4000, "save a checkpoint every N optimiser steps")
    keep: int = arg(3, "checkpoints kept (the best is kept apart in best/)")
    eval_every: int = arg(0, "validate every N steps; 0 = once an epoch")
    eval_wer: int = arg(50, "validation utterances decoded greedily for WER")
    eval_listen: int = arg(200, "validation utterances for the listen gap: CE with shuffled minus own audio (e2e)")
    log_every: int = arg(10, "steps between log lines")
    num_workers: int = arg(2, "DataLoader worker processes (features are computed there)")
    seed: int = arg(42, "seed for initialisation, data order and augmentation")
    max_bad_steps: int = arg(20, "stop after this many non-finite steps in a row")
    max_bad_fraction: float = arg(0.01, "stop before training when more than this fraction of a data set's rows "
                                        "has unreadable audio (all of them are listed in --out/bad_rows.tsv)")
    resume: bool = arg(False, "continue from the newest intact checkpoint in --out")
    allow_changes: bool = arg(False, "let --resume continue with settings other than the run was started with")
    stop_at: int = arg(0, "end this run after step N with a checkpoint (the schedule still follows --max-steps); "
                          "continue with --resume")


PRESETS = {
    "300m": dict(encoder="300m"),  # the dataclass defaults are the released recipe
    # the teaching model: a few thousand synthetic utterances on a laptop CPU (README: how it was trained)
    "teach": dict(encoder="teach", batch_size=32, grad_accum=1, lr=2e-3, warmup=0.05, epochs=4, max_seconds=15.0,
                  spec_augment=True, spec_time_fraction=0.1, speed_perturb=True, save_every=200, eval_every=200, eval_wer=60,
                  num_workers=1,
                  # robustness to level, noise, 8 kHz and rooms; under --level-norm the gain is a no-op (it is
                  # normalised away) kept for --no-level-norm runs, where it is what teaches level invariance
                  aug_reverb=0.3, aug_noise=0.5, aug_telephone=0.15, aug_gain=0.8, level_norm=True),
}
# what `python train.py` alone trains (the teach preset): its first stage, on the teaching data, with the shipped
# tokenizer and frozen decoder
PRESET_RUNS = {"teach": dict(stage="ctc", train=os.path.relpath(REPO / "data/synth/train.jsonl"),
                             valid=os.path.relpath(REPO / "data/synth/valid.jsonl"),
                             tokenizer=os.path.relpath(REPO / "models/teach/tokenizer.model"),
                             decoder=os.path.relpath(REPO / "models/teach/decoder"), out="runs/teach/ctc")}
# a preset's values for one stage: the teaching ctc stage runs 8 epochs (3000 steps of 32: on augmented audio it
# was still learning at 1500); `python train.py --stage e2e` continues the teaching recipe from the ctc run's best/,
# as scripts/train_teaching_model.sh does: the projector fit, then 4 epochs (1500 steps of 32) with the row-CTC
STAGE_PRESETS = {("teach", "ctc"): dict(epochs=8),
                 ("teach", "e2e"): dict(init="runs/teach/ctc/best", out="runs/teach/e2e", lr=1e-3, epochs=4,
                                        projector_fit=True, row_ctc_weight=0.3)}
TEACH_DATA = "python data/prepare_synthetic.py all"  # the command that makes data/synth/ (README: the teaching model)
GPU_BATCH = dict(batch_size=128, lr=4e-3, num_workers=4)  # teach on CUDA: 4x the batch, 2x the rate (sqrt rule)


CHOICES = {"stage": ("ctc", "e2e"), "encoder": tuple(ENCODER_PRESETS), "dtype": ("auto", "bfloat16", "float32")}


# ---------------------------------------------------------------------------------------------------------------
# the loss

class Objective(nn.Module):
    """The model and its loss in one forward, so DistributedDataParallel sees the whole computation."""

    def __init__(self, model: ASRModel, cfg: TrainConfig, eos_id: int, pad_id: int = -1):
        super().__init__()
        self.model, self.cfg, self.eos_id, self.pad_id = model, cfg, eos_id, pad_id  # pad: the row-CTC's blank
        self.ctc_weight = cfg.ctc_loss_weight  # w in (1 - w) CE + w CTC; a schedule would set it before each step

    def forward(self, mel, mel_lengths, tokens, token_lengths, n_tokens, n_items):
        """
        mel (B, 80, T), tokens (B, L) padded with 0; n_tokens / n_items: CE targets and utterances in the whole
        accumulation window (all processes), so each micro-batch's loss is its share of the window's mean.
        returns the loss to backpropagate and a dict of summed statistics
        """
        cfg = self.cfg
        out = self.model(mel, mel_lengths if cfg.masks else None, tokens if cfg.stage == "e2e" else None)
        ctc = ctc_loss(out.ctc_log_probs, out.enc_lengths, tokens, token_lengths)
        stats = dict(ctc=ctc.item())
        if out.logits is None:  # the ctc stage: the encoder alone
            return ctc / n_items, stats
        ce = ce_loss(out.logits, ce_targets(tokens, token_lengths, self.eos_id), cfg.label_smoothing)
        stats["ce"] = ce.item()
        w = self.ctc_weight
        loss = (1 - w) * ce / n_tokens + w * ctc / n_items
        if cfg.row_ctc_weight:
            llm = self.model.llm  # every id's row, the extended ones too; detached: only the audio side learns
            rows = llm.rows().detach()
            row = ctc_loss(row_log_probs(out.audio, rows), out.enc_lengths, tokens, token_lengths, blank=self.pad_id)
            stats["row_ctc"] = row.item()
            loss = loss + cfg.row_ctc_weight * row / n_items
        return loss, stats


def ctc_loss(log_probs, lengths, tokens, token_lengths, blank=BLANK_ID):
    """Summed over utterances of (CTC loss / target length): PyTorch's 'mean' reduction before its batch mean."""
    loss = F.ctc_loss(log_probs.transpose(0, 1), tokens, lengths, token_lengths, blank=blank,
                      reduction="none", zero_infinity=True)  # (B,)
    return (loss / token_lengths.clamp(min=1)).sum()


ROW_SCALE = 20.0  # row-CTC logits: 20 x cosine, so a frame at cosine 0.5 over the others scores 10 nats above them


def row_log_probs(audio, rows):
    """Projected audio (B, T', d), the decoder's embedding rows (V, d) -> (B, T', V) float32 log-probs: each frame's
    cosine with each row, x ROW_SCALE. The decoder's first RMSNorm keeps only a slot's direction, so that is what
    is scored: the nearest row in direction is the token the decoder sees there."""
    cos = F.normalize(audio.float(), dim=-1) @ F.normalize(rows.float(), dim=-1).T
    return (ROW_SCALE * cos).log_softmax(-1)


def ce_targets(tokens, token_lengths, eos_id):
    """What the L+1 predicting positions of ASRModel.forward must say (recipe §4): text, then EOS, then
    nothing (-100): tokens [[5, 6], [7, 0]], lengths [2, 1] -> [[5, 6, EOS], [7, EOS, -100]]."""
    B, L = tokens.shape
    targets = torch.cat([tokens, torch.zeros(B, 1, dtype=tokens.dtype, device=tokens.device)], dim=1)
    j = torch.arange(L + 1, device=tokens.device)[None]
    targets = torch.where(j < token_lengths[:, None], targets, -100)
    return torch.where(j == token_lengths[:, None], eos_id, targets)  # (B, L+1)


def ce_loss(logits, targets, label_smoothing):
    """Summed CE of logits (B, L+1, V) against targets (B, L+1), -100 ignored."""
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-100, reduction="sum",
                           label_smoothing=label_smoothing)


def window_counts(window, device, ddp=False, world=1):
    """CE targets (text + EOS) and utterances in an accumulation window, over all processes, divided by the number
    of processes (DistributedDataParallel averages gradients over processes: this undoes it)."""
    counts = torch.tensor([sum(float(b["token_lengths"].sum() + b["size"]) for b in window),
                           sum(float(b["size"]) for b in window)], device=device)
    if ddp:
        dist.all_reduce(counts)
    return (counts / world).tolist()


# seconds an optimiser step of 32 teaching-preset clips took on one CPU thread with one data worker (2 busy cores,
# augmentation on); a run's own pace shows in the bar after a few steps
CPU_STEP_SECONDS = {"ctc": 2.2, "e2e": 4.2}


def expected_time(cfg: TrainConfig, device: str, step: int, end: int, world: int) -> str:
    """'expect about 55 min (...)': the plan line's time for steps step..end, from CPU_STEP_SECONDS where it
    applies (the teaching encoder on one CPU process)."""
    left = end - step
    if cfg.encoder != "teach" or not device.startswith("cpu") or world > 1:
        return f"{left} steps to go: the bar shows the time once a few are done"
    seconds = left * CPU_STEP_SECONDS[cfg.stage] * cfg.batch_size * cfg.grad_accum / 32
    took = f"{seconds / 60:.0f} min" if seconds >= 120 else f"{seconds:.0f} s"
    return (f"expect about {took} for {left} steps ({CPU_STEP_SECONDS[cfg.stage]:g} s a step of 32 on one CPU "
            "thread; the bar shows this machine's pace)")


def get_lr(step, cfg: TrainConfig, max_steps):
    """Linear warm-up over the first `warmup` of the steps, then linear decay to 0 (as the original's scheduler)."""
    warm = int(cfg.warmup * max_steps)
    if step < warm:
        return cfg.lr * step / max(1, warm)
    return cfg.lr * max(0.0, (max_steps - step) / max(1, max_steps - warm))


# ---------------------------------------------------------------------------------------------------------------
# setup

def build_model(cfg: TrainConfig, tokenizer: Tokenizer) -> ASRModel:
    """A fresh model (encoder preset + frozen decoder) or one loaded from --init; then choose what trains."""
    if cfg.init:
        model = load_model(cfg.init, decoder=cfg.decoder or None)  # checks every tensor, finite ones only
        cfg.decoder = cfg.decoder or str(decoder_path(cfg.init))  # so that best/ and checkpoints name it too
    else:
        if not cfg.decoder:
            raise ValueError("--decoder (a Hugging Face Llama folder) is needed for a fresh model")
        llm = load_llama(cfg.decoder)
        if tokenizer.vocab_size > llm.vocab_size:
            llm.extend_vocab(tokenizer.vocab_size, trainable=cfg.vocab_fix)
        enc_cfg = EncoderConfig(**ENCODER_PRESETS[cfg.encoder], dropout=cfg.dropout)
        torch.manual_seed(cfg.seed)
        model = ASRModel(enc_cfg, llm, tokenizer.vocab_size)
    if model.vocab_size != tokenizer.vocab_size:
        raise ValueError(f"{cfg.tokenizer}: {tokenizer.vocab_size} ids, but the model has {model.vocab_size}")
    for m in model.encoder.modules():
        if isinstance(m, nn.Dropout):
            m.p = cfg.dropout
    for layer in model.encoder.layers:
        layer.dropout = cfg.dropout
    model.encoder.grad_checkpointing = cfg.grad_checkpointing
    model.level_dbfs = LEVEL_DBFS if cfg.level_norm else None  # saved in config.json: decoding normalises the same
    model.requires_grad_(False)
    trained = [model.encoder, model.ctc_head] + ([model.projector] if cfg.stage == "e2e" else [])
    for part in trained:
        part.requires_grad_(True)
    if cfg.stage == "e2e" and cfg.vocab_fix:
        for rows in extra_rows(model.llm):  # only rows the base Llama lacks; base rows stay frozen
            rows.requires_grad_(True)
    return model


def make_optimizer(model, cfg: TrainConfig):
    """AdamW; weight decay on matrices only (nanoGPT's rule: biases and norm gains are not decayed)."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [dict(params=[p for p in params if p.dim() >= 2], weight_decay=cfg.weight_decay),
              dict(params=[p for p in params if p.dim() < 2], weight_decay=0.0)]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.999), eps=1e-8)


def make_loader(dataset, cfg: TrainConfig, rank, world, shuffle=True):
    """Batches of cfg.batch_size for this rank; length-bucketed for training (shuffle), plain for validation."""
    sampler = BatchSampler(dataset.durations(), cfg.batch_size, cfg.seed, cfg.bucket and shuffle, rank, world)
    loader = torch.utils.data.DataLoader(
        dataset, batch_sampler=sampler, collate_fn=collate, num_workers=cfg.num_workers,
        generator=torch.Generator().manual_seed(cfg.seed))  # own generator: the global RNG stays for dropout
    return loader, sampler


def batches_forever(loader, sampler, dataset, pos):
    """Yield batches across epochs; `pos` (epoch, batch) is updated as batches are consumed, for checkpoints."""
    while True:
        sampler.epoch = dataset.epoch = pos["epoch"]
        sampler.start = pos["batch"]
        if pos["batch"] == 0 and len(sampler) == 0:  # check_plan stops this earlier; never spin on nothing
            raise ValueError("an epoch without a single batch")
        for batch in loader:
            pos["batch"] += 1
            yield batch
        pos["epoch"] += 1
        pos["batch"] = 0


def to_device(batch, device):
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


# ---------------------------------------------------------------------------------------------------------------
# checkpoints: checkpoint-{step}/ = a model folder + trainer.pt (optimiser, RNG, data position, config)

def rng_state():
    """Every RNG the run draws from, as tensors and plain lists (trainer.pt loads with weights_only=True)."""
    version, key, gauss = random.getstate()  # (3, 625 ints, None or float)
    kind, np_key, np_pos, has_gauss, cached = np.random.get_state()  # ('MT19937', uint32 (624,), int, int, float)
    return dict(python=dict(version=version, key=torch.tensor(key, dtype=torch.int64), gauss=gauss),
                numpy=dict(kind=kind, key=torch.from_numpy(np_key.astype(np.int64)), pos=int(np_pos),
                           has_gauss=int(has_gauss), cached=float(cached)),
                torch=torch.get_rng_state(),
                cuda=torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [])


def set_rng_state(rng):
    """The inverse of rng_state()."""
    py, npy = rng["python"], rng["numpy"]
    random.setstate((py["version"], tuple(py["key"].tolist()), py["gauss"]))
    np.random.set_state((npy["kind"], npy["key"].numpy().astype(np.uint32), npy["pos"], npy["has_gauss"],
                         npy["cached"]))
    torch.set_rng_state(rng["torch"])
    if rng["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])


def save_checkpoint(path, model, optimizer, step, pos, cfg, extra=None):
    """Write into a temporary folder, then rename (atomic.py): a crash or a full disk never leaves a half-written
    checkpoint, and the earlier checkpoints are not touched. trainer.pt holds only tensors and plain containers, so
    loading it never runs code. The learning-rate schedule is a function of the step (get_lr), so the step is its
    whole state."""
    path = Path(path)
    state = dict(optimizer=optimizer.state_dict(), step=step, pos=dict(pos), config=asdict(cfg), rng=rng_state(),
                 **(extra or {}))
    try:
        with atomic_folder(path) as tmp:
            write_model_files(model, tmp, path, tokenizer=cfg.tokenizer, decoder=cfg.decoder or None,
                              copy_decoder=False,  # beside its run: the decoder by path, not copied
                              extra_config=dict(stage=cfg.stage, step=step))
            torch.save(state, tmp / "trainer.pt")
    except WRITE_ERRORS as e:
        raise ValueError(f"{path}: cannot write the checkpoint ({write_problem(e, path.parent)}); "
                         "the earlier ones are intact") from None


class DamagedCheckpoint(ValueError):
    """A checkpoint that cannot be read (cut short, garbage, non-finite weights): --resume tries an older one."""


def checkpoints(out):
    """checkpoint-{step} folders in `out`, oldest first; other names (checkpoint-final, checkpoint-abc) are not ours."""
    found = [(int(m[1]), p) for p in Path(out).glob("checkpoint-*") if (m := re.fullmatch(r"checkpoint-(\d+)", p.name))]
    return [p for _, p in sorted(found) if p.is_dir()]


def read_trainer_file(path):
    """trainer.pt -> dict, with weights_only=True: a file holding anything but tensors and plain containers
    (a tampered pickle) is refused before any of it runs (ValueError); damage is a DamagedCheckpoint."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise DamagedCheckpoint(f"{path}: missing") from None
    except Exception as e:
        what = re.search(r"GLOBAL (\S+)", str(e))
        if what:  # the weights-only unpickler met a class or function: loading the file would run code
            raise ValueError(f"{path}: refused, loading it would call {what.group(1)} "
                             "(a checkpoint holds only tensors and plain containers)") from None
        raise DamagedCheckpoint(f"{path}: damaged or not a torch file ({type(e).__name__})") from None
    if not isinstance(state, dict) or not {"optimizer", "step", "pos", "rng"} <= set(state):
        raise DamagedCheckpoint(f"{path}: not a trainer state (expected optimizer, step, pos, rng)")
    return state


def read_weights(folder, model):
    """folder/model.safetensors, checked strictly against `model` (names, shapes) and for NaN/inf."""
    path = Path(folder) / "model.safetensors"
    try:
        sd = read_safetensors(str(path))  # every tensor read and checked finite
    except CheckpointError as e:
        raise DamagedCheckpoint(str(e)) from None
    check_state_dict(model.own_state_dict(), sd, path)  # another model's checkpoint: an error, not damage
    return sd


# settings that may change on --resume without changing what is trained (where and how often things are written)
FREE_ON_RESUME = {"resume", "allow_changes", "stop_at", "out", "valid", "device", "num_workers", "save_every", "keep",
                  "eval_every", "eval_wer", "eval_listen", "log_every", "max_bad_steps", "max_bad_fraction"}


def changed_settings(saved: dict, cfg: TrainConfig):
    """['--lr 0.002 -> 0.001', ...]: the settings of `cfg` that differ from those the run was started with."""
    now = asdict(cfg)
    return [f"--{k.replace('_', '-')} {saved[k]} -> {now[k]}" for k in now
            if k in saved and k not in FREE_ON_RESUME and saved[k] != now[k]]


def resume(out, cfg: TrainConfig, model, optimizer, master):
    """
    Load the newest intact checkpoint in `out` into model and optimizer and set every RNG; returns its trainer
    dict (step, data position, best), or None when there is no checkpoint. A damaged one is skipped with a warning;
    changed settings are refused unless --allow-changes.
    """
    ckpts = checkpoints(out)
    for ckpt in reversed(ckpts):
        try:
            state = read_trainer_file(ckpt / "trainer.pt")
            sd = read_weights(ckpt, model)
        except DamagedCheckpoint as e:
            if master:
                print(f"warning: {e}; trying an older checkpoint")
            continue
        changes = changed_settings(state.get("config", {}), cfg)
        if changes and not cfg.allow_changes:
            raise ValueError(f"{ckpt}: the run was started with other settings: {', '.join(changes)} "
                             "(resume with the same ones, or pass --allow-changes)")
        if changes and master:
            print(f"warning: {ckpt}: resuming with changed settings: {', '.join(changes)}")
        model.load_state_dict(sd, strict=False)  # strict over own_state_dict: read_weights checked every name
        try:
            optimizer.load_state_dict(state["optimizer"])
            set_rng_state(state["rng"])
        except (ValueError, KeyError, TypeError, RuntimeError) as e:
            raise ValueError(f"{ckpt / 'trainer.pt'}: does not fit this model's optimiser or RNGs "
                             f"({type(e).__name__})") from None
        if master:
            print(f"resuming from {ckpt} (step {state['step']})")
        return state
    if ckpts:
        raise ValueError(f"{out}: no intact checkpoint to resume from ({len(ckpts)} damaged, see the warnings)")
    if master:
        print(f"no checkpoint in {out}: starting at step 0")
    return None


def prune_checkpoints(out, keep):
    ckpts = checkpoints(out)
    for p in ckpts[:-keep] if keep > 0 else []:
        shutil.rmtree(p, ignore_errors=True)


# ---------------------------------------------------------------------------------------------------------------
# checks before the first step: bad input stops here with one line naming the file, not mid-run

def check_config(cfg: TrainConfig):
    """ValueError naming the first flag out of range (argparse checks only the type; nan passes it)."""
    for name, allowed in CHOICES.items():
        if getattr(cfg, name) not in allowed:
            raise ValueError(f"--{name} {getattr(cfg, name)}: must be one of {', '.join(allowed)}")
    if cfg.device not in ("auto", "cpu", "cuda") and not re.fullmatch(r"cuda:\d+", cfg.device):
        raise ValueError(f"--device {cfg.device}: must be auto, cpu, cuda or cuda:N")
    if not cfg.train or not cfg.tokenizer:
        raise ValueError("--train and --tokenizer are required")
    if cfg.stage == "e2e" and cfg.projector_fit and not cfg.init:
        raise ValueError("--projector-fit aligns transcripts with a trained CTC head: it needs --init (a ctc-stage "
                         "model), or --no-projector-fit")
    for flag, on in (("--projector-fit", cfg.projector_fit), ("--row-ctc-weight", cfg.row_ctc_weight)):
        if cfg.stage == "ctc" and on:  # both act on the projector, which the ctc stage does not train
            raise ValueError(f"{flag}: an e2e-stage option (the ctc stage trains the encoder alone); give --stage e2e")
    for data in (cfg.train, cfg.valid):
        if data and not Path(data).exists() and Path(data).resolve().parent == REPO / "data" / "synth":
            raise ValueError(f"{data}: the teaching data are not made yet; make them with `{TEACH_DATA}` "
                             "(README: the teaching model)")
    ranges = [  # written so that nan fails them: every comparison with nan is False
        ("batch_size", cfg.batch_size >= 1, ">= 1"), ("grad_accum", cfg.grad_accum >= 1, ">= 1"),
        ("lr", 0 < cfg.lr < math.inf, "> 0"), ("warmup", 0 <= cfg.warmup < 1, "in [0, 1)"),
        ("weight_decay", 0 <= cfg.weight_decay < math.inf, ">= 0"), ("clip", 0 < cfg.clip < math.inf, "> 0"),
        ("epochs", cfg.epochs >= 0, ">= 0"), ("max_steps", cfg.max_steps >= 0, ">= 0"),
        ("ctc_loss_weight", 0 <= cfg.ctc_loss_weight <= 1, "in [0, 1]"),
        ("row_ctc_weight", 0 <= cfg.row_ctc_weight <= 100, "in [0, 100]"),
        ("label_smoothing", 0 <= cfg.label_smoothing < 1, "in [0, 1)"),
        ("max_seconds", 0 < cfg.max_seconds < math.inf, "> 0"), ("dropout", 0 <= cfg.dropout < 1, "in [0, 1)"),
        ("save_every", cfg.save_every >= 1, ">= 1"), ("keep", cfg.keep >= 0, ">= 0 (0 keeps all)"),
        ("eval_every", cfg.eval_every >= 0, ">= 0"), ("eval_wer", cfg.eval_wer >= 0, ">= 0"),
        ("log_every", cfg.log_every >= 1, ">= 1"), ("num_workers", cfg.num_workers >= 0, ">= 0"),
        ("max_bad_steps", cfg.max_bad_steps >= 1, ">= 1"),
        ("max_bad_fraction", 0 <= cfg.max_bad_fraction <= 1, "in [0, 1]"), ("stop_at", cfg.stop_at >= 0, ">= 0"),
        ("spec_time_fraction", 0 < cfg.spec_time_fraction <= 1, "in (0, 1]"),
        ("eval_listen", cfg.eval_listen >= 0, ">= 0"), ("aug_gain_db", 0 <= cfg.aug_gain_db < math.inf, ">= 0"),
        ("seed", 0 <= cfg.seed < 2**32, "in [0, 2**32 - 1] (numpy's seeds)"),
    ] + [(p, 0 <= getattr(cfg, p) <= 1, "a probability in [0, 1]")
         for p in ("aug_silence", "aug_reverb", "aug_noise", "aug_telephone", "aug_gain")]
    for name, ok, want in ranges:
        if not ok:
            raise ValueError(f"--{name.replace('_', '-')} {getattr(cfg, name)}: must be {want}")


def check_out(out: Path, resume: bool):
    """--out must be a folder (or not yet exist); a fresh start into a finished run's folder would mix two runs."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out}: not a folder")
    if not resume and (checkpoints(out) or (out / "best").is_dir()):
        raise ValueError(f"{out}: holds an earlier run's checkpoints; --resume continues it, or give another --out")


def skipped_note(dataset):
    """' (all 5 rows skipped: 4 longer than 15 s, 1 empty text)' or ' (no rows)'."""
    if not dataset.n_rows:
        return " (no rows)"
    reasons = ", ".join(f"{n} {why}" for why, n in dataset.why_skipped.most_common())
    return f" (all {dataset.n_rows} rows skipped: {reasons})" if reasons else ""


SHOW_BAD_ROWS = 5  # unreadable rows named in the log; bad_rows.tsv has them all


def drop_unreadable(sets, cfg: TrainConfig, out: Path, master):
    """
    Check every row's audio header up front (soundfile.info: quick) instead of finding bad files mid-run.
    sets: [(path, dataset)]. Unreadable rows are dropped, the first few named in the log, all of them written to
    out/bad_rows.tsv; ValueError when more than --max-bad-fraction of a set is unreadable, and always when all is.
    """
    table, errors = [], []
    for path, ds in sets:
        n = len(ds)
        bad = ds.drop_unreadable()
        for row, problem in bad:
            table.append((row.get("_source", path), row.get("_line", ""), row.get("audio_filepath", ""), problem))
        if master:
            for source, line, audio, problem in table[len(table) - len(bad):][:SHOW_BAD_ROWS]:
                print(f"warning: {source}:{line}: {audio}: {problem}, skipped")
            if len(bad) > SHOW_BAD_ROWS:
                print(f"warning: {path}: {len(bad) - SHOW_BAD_ROWS} more unreadable rows, see {out / 'bad_rows.tsv'}")
        if bad and (len(bad) == n or len(bad) > cfg.max_bad_fraction * n):
            errors.append(f"{path}: {len(bad)} of {n} rows have unreadable audio "
                          + ("(all of them)" if len(bad) == n else
                             f"({100 * len(bad) / n:.1f} % > --max-bad-fraction {cfg.max_bad_fraction:g})")
                          + f", listed in {out / 'bad_rows.tsv'}")
    if master:
        tsv = out / "bad_rows.tsv"
        if table:
            write_text(tsv, "".join("\t".join(map(str, r)) + "\n" for r in [("source", "line", "audio", "problem")]
                                    + table))
        elif tsv.exists():
            tsv.unlink()  # an earlier run's list would be taken for this one's
    if errors:
        raise ValueError(errors[0])


def check_plan(cfg: TrainConfig, dataset, n_batches, world, max_steps):
    """ValueError unless the run will take at least one optimiser step (an empty epoch would spin forever)."""
    if not len(dataset):
        raise ValueError(f"{cfg.train}: nothing to train on" + skipped_note(dataset))
    if n_batches // cfg.grad_accum == 0:
        raise ValueError(f"{cfg.train}: {len(dataset)} utterances make {n_batches} batch(es) of --batch-size "
                         f"{cfg.batch_size} per process ({world} processes), fewer than --grad-accum "
                         f"{cfg.grad_accum}: not one optimiser step")
    if max_steps <= 0:
        raise ValueError(f"--epochs {cfg.epochs} and --max-steps {cfg.max_steps}: not one optimiser step")


# ---------------------------------------------------------------------------------------------------------------
# validation

@torch.no_grad()
def validate(objective, loader, cfg, device, ctx, tokenizer, n_wer):
    """Mean validation loss over the whole set, and greedy WER/CER on the first n_wer utterances."""
    from ctc import ctc_greedy
    from search import greedy_batch
    from wer import char_stats, word_stats

    model = objective.model
    model.eval()
    tot = dict(loss=0.0, n=0)
    wer_errs = wer_len = cer_errs = cer_len = 0
    for batch in loader:
        if not batch["size"]:
            continue
        batch = to_device(batch, device)
        n_tok = float(batch["token_lengths"].sum() + batch["size"])
        with ctx:
            loss, _ = objective(batch["mel"], batch["mel_lengths"], batch["tokens"], batch["token_lengths"],
                                n_tok, float(batch["size"]))
        tot["loss"] += loss.item() * batch["size"]
        tot["n"] += batch["size"]
        if n_wer > 0:
            lengths = batch["mel_lengths"]
            if cfg.stage == "ctc":
                enc, _, enc_len = model.encode(batch["mel"], lengths)
                hyps = ctc_greedy(model.ctc_log_probs(enc), enc_len)
            else:
                hyps = greedy_batch(model, batch["mel"], lengths)
            for b in range(batch["size"]):
                ref = tokenizer.decode(batch["tokens"][b, : batch["token_lengths"][b]].tolist())
                hyp = tokenizer.decode(hyps[b])
                w, c = word_stats(ref, hyp), char_stats(ref, hyp)
                wer_errs, wer_len = wer_errs + w.errors, wer_len + w.ref_len
                cer_errs, cer_len = cer_errs + c.errors, cer_len + c.ref_len
            n_wer -= batch["size"]
    model.train()
    out = dict(valid_loss=tot["loss"] / max(1, tot["n"]), valid_wer=wer_errs / max(1, wer_len),
               valid_cer=cer_errs / max(1, cer_len))
    if cfg.stage == "e2e" and tot["n"] >= 2:  # does the decoder read the audio? (listen.py)
        from listen import listen

        r = listen(model, loader, tokenizer.eos_id, device, max_utts=cfg.eval_listen)
        out.update(valid_ce_own=r["own"], valid_ce_shuffled=r["shuffled"], valid_listen_gap=r["gap"])
    return out


# ---------------------------------------------------------------------------------------------------------------
# the loop

@dataclass
class Processes:
    """Where this process trains: torchrun sets RANK/WORLD_SIZE for DistributedDataParallel; one process otherwise."""
    ddp: bool
    rank: int
    world: int
    device: str
    ctx: object  # autocast(bfloat16) on CUDA by default, else a no-op context

    @property
    def master(self) -> bool:  # rank 0 logs, validates and writes checkpoints
        return self.rank == 0


def start_processes(cfg: TrainConfig) -> Processes:
    """The process group (NCCL on GPUs, gloo on CPUs), this process's device and autocast, every RNG seeded."""
    ddp = int(os.environ.get("WORLD_SIZE", 1)) > 1
    device = pick_device(cfg.device)  # cuda without CUDA: a ValueError, one line
    rank, world = 0, 1
    if ddp:
        dist.init_process_group("nccl" if device == "cuda" else "gloo")
        rank, world = dist.get_rank(), dist.get_world_size()
        if device == "cuda":
            device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
            torch.cuda.set_device(device)
    dtype = {"auto": torch.bfloat16 if device.startswith("cuda") else torch.float32,
             "bfloat16": torch.bfloat16, "float32": torch.float32}[cfg.dtype]
    ctx = torch.autocast(device.split(":")[0], dtype=dtype) if dtype != torch.float32 else nullcontext()
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    return Processes(ddp, rank, world, device, ctx)


def open_data(cfg: TrainConfig, tokenizer, n_mels: int, out: Path, proc: Processes):
    """The training and validation sets (features of the model's n_mels), unreadable rows dropped; --out is taken
    (locked, and what a killed run left there cleaned up) first."""
    audio = dict(max_seconds=cfg.max_seconds, seed=cfg.seed, level_dbfs=LEVEL_DBFS if cfg.level_norm else None,
                 n_mels=n_mels)
    wave_augment = AugmentConfig(p_silence=cfg.aug_silence, p_reverb=cfg.aug_reverb, p_noise=cfg.aug_noise,
                                 p_telephone=cfg.aug_telephone, p_gain=cfg.aug_gain, gain_db=cfg.aug_gain_db)
    train_set = open_dataset(cfg.train, tokenizer, augment=cfg.spec_augment, speed_perturb=cfg.speed_perturb,
                             spec_time_fraction=cfg.spec_time_fraction,
                             wave_augment=wave_augment if wave_augment.enabled() else None, **audio)
    valid_set = open_dataset(cfg.valid, tokenizer, augment=False, **audio) if cfg.valid else None
    if proc.master:
        out.mkdir(parents=True, exist_ok=True)
        lock_out(out)
        remove_stale_temporaries(out)  # only now: the lock says no other run is writing them
    drop_unreadable([(cfg.train, train_set)] + ([(cfg.valid, valid_set)] if valid_set else []), cfg, out,
                    proc.master)
    if valid_set is not None and not len(valid_set):
        raise ValueError(f"{cfg.valid}: nothing to validate on" + skipped_note(valid_set))
    return train_set, valid_set


def all_finite(loss: float, grad_norm, proc: Processes) -> bool:
    """Whether this step's loss and gradients are finite in every process (all skip a bad step together)."""
    finite = torch.tensor(float(math.isfinite(loss) and torch.isfinite(grad_norm)), device=proc.device)
    if proc.ddp:
        dist.all_reduce(finite, op=dist.ReduceOp.MIN)
    return bool(finite.item())


class Progress:
    """Everything around the optimisation of one step: the bar and log.jsonl, validation and best/, checkpoints, the
    count of non-finite steps skipped in a row. Only the master process writes."""

    def __init__(self, cfg: TrainConfig, proc: Processes, out: Path, run: dict, start_step: int):
        self.cfg, self.proc, self.out, self.run = cfg, proc, out, run  # run: model, objective, optimizer, ...
        # a run from step 0 starts its log anew (a run stopped before its first checkpoint leaves one behind, and
        # --resume finds no checkpoint then); a resumed run adds to it
        self.log = Log(out / "log.jsonl", fresh=start_step == 0) if proc.master else None
        # the bar on stdout, with the log lines: stderr carries only an error, one line
        self.bar = tqdm(total=run["max_steps"], initial=start_step, disable=not proc.master, dynamic_ncols=True,
                        file=sys.stdout)
        self.bad_in_a_row, self.bad_rows, self.t0, self.utts = 0, 0, time.time(), 0
        self.eval_every = cfg.eval_every or run["steps_per_epoch"]

    def skipped(self, step: int):
        """A non-finite step was not applied; too many in a row end the run (the last checkpoint is good)."""
        self.bad_in_a_row += 1
        if self.proc.master:
            tqdm.write(f"step {step}: non-finite loss or gradient, update skipped ({self.bad_in_a_row} in a row)")
        if self.bad_in_a_row >= self.cfg.max_bad_steps:
            raise SystemExit(f"error: {self.bad_in_a_row} non-finite steps in a row; last good checkpoint in "
                             f"{self.out}")

    def after_step(self, step: int, lr: float, stats: dict, grad_norm, n_tokens: float, n_items: float):
        cfg, run, max_steps = self.cfg, self.run, self.run["max_steps"]
        self.utts += stats["utts"]
        if self.proc.master:
            rec = dict(step=step, epoch=run["pos"]["epoch"], lr=lr, loss=stats["loss"],
                       ce=stats["ce"] / max(1, n_tokens), ctc=stats["ctc"] / max(1, n_items),
                       grad_norm=float(grad_norm), utt_per_s=self.utts / (time.time() - self.t0),
                       bad_rows=self.bad_rows)
            if cfg.row_ctc_weight:
                rec["row_ctc"] = stats["row_ctc"] / max(1, n_items)
            parts = dict(ce=f"{rec['ce']:.3f}") if cfg.stage == "e2e" else {}  # ctc: there is no CE
            self.bar.set_postfix(loss=f"{rec['loss']:.3f}", **parts, ctc=f"{rec['ctc']:.3f}",
                                 lr=f"{lr:.2e}", utt_s=f"{rec['utt_per_s']:.1f}")
            self.bar.update(1)
            if step % cfg.log_every == 0 or step == max_steps:
                self.write(rec)
        if (step % self.eval_every == 0 or step == max_steps) and self.proc.master and run["valid_set"]:
            self.validate(step)
        if self.proc.master and (step % cfg.save_every == 0 or step == run["end"]):
            save_checkpoint(self.out / f"checkpoint-{step}", run["model"], run["optimizer"], step, run["pos"], cfg,
                            extra=dict(best=run["best"]))
            prune_checkpoints(self.out, cfg.keep)
        if self.proc.ddp:
            dist.barrier()

    def validate(self, step: int):
        """Validation loss and greedy WER; a new best is saved as best/."""
        run, cfg = self.run, self.cfg
        loader, _ = make_loader(run["valid_set"], cfg, 0, 1, shuffle=False)
        objective = run["objective"].module if self.proc.ddp else run["objective"]
        v = validate(objective, loader, cfg, self.proc.device, self.proc.ctx, run["tokenizer"], cfg.eval_wer)
        tqdm.write(f"step {step}: " + " ".join(f"{k} {x:.4f}" for k, x in v.items()))
        self.write(dict(step=step, **v))
        if v["valid_loss"] < run["best"]:
            run["best"] = v["valid_loss"]
            save_model(run["model"], self.out / "best", tokenizer=cfg.tokenizer, decoder=cfg.decoder or None,
                       extra_config=dict(stage=cfg.stage, step=step, **v))

    def write(self, rec: dict):
        self.log.write(json.dumps(rec) + "\n")
        self.log.flush()

    def close(self, step: int):
        self.bar.close()
        if self.proc.master and not (self.out / "best").exists():  # no validation ran: best/ is the last step
            save_model(self.run["model"], self.out / "best", tokenizer=self.cfg.tokenizer,
                       decoder=self.cfg.decoder or None,
                       extra_config=dict(stage=self.cfg.stage, step=step, best="the last step (no validation)"))
        if self.proc.master:
            release_out(self.out)
            print(f"done: {step} steps, {self.bad_rows} bad rows skipped, checkpoints in {self.out}")
        if self.proc.ddp:
            dist.destroy_process_group()


def unaugmented(dataset):
    """The same rows without augmentation (a shallow copy): the clean audio the projector fit aligns."""
    plain = copy.copy(dataset)
    plain.augment = plain.speed_perturb = False
    plain.wave_augment = None
    return plain


def start_run(cfg: TrainConfig, proc: Processes) -> dict:
    """Model, data, objective, optimiser and schedule; the step, data position and best loss to start from."""
    out = Path(cfg.out)
    check_out(out, cfg.resume)  # before anything is loaded or read
    tokenizer = Tokenizer.load(cfg.tokenizer)
    model = build_model(cfg, tokenizer).to(proc.device)  # first: the features are the model's (n_mels)
    train_set, valid_set = open_data(cfg, tokenizer, model.encoder.cfg.n_mels, out, proc)
    loader, sampler = make_loader(train_set, cfg, proc.rank, proc.world)
    steps_per_epoch = len(sampler.batches()) // cfg.grad_accum
    max_steps = cfg.max_steps or cfg.epochs * steps_per_epoch
    check_plan(cfg, train_set, len(sampler.batches()), proc.world, max_steps)
    model.train()
    objective = Objective(model, cfg, tokenizer.eos_id, tokenizer.pad_id)
    if proc.ddp:
        devices = [proc.device] if "cuda" in proc.device else None
        objective = nn.parallel.DistributedDataParallel(objective, device_ids=devices)
    optimizer = make_optimizer(model, cfg)
    end = min(max_steps, cfg.stop_at) if cfg.stop_at else max_steps
    step, pos, best = 0, dict(epoch=0, batch=0), float("inf")
    state = resume(out, cfg, model, optimizer, proc.master) if cfg.resume else None
    if state:
        step, pos, best = state["step"], state["pos"], state.get("best", best)
        if step >= end:
            raise ValueError(f"{out}: the run is at step {step} already; raise --max-steps or --stop-at to go on")
    elif cfg.stage == "e2e" and cfg.projector_fit:  # a fresh e2e run: the frozen decoder reads the audio from step 0
        fit = fit_projector(model, unaugmented(train_set), tokenizer.pad_id)
        if proc.master:
            print(f"projector fit on {fit['frames']} frames ({fit['token_frames']} token frames): the nearest decoder "
                  f"row is the aligned token on {fit['token_accuracy']:.1%} of token frames and <pad> on "
                  f"{fit['pad_accuracy']:.1%} of the others")
    if proc.master:
        n_trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
        dtype = "float32" if isinstance(proc.ctx, nullcontext) else str(proc.ctx.fast_dtype).removeprefix("torch.")
        print(f"{cfg.stage}: {n_trained / 1e6:.2f}M trained parameters, {len(train_set)} utterances "
              f"({train_set.skipped} skipped, {train_set.unreadable} unreadable) of {cfg.train}, "
              f"{steps_per_epoch} steps/epoch, {max_steps} steps of {cfg.batch_size * cfg.grad_accum * proc.world} "
              f"on {proc.device} {dtype} into {out}; " + expected_time(cfg, proc.device, step, end, proc.world))
    return dict(tokenizer=tokenizer, model=model, objective=objective, optimizer=optimizer, out=out, step=step,
                pos=pos, best=best, end=end, max_steps=max_steps, steps_per_epoch=steps_per_epoch,
                valid_set=valid_set, data=batches_forever(loader, sampler, train_set, pos))


def train(cfg: TrainConfig):
    """The whole run. Each iteration is one optimiser step over cfg.grad_accum micro-batches: forward, backward
    (the gradients add up), clip, step (skipped when anything is non-finite), then logging and checkpoints."""
    check_config(cfg)
    proc = start_processes(cfg)
    run = start_run(cfg, proc)
    model, objective, optimizer, data, step = run["model"], run["objective"], run["optimizer"], run["data"], run["step"]
    progress = Progress(cfg, proc, run["out"], run, step)
    while step < run["end"]:
        lr = get_lr(step, cfg, run["max_steps"])
        for group in optimizer.param_groups:
            group["lr"] = lr
        window = [to_device(next(data), proc.device) for _ in range(cfg.grad_accum)]
        progress.bad_rows += sum(b["n_bad"] for b in window)
        window = [b for b in window if b["size"]]
        # each micro-batch's loss is its share of the whole window's mean (tokens for CE, utterances for CTC)
        n_tokens, n_items = window_counts(window, proc.device, proc.ddp, proc.world)
        stats = dict(loss=0.0, ce=0.0, ctc=0.0, row_ctc=0.0, utts=0)
        for i, b in enumerate(window):
            # DDP averages gradients over processes in a backward: only the window's last one needs to
            sync = nullcontext() if not proc.ddp or i == len(window) - 1 else objective.no_sync()
            with sync, proc.ctx:
                loss, s = objective(b["mel"], b["mel_lengths"], b["tokens"], b["token_lengths"], n_tokens, n_items)
            loss.backward()
            stats["loss"], stats["utts"] = stats["loss"] + loss.item(), stats["utts"] + b["size"]
            for k, v in s.items():  # summed CE and CTC, for the log
                stats[k] += v
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip)
        if all_finite(stats["loss"], grad_norm, proc) and window:  # every process takes part in the check
            optimizer.step()
            progress.bad_in_a_row = 0
        else:
            progress.skipped(step)
        optimizer.zero_grad(set_to_none=True)
        step += 1
        progress.after_step(step, lr, stats, grad_norm, n_tokens, n_items)
    progress.close(step)
    return model


def preset_values(preset: str, stage: str | None) -> dict:
    """The values a preset sets, for the stage named (the teach preset's e2e stage has its own)."""
    values = {**PRESETS[preset], **PRESET_RUNS.get(preset, {})}
    values.update(STAGE_PRESETS.get((preset, stage or values.get("stage", "e2e")), {}))
    return values


def parse_args(argv=None) -> TrainConfig:
    """The dataclass defaults, then the preset's values (for its stage), then the flags given. --help shows the
    defaults of the preset and stage named on the same line (`--preset 300m --help`: the release's). With the
    teach preset on a GPU, a bigger batch (GPU_BATCH) unless --batch-size is given."""
    pre = cli.ArgumentParser(add_help=False)
    pre.add_argument("--preset", default="teach", choices=list(PRESETS))
    pre.add_argument("--stage", default=None)
    known = pre.parse_known_args(argv)[0]
    base = TrainConfig(**preset_values(known.preset, known.stage))
    release = TrainConfig(**preset_values("300m", known.stage))  # shown beside another preset's values
    p = cli.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default=known.preset, choices=list(PRESETS),
                   help="teach: the small teaching model, on the teaching data (what `python train.py` alone "
                        "trains); 300m: the released recipe (recipe §7); the defaults shown below are this preset's "
                        f"(now: {known.preset}; default: teach)")
    show = lambda v: ("on" if v else "off") if isinstance(v, bool) else (v if v != "" else "none")  # noqa: E731
    for f in fields(TrainConfig):
        flag, value, theirs = "--" + f.name.replace("_", "-"), getattr(base, f.name), getattr(release, f.name)
        also = f"; released recipe: {show(theirs)}" if known.preset != "300m" and theirs != value else ""
        helptext = f"{f.metadata['help']} (default: {show(value)}{also})".replace("%", "%%")
        if f.type is bool or f.type == "bool":
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=helptext)
        else:
            # the choices are shown, and checked by check_config (one line, as every other bad value)
            metavar = "{" + ",".join(CHOICES[f.name]) + "}" if f.name in CHOICES else \
                {int: "N", float: "X"}.get(type(f.default))  # str flags keep their names (PATH-like)
            p.add_argument(flag, type=type(f.default), default=None, metavar=metavar, help=helptext)
    a = vars(p.parse_args(argv))
    preset = a.pop("preset")
    given = {k: v for k, v in a.items() if v is not None}
    cfg = TrainConfig(**{**preset_values(preset, given.get("stage")), **given})
    if preset == "teach" and cfg.device in ("auto", "cuda") and torch.cuda.is_available():
        for k, v in GPU_BATCH.items():  # the teaching model is tiny: batch 32 would leave a GPU idle
            if k not in given and not (k == "lr" and "batch_size" in given):
                setattr(cfg, k, v)
    return cfg  # checked by check_config, so that train(cfg) called from python is checked too


def main(argv=None):
    cfg = parse_args(argv)
    try:
        train(cfg)
    except (ValueError, OSError, SafetensorError) as e:  # bad input, a full disk: one line naming the file, exit 2
        release_out(Path(cfg.out))
        if isinstance(e, ValueError):
            print(f"error: {e}", file=sys.stderr)
        else:  # shutil.copy names (source, destination): the destination is the one written
            where = getattr(e, "filename2", None) or getattr(e, "filename", None) or cfg.out
            print(f"error: {where}: {getattr(e, 'strerror', None) or e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
