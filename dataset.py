"""
Training data: manifests in, padded (mel, tokens) batches out.

Two sources (SPEC section 7):
- a JSONL manifest, one utterance a line, NeMo's fields `audio_filepath`, `text`, `duration`
  (relative audio paths are taken relative to the manifest's folder); features are computed in the DataLoader workers;
- the release's parquet mel dataset (`mel` = np.save bytes of float16 (80, T), `text`, `duration`), via pyarrow.
Augmentation as SPEC section 1: speed perturbation x{0.9, 1.0, 1.1} on raw audio, SpecAugment (2 frequency masks of
width U[0, 27], 2 time masks of width U[0, 100], filled with 0.0); beyond the release, augment.py's waveform ops
(reverb, noise, telephone band, gain; babble from a small pool of the set's own utterances) and mel.normalize_level
before the log-mel, when a model folder uses it. Each item's randomness comes from
(seed, epoch, index), so a resumed run sees exactly the batches and masks an uninterrupted one would.
A bad row (missing or unreadable audio, empty text, too long) becomes None and is counted, never a crash.
"""
import io
import json
import random
from pathlib import Path

import numpy as np
import torch

from augment import AugmentConfig, augment
from mel import SAMPLE_RATE, AudioError, load_audio, log_mel_spectrogram, normalize_level, resample
from tokenizer import normalize

MAX_TEXT_TOKENS = 255  # targets are cut to 255 ids (+ EOS) as in the original
BABBLE_POOL = 32  # utterances held for babble noise: 3-5 of them summed; <= 32 x 15 s x 64 kB/s = 31 MB a worker


def read_manifest(path):
    """JSONL -> list of dicts with an absolute `audio_filepath`; a malformed line is an error naming it."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: manifest not found")
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            audio = Path(row["audio_filepath"])
        except (json.JSONDecodeError, KeyError, TypeError):
            raise ValueError(f"{path}:{n}: not a manifest line (JSON with audio_filepath, text)") from None
        row["audio_filepath"] = str(audio if audio.is_absolute() else path.parent / audio)
        rows.append(row)
    return rows


def spec_augment(mel, g: torch.Generator, n_freq=2, freq_width=27, n_time=2, time_width=100):
    """Mask random bands of a (n_mels, T) log-mel with 0.0 (SpecAugment without time warping)."""
    mel = mel.clone()
    n_mels, T = mel.shape
    for n, width, size in [(n_freq, freq_width, n_mels), (n_time, time_width, T)]:
        for _ in range(n):
            w = int(torch.randint(0, width + 1, (1,), generator=g))
            start = int(torch.randint(0, max(1, size - w + 1), (1,), generator=g))
            if size is n_mels:
                mel[start:start + w, :] = 0.0
            else:
                mel[:, start:start + w] = 0.0
    return mel


class SpeechDataset(torch.utils.data.Dataset):
    """
    Items are dicts {mel (80, T) float32, tokens LongTensor (n,), index} or None for a bad row.
    augment: SpecAugment; speed_perturb: x{0.9, 1.0, 1.1} on the waveform (audio manifests only).
    wave_augment: augment.AugmentConfig of the waveform ops, applied after speed perturbation and the 15 s cut;
    babble_pool: how many of the set's utterances babble noise draws its talkers from (loaded on first use).
    level_dbfs: mel.normalize_level to this RMS just before the log-mel (None: off, as the release).
    """

    def __init__(self, rows, tokenizer, max_seconds=15.0, augment=False, speed_perturb=False, seed=0, drop_tags=True,
                 wave_augment: AugmentConfig | None = None, babble_pool=BABBLE_POOL, level_dbfs=None):
        self.tokenizer, self.augment, self.speed_perturb, self.seed = tokenizer, augment, speed_perturb, seed
        self.wave_augment, self.babble_size, self.level_dbfs = wave_augment, babble_pool, level_dbfs
        self.babble = None  # [(audio path, wave)]: loaded by the first item that needs it, in each worker
        self.max_frames = int(max_seconds * SAMPLE_RATE) // 160  # 15 s -> 1500 frames, as the original cut
        self.epoch = 0
        self.rows, self.skipped = [], 0
        for row in rows:  # cheap filters first: no audio is read here
            text = normalize(row.get("text") or "", drop_tags=drop_tags)
            too_long = row.get("duration") is not None and float(row["duration"]) > max_seconds
            if not text or too_long:
                self.skipped += 1
                continue
            self.rows.append({**row, "text": text})

    def __len__(self):
        return len(self.rows)

    def durations(self):
        return [float(r.get("duration") or 0.0) for r in self.rows]

    def generator(self, index):
        return torch.Generator().manual_seed(hash((self.seed, self.epoch, index)) % 2**63)

    def babble_talkers(self, path) -> list:
        """Waves of the babble pool but `path`'s own: the same rows in every worker and epoch (drawn from the seed
        alone), so resuming stays exact. Unreadable rows are left out of the pool."""
        if self.babble is None:
            picks = random.Random(self.seed).sample(range(len(self.rows)), min(self.babble_size, len(self.rows)))
            self.babble = []
            for i in sorted(picks):
                try:
                    p = self.rows[i]["audio_filepath"]
                    self.babble.append((p, load_audio(p)[: self.max_frames * 160]))
                except (AudioError, ValueError, RuntimeError):
                    continue
        return [w for p, w in self.babble if p != path]

    def load_mel(self, row, g):
        wav = load_audio(row["audio_filepath"])
        if self.speed_perturb:
            speed = [0.9, 1.0, 1.1][int(torch.randint(0, 3, (1,), generator=g))]
            if speed != 1.0:  # play faster/slower: read as if sampled at sr*speed
                wav = resample(wav, int(SAMPLE_RATE * speed), SAMPLE_RATE)
        wav = wav[: int(self.max_frames * 160)]
        cfg = self.wave_augment
        if cfg is not None and cfg.enabled():
            babble = cfg.p_noise > 0 and cfg.p_babble > 0
            wav = augment(wav, g, cfg, self.babble_talkers(row["audio_filepath"]) if babble else ())
        if self.level_dbfs is not None:
            wav = normalize_level(wav, self.level_dbfs)
        return log_mel_spectrogram(wav)

    def __getitem__(self, index):
        row, g = self.rows[index], self.generator(index)
        try:
            mel = self.load_mel(row, g)[:, : self.max_frames]
        except (AudioError, ValueError, RuntimeError):
            return None
        if mel.shape[1] < 4:
            return None
        if self.augment:
            mel = spec_augment(mel, g)
        tokens = self.tokenizer.encode(row["text"])[:MAX_TEXT_TOKENS]
        if not tokens:
            return None
        return dict(mel=mel, tokens=torch.tensor(tokens, dtype=torch.long), index=index)


class ParquetMelDataset(SpeechDataset):
    """The release's precomputed mels (SPEC section 7): `mel` holds np.save bytes of float16 (80, T)."""

    def __init__(self, files, tokenizer, max_seconds=15.0, augment=False, speed_perturb=False, seed=0,
                 wave_augment=None, level_dbfs=None):
        if level_dbfs is not None:  # decoding would normalise audio these mels never saw normalised
            raise ValueError(f"{files[0]}: level normalisation needs audio, not precomputed mels (drop --level-norm)")
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise ValueError("reading parquet mel datasets needs pyarrow: pip install pyarrow") from None
        rows = []
        for f in files:
            table = pq.read_table(f, columns=["mel", "text", "duration"])
            rows += [dict(mel=m, text=t, duration=d) for m, t, d in
                     zip(table["mel"].to_pylist(), table["text"].to_pylist(), table["duration"].to_pylist())]
        super().__init__(rows, tokenizer, max_seconds, augment, False, seed)  # mels: no speed perturbation

    def load_mel(self, row, g):  # no speed perturbation nor waveform augmentation: there is no waveform
        return torch.from_numpy(np.load(io.BytesIO(row["mel"])).astype(np.float32))


def open_dataset(path, tokenizer, **kw):
    """A .jsonl manifest, or a parquet file / folder of parquet files."""
    path = Path(path)
    if path.suffix == ".jsonl" or path.suffix == ".json":
        return SpeechDataset(read_manifest(path), tokenizer, **kw)
    files = sorted(path.glob("*.parquet")) if path.is_dir() else [path]
    if not files or not all(f.suffix == ".parquet" and f.is_file() for f in files):
        raise ValueError(f"{path}: expected a .jsonl manifest or parquet files")
    return ParquetMelDataset(files, tokenizer, **kw)


def bucketed_batches(durations, batch_size, seed, epoch, bucket=True):
    """
    Index batches for one epoch. With `bucket`, shuffled indices are cut into pools of 50 batches, each pool sorted
    by duration, so a batch holds similar lengths (less padding); then the batches are shuffled. Deterministic in
    (seed, epoch): that is what makes --resume exact.
    """
    rng = random.Random(seed * 1_000_003 + epoch)
    order = list(range(len(durations)))
    rng.shuffle(order)
    if bucket:
        pool = 50 * batch_size
        order = [i for s in range(0, len(order), pool) for i in sorted(order[s:s + pool], key=lambda i: durations[i])]
    batches = [order[s:s + batch_size] for s in range(0, len(order), batch_size)]
    rng.shuffle(batches)
    return batches


class BatchSampler(torch.utils.data.Sampler):
    """This rank's share of an epoch's batches, starting from batch `start` (for --resume)."""

    def __init__(self, durations, batch_size, seed=0, bucket=True, rank=0, world=1):
        self.durations, self.batch_size, self.seed, self.bucket = durations, batch_size, seed, bucket
        self.rank, self.world = rank, world
        self.epoch, self.start = 0, 0

    def batches(self):
        all_batches = bucketed_batches(self.durations, self.batch_size, self.seed, self.epoch, self.bucket)
        n = len(all_batches) // self.world  # every rank takes the same number of steps
        return all_batches[self.rank: n * self.world: self.world]

    def __iter__(self):
        return iter(self.batches()[self.start:])

    def __len__(self):
        return len(self.batches()) - self.start


def collate(items):
    """
    Pad a list of items (None = bad row, dropped and counted) into a batch:
    mel (B, 80, T) padded with 0.0, mel_lengths (B,), tokens (B, L) padded with 0, token_lengths (B,).
    """
    good = [it for it in items if it is not None]
    batch = dict(n_bad=len(items) - len(good), size=len(good))
    if not good:
        return batch
    T = max(it["mel"].shape[1] for it in good)
    L = max(len(it["tokens"]) for it in good)
    batch["mel"] = torch.zeros(len(good), good[0]["mel"].shape[0], T)
    batch["tokens"] = torch.zeros(len(good), L, dtype=torch.long)
    for b, it in enumerate(good):
        batch["mel"][b, :, : it["mel"].shape[1]] = it["mel"]
        batch["tokens"][b, : len(it["tokens"])] = it["tokens"]
    batch["mel_lengths"] = torch.tensor([it["mel"].shape[1] for it in good])
    batch["token_lengths"] = torch.tensor([len(it["tokens"]) for it in good])
    return batch
