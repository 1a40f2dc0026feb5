"""Score ASR output: corpus WER and CER with bootstrap intervals, and the FLEURS test reader.

What it follows: SPEC §10. References and hypotheses are normalised alike (SPEC §5), then WER and
CER are corpus-level, total edits / total reference words or characters (spaces count), equal to
jiwer's (see wer.py). Intervals come from the percentile bootstrap over utterances.

    python evaluate.py --ref refs.txt --hyp hyps.txt            # one utterance a line, same order
    python evaluate.py --ref refs.tsv --hyp hyps.tsv --json     # or id<TAB>text lines, matched by id

What it does not do (yet): decode audio. `read_fleurs` reads google/fleurs' `test.tsv` and its
audio for that mode; the decoding itself lives in the model's code.
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
from dataclasses import dataclass

import numpy as np

from tokenizer import normalize
from wer import ErrorStats, corpus_stats, format_worst


class EvalInputError(ValueError):
    """Bad input file; str(e) == "<path>: <problem>"."""


# --- google/fleurs ------------------------------------------------------------------------

@dataclass
class FleursRow:
    id: str            # sentence id; FLEURS repeats it when several speakers read one sentence
    file: str          # wav file name, unique per row
    audio: str         # path to the wav
    reference: str     # 4th column (FLEURS' normalised transcription), normalised again (SPEC §5)
    raw: str           # 3rd column, the raw transcription, for display


def _read_fleurs_tsv(path: str) -> list[tuple[str, str, str, str]]:
    """(id, file, raw, normalised) per line of a FLEURS tsv: tab-separated, no header."""
    if not os.path.isfile(path):
        raise EvalInputError(f"{path}: no such file")
    rows = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            cols = line.split("\t")
            if len(cols) < 4:
                raise EvalInputError(f"{path}: line {lineno} has {len(cols)} tab-separated columns, expected 7")
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
    """Rows of `<folder>/<split>.tsv` whose audio exists, in file order (SPEC §10).

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
    try:
        with open(path, encoding="utf-8") as f:
            return f.read().splitlines()
    except FileNotFoundError:
        raise EvalInputError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise EvalInputError(f"{path}: cannot read as UTF-8 text ({e})") from None


def _parse_ids(path: str, lines: list[str]) -> dict[str, str]:
    """id<TAB>text lines -> {id: text}; a line without a tab is an id with an empty text."""
    out = {}
    for line in lines:
        if not line.strip():
            continue
        key, _, text = line.partition("\t")
        key = key.strip()
        if key in out:
            raise EvalInputError(f"{path}: id {key!r} appears twice")
        out[key] = text
    return out


def read_pair(ref_path: str, hyp_path: str) -> tuple[list[str] | None, list[str], list[str]]:
    """(ids or None, references, hypotheses) from two files.

    If every non-blank line of the reference has a tab, both files are id<TAB>text and are
    matched by id (in reference order); otherwise line k of one is line k of the other.
    """
    ref_lines, hyp_lines = _read_lines(ref_path), _read_lines(hyp_path)
    if not any(line.strip() for line in ref_lines):
        raise EvalInputError(f"{ref_path}: no utterances")
    if all("\t" in line for line in ref_lines if line.strip()):
        refs, hyps = _parse_ids(ref_path, ref_lines), _parse_ids(hyp_path, hyp_lines)
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


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Corpus WER/CER of hypotheses against references (SPEC §10).")
    p.add_argument("--ref", required=True,
                   help="reference file: one utterance a line, or id<TAB>text lines (then matched by id)")
    p.add_argument("--hyp", required=True, help="hypothesis file, in the same layout as --ref")
    p.add_argument("--no-normalize", action="store_true",
                   help="score the texts as they are (default: normalise both, SPEC §5)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the text report")
    p.add_argument("--worst", type=int, default=5, help="how many worst utterances to show (default 5)")
    p.add_argument("--bootstrap", type=int, default=1000,
                   help="bootstrap resamples for the 95%% intervals; 0 turns them off (default 1000)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap random seed (default 0)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        ids, refs, hyps = read_pair(args.ref, args.hyp)
    except EvalInputError as e:
        print(f"evaluate.py: error: {e}", file=sys.stderr)
        return 2
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


if __name__ == "__main__":
    sys.exit(main())
