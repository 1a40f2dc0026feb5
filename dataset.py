"""
Training data: manifests in, padded (mel, tokens) batches out.

Two sources (recipe §7):
- a JSONL manifest, one utterance a line, NeMo's fields `audio_filepath`, `text`, `duration`
  (relative audio paths are taken relative to the manifest's folder); features are computed in the DataLoader workers;
- the release's parquet mel dataset (`mel` = np.save bytes of float16 (80, T), `text`, `duration`), via pyarrow.
Augmentation as recipe §1: speed perturbation x{0.9, 1.0, 1.1} on raw audio, SpecAugment (2 frequency masks of
width U[0, 27], 2 time masks of width U[0, 100], filled with 0.0); beyond the release, augment.py's waveform ops
(reverb, noise, telephone band, gain; babble from a small pool of the set's own utterances) and mel.normalize_level
before the log-mel, when a model folder uses it. Each item's randomness comes from
(seed, epoch, index), so a resumed run sees exactly the batches and masks an uninterrupted one would.
Rows with empty text or longer than the window are skipped (and counted by reason); drop_unreadable() reads every
row's audio header up front and drops the unreadable ones; a row that still fails when read becomes None and is
counted, never a crash. A mistyped manifest line is an error naming file:line.
"""
import io
import json
import math
import random
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from augment import AugmentConfig, augment
from mel import (N_MELS, SAMPLE_RATE, AudioError, load_audio, log_mel_spectrogram, normalize_level, open_audio,
                 resample)
from tokenizer import normalize

MAX_TEXT_TOKENS = 255  # targets are cut to 255 ids (+ EOS) as in the original
BABBLE_POOL = 32  # utterances held for babble noise: 3-5 of them summed; <= 32 x 15 s x 64 kB/s = 31 MB a worker


def read_manifest(path):
    """
    JSONL -> list of dicts with an absolute `audio_filepath` and the line number in `_line`.
    A line that is not UTF-8, not a JSON object, or has a field of the wrong type is an error naming `file:line`:
    audio_filepath and text must be strings, duration (optional) a number >= 0.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: manifest not found")
    rows = []
    with open(path, "rb") as f:  # line by line: a bad byte is reported at its line, not as a file-wide decode error
        for n, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise ValueError(f"{path}:{n}: not UTF-8 (byte {raw[e.start]:#04x} at column {e.start + 1})") from None
            if line.strip():
                rows.append(manifest_row(line, path, n))
    return rows


def manifest_row(line, path, n):
    """One manifest line -> a row dict; ValueError naming `path:n` and the problem."""
    where = f"{path}:{n}"
    try:
        row = json.loads(line)
    except json.JSONDecodeError as e:
        raise ValueError(f"{where}: not JSON ({e.msg} at column {e.colno})") from None
    except (ValueError, RecursionError) as e:  # an integer of over 4300 digits; arrays nested thousands deep
        why = "nested too deeply" if isinstance(e, RecursionError) else str(e).split(";")[0]
        raise ValueError(f"{where}: not JSON we read ({why})") from None
    if not isinstance(row, dict):
        raise ValueError(f"{where}: not a JSON object with audio_filepath, text, duration")
    for key in ("audio_filepath", "text"):
        if key not in row:
            raise ValueError(f"{where}: no {key}")
        if not isinstance(row[key], str):
            raise ValueError(f"{where}: {key} is {type(row[key]).__name__}, not a string")
    if not row["audio_filepath"].strip():
        raise ValueError(f"{where}: audio_filepath is empty")
    d = row.get("duration")
    # bool is an int in python, and json's NaN/Infinity are accepted by json.loads: neither is a duration
    if d is not None and (isinstance(d, bool) or not isinstance(d, (int, float)) or not math.isfinite(d) or d < 0):
        raise ValueError(f"{where}: duration {json.dumps(d)} is not a number of seconds >= 0")
    audio = Path(row["audio_filepath"])
    row["audio_filepath"] = str(audio if audio.is_absolute() else path.parent / audio)
    row["_line"] = n
    return row


def audio_problem(path):
    """Why the audio file at `path` cannot be trained on (None if it looks fine), and its duration in seconds.
    Reads the header only, with mel.open_audio's checks (what decoding refuses, training refuses): a FIFO or a
    device is never opened, so checking a whole manifest is quick and cannot block."""
    try:
        with open_audio(path) as f:
            return None, f.frames / f.samplerate
    except AudioError as e:  # "<path>: <problem>"
        return str(e).removeprefix(f"{path}: "), None


def spec_augment(mel, g: torch.Generator, n_freq=2, freq_width=27, n_time=2, time_width=100,
                 max_time_fraction=1.0):
    """Mask random bands of a (n_mels, T) log-mel with 0.0 (SpecAugment without time warping). A time mask is also
    at most max_time_fraction of T: the release's 100 frames would blank a third of a 2.4 s clip with two masks."""
    mel = mel.clone()
    n_mels, T = mel.shape
    time_width = min(time_width, int(max_time_fraction * T))
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
                 wave_augment: AugmentConfig | None = None, babble_pool=BABBLE_POOL, level_dbfs=None,
                 spec_time_fraction=1.0, n_mels=N_MELS):
        self.tokenizer, self.augment, self.speed_perturb, self.seed = tokenizer, augment, speed_perturb, seed
        self.spec_time_fraction = spec_time_fraction
        self.n_mels = n_mels  # the model's EncoderConfig.n_mels
        self.wave_augment, self.babble_size, self.level_dbfs = wave_augment, babble_pool, level_dbfs
        self.babble = None  # [(audio path, wave)]: loaded by the first item that needs it, in each worker
        self.max_frames = int(max_seconds * SAMPLE_RATE) // 160  # 15 s -> 1500 frames, as the original cut
        self.epoch = 0
        self.max_seconds = max_seconds
        self.n_rows = len(rows)
        self.rows, self.why_skipped, self.unreadable = [], Counter(), 0
        for row in rows:  # cheap filters first: no audio is read here
            text = normalize(row.get("text") or "", drop_tags=drop_tags)
            if not text:
                self.why_skipped["empty text"] += 1
            elif row.get("duration") is not None and float(row["duration"]) > max_seconds:
                self.why_skipped[f"longer than {max_seconds:g} s"] += 1
            else:
                self.rows.append({**row, "text": text})

    @property
    def skipped(self):
        return sum(self.why_skipped.values())

    def drop_unreadable(self):
        """
        Check every row's audio header; drop the unreadable rows and return them as (row, problem) pairs.
        A row without a duration gets the file's, and is then skipped if longer than max_seconds.
        """
        good, bad = [], []
        for row in self.rows:
            problem, seconds = audio_problem(row["audio_filepath"])
            if problem:
                bad.append((row, problem))
                continue
            if row.get("duration") is None:
                if seconds > self.max_seconds:
                    self.why_skipped[f"longer than {self.max_seconds:g} s"] += 1
                    continue
                row = {**row, "duration": seconds}
            good.append(row)
        self.rows, self.unreadable = good, len(bad)
        return bad

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
            wav = augment(wav, g, cfg, self.babble_talkers(row["audio_filepath"]) if babble else (),
                          max_len=int(self.max_frames * 160))
        if self.level_dbfs is not None:
            wav = normalize_level(wav, self.level_dbfs)
        return log_mel_spectrogram(wav, self.n_mels)

    def __getitem__(self, index):
        row, g = self.rows[index], self.generator(index)
        try:
            mel = self.load_mel(row, g)[:, : self.max_frames]
        except (AudioError, ValueError, RuntimeError):
            return None
        if mel.shape[1] < 4:
            return None
        if self.augment:
            mel = spec_augment(mel, g, max_time_fraction=self.spec_time_fraction)
        tokens = self.tokenizer.encode(row["text"])[:MAX_TEXT_TOKENS]
        if not tokens:
            return None
        return dict(mel=mel, tokens=torch.tensor(tokens, dtype=torch.long), index=index)


class ParquetMelDataset(SpeechDataset):
    """The release's precomputed mels (recipe §7): `mel` holds np.save bytes of float16 (80, T)."""

    def __init__(self, files, tokenizer, max_seconds=15.0, augment=False, speed_perturb=False, seed=0,
                 wave_augment=None, level_dbfs=None, spec_time_fraction=1.0, n_mels=N_MELS):
        if level_dbfs is not None:  # decoding would normalise audio these mels never saw normalised
            raise ValueError(f"{files[0]}: level normalisation needs audio, not precomputed mels (drop --level-norm)")
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise ValueError("reading parquet mel datasets needs pyarrow: pip install pyarrow") from None
        rows = []
        for f in files:
            try:
                table = pq.read_table(f, columns=["mel", "text", "duration"])
            except Exception as e:  # pyarrow's errors: missing columns, not parquet, damaged
                raise ValueError(f"{f}: not a parquet mel file ({type(e).__name__}: "
                                 f"{str(e).splitlines()[0] if str(e) else 'unreadable'})") from None
            if not str(table.schema.field("text").type).endswith("string"):
                raise ValueError(f"{f}: column text is {table.schema.field('text').type}, not strings")
            rows += [dict(mel=m, text=t, duration=d, _source=str(f), _line=n) for n, (m, t, d) in
                     enumerate(zip(table["mel"].to_pylist(), table["text"].to_pylist(),
                                   table["duration"].to_pylist()), 1)]
        super().__init__(rows, tokenizer, max_seconds, augment, False, seed,  # mels: no speed perturbation
                         spec_time_fraction=spec_time_fraction, n_mels=n_mels)

    def load_mel(self, row, g):  # no speed perturbation nor waveform augmentation: there is no waveform
        return torch.from_numpy(np.load(io.BytesIO(row["mel"])).astype(np.float32))

    def drop_unreadable(self):
        """As SpeechDataset's, on the np.save header of each row's mel (the array itself is not read)."""
        good, bad = [], []
        for row in self.rows:
            problem = mel_problem(row["mel"], self.n_mels)
            (bad.append((row, problem)) if problem else good.append(row))
        self.rows, self.unreadable = good, len(bad)
        return bad


def mel_problem(blob, n_mels=N_MELS):
    """Why np.save bytes are not a (n_mels, T) float array (None if they are), from the header alone."""
    if not isinstance(blob, bytes):
        return "mel is not bytes"
    try:
        f = io.BytesIO(blob)
        version = np.lib.format.read_magic(f)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, dtype = read(f)
    except Exception:
        return "mel is not np.save bytes"
    if len(shape) != 2 or shape[0] != n_mels or shape[1] < 1 or dtype.kind != "f":
        return f"mel is {dtype} {shape}, not a float ({n_mels}, T) array"
    if len(blob) < f.tell() + shape[0] * shape[1] * dtype.itemsize:
        return "mel is truncated"
    return None


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
