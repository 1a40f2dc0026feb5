"""Score ASR output, or decode a test set and score it: corpus WER and CER with bootstrap intervals.

What it follows: recipe §10. References and hypotheses are normalised alike (recipe §5), then WER and
CER are corpus-level, total edits / total reference words or characters (spaces count), equal to
jiwer's (see wer.py). Intervals come from the percentile bootstrap over utterances.

    python evaluate.py --ref refs.txt --hyp hyps.txt            # one utterance a line, same order
    python evaluate.py --ref refs.tsv --hyp hyps.tsv --json     # or id<TAB>text lines, matched by id
    python evaluate.py --manifest data/synth/test.jsonl --mode joint --out results.jsonl
    python evaluate.py --fleurs data/kk_kz --max-samples 200 --mode reference     # the card's protocol
    python evaluate.py --compare A.jsonl B.jsonl                # paired bootstrap of two --out files

A decoding run takes every decode.py flag (the model, --mode, --chunked, --window, ...), decodes
through decode.Transcriber in groups of --batch-size files (sorted by length, so batches pad
little), and reports WER/CER with intervals, S/D/I counts, the real-time factor (decode wall time /
audio seconds, on the device named), a README table row, the worst utterances and, with --out, one
JSON line per utterance. A file that cannot be read is reported on stderr, counted as failed and
scored as an empty hypothesis: a broken clip costs its words, as it would in a real system; the exit
status is then 1, unless --allow-failures. Text inputs are UTF-8 (a BOM is ignored), lines end at
\\n or \\r\\n only, and a bad line is reported as file:line.

What it does not do: decoding itself (decode.py, search.py) or text normalisation (tokenizer.py).
"""
import argparse
import atexit
import json
import math
import os
import shutil
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

import dataset
import decode
from atomic import atomic_file
import cli
from longform import audio_info
from mel import AudioError, check_file
from tokenizer import normalize
from wer import ErrorStats, char_stats, corpus_stats, format_worst, word_stats


class EvalInputError(ValueError):
    """Bad input file; str(e) == "<path>: <problem>"."""


# --- google/fleurs ------------------------------------------------------------------------

@dataclass
class FleursRow:
    id: str            # sentence id; FLEURS repeats it when several speakers read one sentence
    file: str          # wav file name, unique per row
    audio: str         # path to the wav
    reference: str     # 4th column (FLEURS' normalised transcription), normalised again (recipe §5)
    raw: str           # 3rd column, the raw transcription, for display


def _read_fleurs_tsv(path: str) -> list[tuple[str, str, str, str]]:
    """(id, file, raw, normalised) per line of a FLEURS tsv: tab-separated, no header."""
    rows = []
    for lineno, line in enumerate(_read_lines(path), 1):
        if not line.strip():
            continue
        cols = line.split("\t")
        if len(cols) < 4:  # FLEURS has 7; the first 4 (id, file, raw, normalised) are the ones read
            raise EvalInputError(f"{path}:{lineno}: {len(cols)} tab-separated columns, expected at least 4")
        rows.append((cols[0], cols[1], cols[2], cols[3]))
    return rows


def _extract_from_tar(tar_path: str, names: set[str], extract_dir: str | None) -> dict[str, str]:
    """Extract the members whose base name is in `names`; returns {name: extracted path}.

    Members are read in archive order, so the gzip stream is decompressed once after the listing.
    """
    if extract_dir is None:
        extract_dir = tempfile.mkdtemp(prefix="fleurs-")
        atexit.register(shutil.rmtree, extract_dir, True)
    os.makedirs(extract_dir, exist_ok=True)
    paths = {}
    with tarfile.open(tar_path, "r:gz") as tar:
        for member in tar:     # iterating lists and reads in one forward pass
            name = os.path.basename(member.name)
            if member.isfile() and name in names and name not in paths:
                # base names only: a member path can never escape extract_dir
                paths[name] = os.path.join(extract_dir, name)
                with tar.extractfile(member) as src, open(paths[name], "wb") as dst:
                    shutil.copyfileobj(src, dst)
    return paths


def _list_tar(tar_path: str) -> set[str]:
    try:
        with tarfile.open(tar_path, "r:gz") as tar:
            return {os.path.basename(m.name) for m in tar.getmembers() if m.isfile()}
    except (tarfile.TarError, OSError) as e:
        raise EvalInputError(f"{tar_path}: not a readable .tar.gz ({e})") from None


def read_fleurs(folder: str, split: str = "test", max_samples: int | None = None,
                extract_dir: str | None = None) -> list[FleursRow]:
    """Rows of `<folder>/<split>.tsv` whose audio exists, in file order (recipe §10).

    Audio is `<folder>/audio/<split>/<file>` or a member of `<folder>/audio/<split>.tar.gz`
    (extracted, only the rows kept, into extract_dir or a temporary folder removed at exit).
    max_samples keeps the first N rows with audio: the card's "200 samples".
    """
    rows = _read_fleurs_tsv(os.path.join(folder, f"{split}.tsv"))
    audio_dir = os.path.join(folder, "audio", split)
    tar_path = os.path.join(folder, "audio", f"{split}.tar.gz")
    if os.path.isdir(audio_dir):
        have = set(os.listdir(audio_dir))
    elif os.path.isfile(tar_path):
        have = _list_tar(tar_path)
    else:
        raise EvalInputError(f"{folder}: no audio (expected audio/{split}/ or audio/{split}.tar.gz)")
    rows = [r for r in rows if r[1] in have]
    if max_samples is not None:
        rows = rows[:max_samples]
    if os.path.isdir(audio_dir):
        paths = {r[1]: os.path.join(audio_dir, r[1]) for r in rows}
    else:
        paths = _extract_from_tar(tar_path, {r[1] for r in rows}, extract_dir)
    return [FleursRow(id=i, file=f, audio=paths[f], reference=normalize(norm), raw=raw)
            for i, f, raw, norm in rows]


# --- bootstrap ----------------------------------------------------------------------------

def _resampled_rates(stats: list[ErrorStats], idx: np.ndarray) -> np.ndarray:
    """Corpus rate of each resample; idx (n, N) utterance indices."""
    errors = np.array([s.errors for s in stats], dtype=np.int64)[idx].sum(axis=1)   # (n,)
    ref = np.array([s.ref_len for s in stats], dtype=np.int64)[idx].sum(axis=1)     # (n,)
    with np.errstate(divide="ignore", invalid="ignore"):
        # an all-empty-reference resample follows ErrorStats.rate: 0 if no errors, else inf
        return np.where(ref > 0, errors / np.maximum(ref, 1), np.where(errors > 0, np.inf, 0.0))


def bootstrap_ci(per_utt_stats: list[ErrorStats], n: int = 1000, seed: int = 0,
                 level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the corpus rate, resampling utterances with replacement."""
    if not per_utt_stats:
        raise ValueError("bootstrap_ci needs at least one utterance")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(per_utt_stats), size=(n, len(per_utt_stats)))   # (n, N)
    rates = _resampled_rates(per_utt_stats, idx)
    tail = 100 * (1 - level) / 2
    lo, hi = np.percentile(rates, [tail, 100 - tail])
    return float(lo), float(hi)


def paired_bootstrap(stats_a: list[ErrorStats], stats_b: list[ErrorStats], n: int = 1000,
                     seed: int = 0) -> float:
    """Fraction of resamples in which system A has a strictly lower corpus rate than B.

    Both lists score the same utterances in the same order; each resample draws the same
    utterances for both, so the noise of which sentences were picked cancels (Koehn 2004).
    """
    if len(stats_a) != len(stats_b) or not stats_a:
        raise ValueError(f"paired_bootstrap needs two equal, non-empty lists ({len(stats_a)} vs {len(stats_b)})")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(stats_a), size=(n, len(stats_a)))               # (n, N)
    return float(np.mean(_resampled_rates(stats_a, idx) < _resampled_rates(stats_b, idx)))


# --- reading --ref / --hyp files ---------------------------------------------------------

def _read_lines(path: str) -> list[str]:
    """A UTF-8 text file's lines: a leading byte-order mark dropped, lines ended by \\n or \\r\\n only.

    Not str.splitlines, which also breaks at U+2028, \\x0b, \\x1c and others: a transcript holding one of
    those would shift every later line onto the wrong utterance. Bad UTF-8 is an error naming file:line.
    """
    try:
        check_file(path)
        with open(path, "rb") as f:
            data = f.read()
    except AudioError as e:  # missing, a folder, a FIFO or a device: refused before anything blocks
        raise EvalInputError(str(e).replace("not an audio file", "not a text file")) from None
    except OSError as e:
        raise EvalInputError(f"{path}: cannot read ({e.strerror})") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise EvalInputError(f"{path}:{line}: not valid UTF-8 (byte 0x{data[e.start]:02x})") from None
    text = text.removeprefix("\ufeff")
    lines = text.split("\n")
    if lines[-1] == "":  # the newline that ends the last line starts no new one
        lines.pop()
    return [line.removesuffix("\r") for line in lines]


def _parse_ids(path: str, lines: list[str]) -> dict[str, str]:
    """id<TAB>text lines -> {id: text}; a line with an id and no tab is that id with an empty text."""
    out = {}
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        key, _, text = line.partition("\t")
        key = key.strip()
        if not key:
            raise EvalInputError(f"{path}:{lineno}: a text with no id before its tab")
        if key in out:
            raise EvalInputError(f"{path}:{lineno}: id {key!r} appears twice")
        out[key] = text
    return out


def read_pair(ref_path: str, hyp_path: str, layout: str = "auto") -> tuple[list[str] | None, list[str], list[str]]:
    """(ids or None, references, hypotheses) from two files.

    layout "ids": both files are id<TAB>text and are matched by id (in reference order); a line with no tab is
    an id whose text is empty (an empty hypothesis is often written so). "lines": line k of one is line k of
    the other. "auto": ids when any line of either file has a tab, else lines; a file is never read half one
    way and half the other.
    """
    ref_lines, hyp_lines = _read_lines(ref_path), _read_lines(hyp_path)
    if not any(line.strip() for line in ref_lines):
        raise EvalInputError(f"{ref_path}: no utterances")
    if layout == "auto":
        layout = "ids" if any("\t" in line for line in ref_lines + hyp_lines) else "lines"
    if layout == "ids":
        refs, hyps = _parse_ids(ref_path, ref_lines), _parse_ids(hyp_path, hyp_lines)
        if hyps.keys() != refs.keys():
            hyps = _by_file_name(refs, hyps)
        missing = [k for k in refs if k not in hyps]
        extra = [k for k in hyps if k not in refs]
        if missing:
            raise EvalInputError(f"{hyp_path}: {len(missing)} reference ids missing (first: {missing[0]!r})")
        if extra:
            raise EvalInputError(f"{hyp_path}: {len(extra)} ids not in {ref_path} (first: {extra[0]!r})")
        ids = list(refs)
        return ids, [refs[k] for k in ids], [hyps[k] for k in ids]
    if len(ref_lines) != len(hyp_lines):
        raise EvalInputError(f"{hyp_path}: {len(hyp_lines)} lines but {ref_path} has {len(ref_lines)}")
    return None, ref_lines, hyp_lines


def _by_file_name(refs: dict, hyps: dict) -> dict:
    """hyps keyed by the reference ids, matched by file name where the ids differ: decode.py prints the path it was
    given (samples/sample1.wav), samples.tsv the file name (sample1.wav). Only when no file name is shared by two
    ids on either side; else hyps as they were, and the mismatch is reported."""
    name = lambda k: k.replace("\\", "/").rsplit("/", 1)[-1]  # noqa: E731
    if len({name(k) for k in refs}) < len(refs) or len({name(k) for k in hyps}) < len(hyps):
        return hyps
    ref_id = {name(k): k for k in refs}
    return {ref_id.get(name(k), k): text for k, text in hyps.items()}


# --- scoring and reports --------------------------------------------------------------------

@dataclass
class Scores:
    words: list[ErrorStats]          # per utterance
    chars: list[ErrorStats]
    wer_ci: tuple[float, float] | None
    cer_ci: tuple[float, float] | None

    @property
    def word_total(self) -> ErrorStats:
        return sum(self.words, ErrorStats())

    @property
    def char_total(self) -> ErrorStats:
        return sum(self.chars, ErrorStats())


def score(refs: list[str], hyps: list[str], n_boot: int = 1000, seed: int = 0) -> Scores:
    """Word and character stats per utterance, with bootstrap intervals (n_boot 0: none)."""
    words, chars = corpus_stats(refs, hyps, "word"), corpus_stats(refs, hyps, "char")
    wer_ci = bootstrap_ci(words, n_boot, seed) if n_boot else None
    cer_ci = bootstrap_ci(chars, n_boot, seed) if n_boot else None
    return Scores(words, chars, wer_ci, cer_ci)


def _finite(x: float) -> float | None:
    """JSON has no inf: an all-empty reference set with insertions reads as null."""
    return x if math.isfinite(x) else None


def to_json(s: Scores) -> dict:
    w, c = s.word_total, s.char_total
    return {
        "n": len(s.words), "wer": _finite(w.rate), "cer": _finite(c.rate),
        "substitutions": w.subs, "deletions": w.dels, "insertions": w.ins, "hits": w.hits,
        "ref_words": w.ref_len, "ref_chars": c.ref_len,
        "char_substitutions": c.subs, "char_deletions": c.dels, "char_insertions": c.ins,
        "wer_ci": [_finite(x) for x in s.wer_ci] if s.wer_ci else None,
        "cer_ci": [_finite(x) for x in s.cer_ci] if s.cer_ci else None,
    }


def format_summary(s: Scores) -> str:
    lines = [f"utterances {len(s.words)}"]
    for name, total, ci, unit in (("WER", s.word_total, s.wer_ci, "words"), ("CER", s.char_total, s.cer_ci, "chars")):
        interval = f"  95% CI [{100 * ci[0]:.2f}, {100 * ci[1]:.2f}]" if ci else ""
        lines.append(f"{name} {100 * total.rate:6.2f}%{interval}  "
                     f"(S {total.subs}  D {total.dels}  I {total.ins}  / {total.ref_len} {unit})")
    return "\n".join(lines)


def format_table(name: str, s: Scores, rtf: float | None, device: str, failed: int = 0) -> str:
    """A markdown row for the README, under its header: | system | n | WER % [95 % CI] | CER % [95 % CI] | RTF |"""
    def cell(total: ErrorStats, ci):
        interval = f" [{100 * ci[0]:.2f}, {100 * ci[1]:.2f}]" if ci else ""
        return f"{100 * total.rate:.2f}{interval}"
    n = f"{len(s.words)}" + (f" ({failed} failed)" if failed else "")
    speed = f"{rtf:.3f} ({device})" if rtf is not None else "-"
    return ("| system | n | WER % [95 % CI] | CER % [95 % CI] | RTF |\n|---|---|---|---|---|\n"
            f"| {name} | {n} | {cell(s.word_total, s.wer_ci)} | {cell(s.char_total, s.cer_ci)} | {speed} |")


# --- test sets for decoding runs -------------------------------------------------------------

@dataclass
class Utterance:
    id: str            # unique in the set: the manifest's "id" (else audio_filepath as written); FLEURS' wav name
    audio: str         # path of the audio file
    reference: str     # normalised (recipe §5)


def read_manifest(path: str, max_samples: int | None = None) -> list[Utterance]:
    """A training manifest (dataset.read_manifest: JSONL, audio_filepath relative to the manifest's folder or
    absolute, text) -> its first rows as utterances.

    The rows are kept whether or not their audio exists: a missing file is a failed utterance. An utterance is
    named by its `id`, else by its audio path relative to the manifest's folder; a name used twice, or a bad line,
    is an error naming file:line.
    """
    try:
        rows = dataset.read_manifest(path)
    except ValueError as e:
        raise EvalInputError(str(e)) from None
    folder, utts, seen = Path(path).parent, [], set()
    for row in rows[:max_samples]:
        where, audio = f"{path}:{row['_line']}", Path(row["audio_filepath"])
        key = row.get("id", str(audio.relative_to(folder) if audio.is_relative_to(folder) else audio))
        if isinstance(key, bool) or not isinstance(key, (str, int)):
            raise EvalInputError(f"{where}: id is {type(key).__name__} {key!r:.40}, expected str or int")
        if "\0" in row["audio_filepath"]:
            raise EvalInputError(f"{where}: audio_filepath {row['audio_filepath']!r} is not a path")
        key = str(key)
        if key in seen:
            raise EvalInputError(f"{where}: utterance {key!r} appears twice")
        seen.add(key)
        utts.append(Utterance(key, str(audio), normalize(row["text"])))
    return utts


def fleurs_utterances(folder: str, split: str = "test", max_samples: int | None = None,
                      extract_dir: str | None = None) -> list[Utterance]:
    """recipe §10's rows as utterances; the wav name is the id (FLEURS repeats sentence ids across speakers)."""
    if not os.path.isdir(folder):
        raise EvalInputError(f"{folder}: no such folder")
    return [Utterance(r.file, r.audio, r.reference) for r in read_fleurs(folder, split, max_samples, extract_dir)]


# --- decoding --------------------------------------------------------------------------------

@dataclass
class DecodeRun:
    hyps: list[str]              # normalised; "" for a failed utterance
    errors: list[str | None]     # the one-line problem of a failed utterance
    durations: list[float]       # seconds of audio (0.0 when unreadable)
    seconds: float               # wall time of the decoding, model loading excluded
    device: str

    @property
    def failed(self) -> int:
        return sum(e is not None for e in self.errors)

    @property
    def audio_seconds(self) -> float:
        """Seconds of audio decoded (failed files left out)."""
        return sum(d for d, e in zip(self.durations, self.errors) if e is None)

    @property
    def rtf(self) -> float | None:
        """Decode wall time / seconds of audio decoded: 0.1 means ten times faster than real time."""
        return self.seconds / self.audio_seconds if self.audio_seconds > 0 else None


def audio_seconds(path: str) -> float:
    """Duration from the file's header; 0.0 when it cannot be read (decoding then reports why)."""
    try:
        frames, rate = audio_info(path)   # mel's checks: a FIFO or a device is never opened
        return frames / rate
    except AudioError:
        return 0.0


def device_name(transcriber) -> str:
    if transcriber.device.type == "cuda":
        return torch.cuda.get_device_name(transcriber.device)
    n = torch.get_num_threads()
    return f"cpu, {n} thread" + ("s" if n != 1 else "")


def decode_utterances(transcriber, utts: list[Utterance]) -> DecodeRun:
    """Transcribe every utterance, batch-size files at a time so the progress bar moves."""
    durations = [audio_seconds(u.audio) for u in utts]
    order = sorted(range(len(utts)), key=lambda k: durations[k])   # similar lengths share a batch
    hyps, errors = [""] * len(utts), [None] * len(utts)
    size = max(1, transcriber.opt.batch_size)
    start = time.perf_counter()
    # tqdm shows the bar on a terminal only (disable=None), so logs and pipes stay clean
    with tqdm(total=len(utts), unit="utt", desc="decoding", file=sys.stderr, disable=None) as bar:
        for g in range(0, len(order), size):
            group = order[g: g + size]
            for k, r in zip(group, transcriber.transcribe([utts[k].audio for k in group])):
                if "error" in r:
                    errors[k] = r["error"]
                    bar.write(f"evaluate.py: {r['error']} (scored as an empty hypothesis)", file=sys.stderr)
                else:
                    hyps[k] = normalize(r["text"])
            bar.update(len(group))
    seconds = time.perf_counter() - start   # the texts are on the host: any GPU work has finished
    return DecodeRun(hyps, errors, durations, seconds, device_name(transcriber))


def utterance_rows(utts: list[Utterance], run: DecodeRun, s: Scores) -> list[dict]:
    """One dict per utterance for --out: the texts, both error counts, the duration."""
    rows = []
    for u, hyp, err, dur, w, c in zip(utts, run.hyps, run.errors, run.durations, s.words, s.chars):
        row = {"id": u.id, "audio": u.audio, "ref": u.reference, "hyp": hyp, "duration": round(dur, 3),
               "word_errors": w.errors, "subs": w.subs, "dels": w.dels, "ins": w.ins, "ref_words": w.ref_len,
               "char_errors": c.errors, "char_subs": c.subs, "char_dels": c.dels, "char_ins": c.ins,
               "ref_chars": c.ref_len}
        if err is not None:
            row["error"] = err
        rows.append(row)
    return rows


def write_jsonl(path: str, rows: list[dict]):
    """One JSON object a line, atomically (a reader never sees half a file)."""
    with atomic_file(path) as f:
        f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


# --- comparing two runs ----------------------------------------------------------------------

def read_results(path: str) -> dict[str, tuple[str, str]]:
    """An --out file -> {id: (ref, hyp)}, in file order; "audio" stands in for a missing "id"."""
    out = {}
    for lineno, line in enumerate(_read_lines(path), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            key, ref, hyp = str(row["id"] if "id" in row else row["audio"]), row["ref"], row["hyp"]
        except (ValueError, RecursionError, KeyError, TypeError, AttributeError):  # ValueError: JSONDecodeError too
            raise EvalInputError(f"{path}: line {lineno} is not a result line (JSON with id, ref, hyp)") from None
        if not (isinstance(ref, str) and isinstance(hyp, str)):  # 5, null, ["x"], NaN: no text to score
            raise EvalInputError(f"{path}: line {lineno}: ref and hyp must be strings, not {type(ref).__name__} "
                                 f"and {type(hyp).__name__}")
        if key in out:
            raise EvalInputError(f"{path}: utterance {key!r} appears twice")
        out[key] = (ref, hyp)
    if not out:
        raise EvalInputError(f"{path}: no utterances")
    return out


def compare(path_a: str, path_b: str, n_boot: int = 1000, seed: int = 0) -> dict:
    """Corpus WER/CER of two --out files over the utterances both hold, and how often A beats B.

    The texts are rescored (the counts in the files are for reading); a and b must share references.
    """
    a, b = read_results(path_a), read_results(path_b)
    shared = [k for k in a if k in b]
    if not shared:
        raise EvalInputError(f"{path_b}: no utterance in common with {path_a}")
    for k in shared:
        if a[k][0] != b[k][0]:
            raise EvalInputError(f"{path_b}: utterance {k!r} has another reference than in {path_a}")
    refs = [a[k][0] for k in shared]
    out = {"n": len(shared), "only_a": len(a) - len(shared), "only_b": len(b) - len(shared), "resamples": n_boot}
    for unit, one in (("wer", word_stats), ("cer", char_stats)):
        sa = [one(r, a[k][1]) for r, k in zip(refs, shared)]
        sb = [one(r, b[k][1]) for r, k in zip(refs, shared)]
        out[f"{unit}_a"], out[f"{unit}_b"] = _finite(sum(sa).rate), _finite(sum(sb).rate)
        # ties are not wins: identical systems give 0.0 both ways
        out[f"a_better_{unit}"] = paired_bootstrap(sa, sb, n_boot, seed) if n_boot else None
    return out


def format_compare(c: dict, path_a: str, path_b: str) -> str:
    def pct(x):
        return f"{100 * x:6.2f}%" if x is not None else "    inf"
    lines = [f"A = {path_a}", f"B = {path_b}",
             f"shared utterances {c['n']} (only in A {c['only_a']}, only in B {c['only_b']})"]
    for unit in ("wer", "cer"):
        p = c[f"a_better_{unit}"]
        beats = f"  A better in {100 * p:.1f}% of {c['resamples']} paired resamples" if p is not None else ""
        lines.append(f"{unit.upper()}  A {pct(c[f'{unit}_a'])}  B {pct(c[f'{unit}_b'])}{beats}")
    return "\n".join(lines)


# --- command line ----------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    p = cli.ArgumentParser(
        description="Corpus WER/CER (recipe §10): of hypothesis files, of a model decoding a manifest or FLEURS, "
                    "or two decoding runs compared.",
        epilog="Decoding runs: a row whose audio is missing or unreadable is reported on stderr (one line), "
               "counted as failed in the summary and scored as an empty hypothesis (all its words deleted); it "
               "does not stop the run. Exit status: 0 done, 1 some utterance failed (without --allow-failures), 2 bad "
               "input, arguments or model, or --out could not be written (the report is printed first).")
    what = p.add_argument_group("what to score (one of)")
    src = what.add_mutually_exclusive_group(required=True)
    src.add_argument("--ref", help="reference file: one utterance a line, or id<TAB>text lines (then matched by id)")
    src.add_argument("--manifest", metavar="JSONL",
                     help="decode a NeMo manifest: JSON lines with audio_filepath (relative to the manifest's "
                          "folder, or absolute) and text, optionally id")
    src.add_argument("--fleurs", metavar="DIR",
                     help="decode google/fleurs kk_kz: DIR/<split>.tsv and DIR/audio/<split>/ or "
                          "DIR/audio/<split>.tar.gz (recipe §10)")
    src.add_argument("--compare", nargs=2, metavar=("A.jsonl", "B.jsonl"),
                     help="two --out files: WER/CER of each over the utterances both hold (matched by id) and "
                          "the fraction of paired bootstrap resamples in which A is strictly better")
    what.add_argument("--hyp", help="with --ref: hypothesis file, in the same layout as --ref")
    what.add_argument("--layout", choices=["auto", "ids", "lines"], default="auto",
                      help="with --ref: ids = id<TAB>text lines matched by id (a line with no tab is an id with "
                           "an empty text; paths and file names are matched by file name when none is shared: "
                           "decode.py's samples/x.wav meets samples.tsv's x.wav); lines = line k against line k; auto = ids when any line of either "
                           "file has a tab (default: auto)")
    what.add_argument("--no-normalize", action="store_true",
                      help="with --ref: score the texts as they are (default: normalise both, recipe §5; decoding "
                           "runs always normalise)")
    data = p.add_argument_group("test set (decoding runs)")
    data.add_argument("--split", default="test", help="with --fleurs: which split's tsv and audio (default: test)")
    data.add_argument("--max-samples", type=int, default=None, metavar="N",
                      help="decode only the first N rows, in file order; with --fleurs the first N whose audio "
                           "exists, the card's '200 samples' (default: all)")
    data.add_argument("--extract-dir", default=None, metavar="DIR",
                      help="with --fleurs and a .tar.gz: extract the kept wavs here (default: a temporary folder "
                           "removed at exit)")
    decode.add_decoding_args(p)
    out = p.add_argument_group("report")
    out.add_argument("--name", default=None,
                     help="system column of the README row (default: the model folder's name and the mode)")
    out.add_argument("--out", default=None, metavar="JSONL",
                     help="decoding runs: write one JSON line per utterance (id, audio, ref, hyp, duration, word "
                          "and character S/D/I counts, error if it failed), atomically")
    out.add_argument("--allow-failures", action="store_true",
                     help="decoding runs: exit 0 even when some utterance could not be decoded (default: exit 1, "
                          "after the report, since such a score is not the model's)")
    out.add_argument("--json", action="store_true", help="print one JSON summary object instead of the text report")
    out.add_argument("--worst", type=int, default=5, help="how many worst utterances to show (default 5)")
    out.add_argument("--bootstrap", type=int, default=1000,
                     help="bootstrap resamples for the 95%% intervals and --compare; 0 turns them off "
                          "(default 1000)")
    out.add_argument("--seed", type=int, default=0, help="bootstrap random seed (default 0)")
    return p


def _system_name(args) -> str:
    model = os.path.basename(os.path.normpath(args.model)) if args.model else \
        ("release" if args.checkpoint else "teach")
    return f"{model}, {args.mode}" + (", chunked" if args.chunked and args.mode == "reference" else "")


def run_scoring(args) -> int:
    ids, refs, hyps = read_pair(args.ref, args.hyp, args.layout)
    if not args.no_normalize:
        refs, hyps = [normalize(t) for t in refs], [normalize(t) for t in hyps]
    s = score(refs, hyps, n_boot=args.bootstrap, seed=args.seed)
    if args.json:
        print(json.dumps(to_json(s), ensure_ascii=False))
        return 0
    print(format_summary(s))
    worst = format_worst(refs, hyps, k=args.worst, ids=ids) if args.worst > 0 else ""
    if worst:
        print(f"\nworst utterances (most word errors first):\n\n{worst}")
    return 0


def run_decoding(args) -> int:
    """Decode, print the report, then write --out; 1 when an utterance failed (unless --allow-failures), 2 when
    --out cannot be written (the report above it stands)."""
    if args.manifest:
        utts = read_manifest(args.manifest, args.max_samples)
    else:
        utts = fleurs_utterances(args.fleurs, args.split, args.max_samples, args.extract_dir)
    if not utts:
        raise EvalInputError(f"{args.manifest or args.fleurs}: no utterances to decode")
    transcriber = decode.load(args)       # after the data: a bad path fails before the model loads
    run = decode_utterances(transcriber, utts)
    refs = [u.reference for u in utts]
    s = score(refs, run.hyps, n_boot=args.bootstrap, seed=args.seed)
    name = args.name or _system_name(args)
    table = format_table(name, s, run.rtf, run.device, run.failed)
    if args.json:
        summary = {"name": name, **to_json(s), "failed": run.failed, "audio_seconds": run.audio_seconds,
                   "decode_seconds": run.seconds, "rtf": run.rtf, "device": run.device,
                   "mode": args.mode, "table": table, "out": args.out}
        print(json.dumps(summary, ensure_ascii=False))
    else:
        print_report(args, name, s, run, table, refs, utts)
    sys.stdout.flush()
    if args.out:
        try:
            write_jsonl(args.out, utterance_rows(utts, run, s))
        except OSError as e:
            print(f"evaluate.py: error: {args.out}: cannot write the results ({e.strerror or e}); the summary "
                  "above is complete", file=sys.stderr)
            return 2
        if not args.json:
            print(f"\nwrote {args.out}")
    if run.failed and not args.allow_failures:
        print(f"evaluate.py: {run.failed} of {len(utts)} utterances failed (scored as empty hypotheses); "
              "--allow-failures makes that exit status 0", file=sys.stderr)
        return 1
    return 0


def print_report(args, name: str, s: Scores, run: DecodeRun, table: str, refs: list[str], utts: list[Utterance]):
    """The text report of a decoding run: the figures, the README row, the worst utterances."""
    failed = f"  ({run.failed} failed: scored as empty hypotheses)" if run.failed else ""
    speed = f"RTF {run.rtf:.4f}" if run.rtf is not None else "RTF -"
    print(f"{name} on {args.manifest or args.fleurs}{failed}")
    print(format_summary(s))
    print(f"{speed} on {run.device} ({run.seconds:.2f} s to decode {run.audio_seconds:.1f} s of audio)")
    print(f"\n{table}")
    worst = format_worst(refs, run.hyps, k=args.worst, ids=[u.id for u in utts]) if args.worst > 0 else ""
    if worst:
        print(f"\nworst utterances (most word errors first):\n\n{worst}")


def run_compare(args) -> int:
    a, b = args.compare
    c = compare(a, b, n_boot=args.bootstrap, seed=args.seed)
    print(json.dumps({"a": a, "b": b, **c}, ensure_ascii=False) if args.json else format_compare(c, a, b))
    return 0


# the report's own numeric flags: (least, most); the bootstrap holds resamples x utterances indices at once
COUNT_LIMITS = {"bootstrap": (0, 100_000), "max_samples": (1, 10**9), "worst": (0, 10_000), "seed": (0, 2**32 - 1)}


def check_counts(args):
    """ValueError, one line, for a count flag outside COUNT_LIMITS (the decoding flags: decode.check_options)."""
    for name, (lo, hi) in COUNT_LIMITS.items():
        v = getattr(args, name)
        if v is not None and not lo <= v <= hi:
            raise ValueError(f"--{name.replace('_', '-')} {v} is outside [{lo}, {hi}]")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if bool(args.ref) != bool(args.hyp):
        parser.error("--ref and --hyp go together")
    try:
        check_counts(args)
        if args.ref:
            return run_scoring(args)
        if args.compare:
            return run_compare(args)
        return run_decoding(args)
    except BrokenPipeError:   # `evaluate.py ... | head`: the reader has gone (an OSError, so caught first)
        decode._silence_stdout()
        return 141
    except (ValueError, OSError) as e:   # EvalInputError, and the model's and tokenizer's one-line errors
        print(f"evaluate.py: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
