"""Audio of any length: overlapping windows read one at a time, decoded apart, spliced at the seams.

The model saw at most 15 s in training (recipe §1), so a long file is cut into WINDOW_SECONDS windows that
overlap by OVERLAP_SECONDS (the last window is moved back to end with the file). Each window is read from
disk alone (mel.read_resampled: soundfile seeks; other rates are resampled with a margin wide enough that the
window's samples equal those of the whole file resampled), so memory is bounded by the window, whatever the
file's length.
Each window's words carry times from the CTC alignment (ctc.forced_align); `merge_words` splices two
neighbours inside their overlap: at a word both windows agree on (the same word at nearly the same time,
found by aligning the two word runs as difflib does, longest common runs first), the one nearest the middle
of the overlap; without one, at the middle of the overlap by time. Edges, where a window cuts a word in
two, are never used.

Or (`decode.py --long-cut pauses`), windows that do not overlap, each cut at a pause: the file's
loudness (10 ms frames, smoothed over 100 ms) is read in one pass, and each window ends at the quietest stretch of
its second half, in the middle of the latest run within PAUSE_DB of the quietest frame there (in a long pause, 0.2 s
before its end). A clip the model
hears then starts and ends between words, as its training clips did, and the windows' texts are simply joined.
Continuous speech without a pause is still cut at its quietest moment, which may be inside a word.

Also the original's chunking (recipe §9), kept for `--mode reference --chunked`: 15 s chunks every 12 s, a last
chunk under 1 s dropped, consecutive identical chunk texts removed, the rest joined with a space.
Not here: a trained voice activity detector, or splicing by anything but words.
"""
import difflib

import torch
import torch.nn.functional as F

import mel
from mel import SAMPLE_RATE, AudioError

WINDOW_SECONDS = 15.0  # the longest audio the model was trained on
OVERLAP_SECONDS = 5.0  # context each side of a seam: the splice point sits ~2.5 s from either window's edge
AGREE_SECONDS = 1.0  # the same word seen by two windows starts within this much
REF_STRIDE_SECONDS = 12.0  # the original's chunking: 15 s chunks, 3 s overlap
REF_MIN_LAST_SECONDS = 1.0  # ... and a last chunk shorter than this dropped
PAUSE_HOP = 160  # samples (10 ms at 16 kHz) per frame of the loudness track pauses are found in
PAUSE_SMOOTH = 11  # frames (~100 ms) the track is averaged over: a pause is a quiet stretch, not one quiet sample
PAUSE_DB = 3.0  # frames this close to the quietest one of the search range count as the same pause
PAUSE_LEAD = 20  # frames (0.2 s): the most of a long pause a window starts with; the window before ends with the rest
CUTS = ("pauses", "overlap")  # decode.py --long-cut: how a long file is cut into windows


def window_starts(n_samples: int, window: int, overlap: int) -> list[int]:
    """Start samples of the windows covering n_samples: every window - overlap samples, the last one end-aligned.

    window_starts(30, 15, 5) -> [0, 10, 15]; a file no longer than one window is one window.
    """
    if n_samples <= window:
        return [0]
    stride = window - overlap
    starts = list(range(0, n_samples - window, stride))
    return starts + [n_samples - window]


def audio_info(path) -> tuple[int, int]:
    """(frames, sample rate) from the file's header; a file mel.open_audio refuses raises its one-line AudioError."""
    with mel.open_audio(path) as f:
        return f.frames, f.samplerate


def n_resampled(n: int, sr: int) -> int:
    """Samples at 16 kHz of n samples at sr, as mel.resample gives them."""
    return mel.resampled_length(n, sr, SAMPLE_RATE)


def window_spans(n_samples: int, window: int, overlap: int) -> list[tuple[int, int]]:
    """window_starts as [start, end) sample spans, the last one cut at the end of the file."""
    return [(s, min(s + window, n_samples)) for s in window_starts(n_samples, window, overlap)]


class AudioWindows:
    """A long file read window by window at 16 kHz mono: `for start, wav in AudioWindows(path): ...`.

    Window `start` is in 16 kHz samples. A window read from the file equals the same slice of
    mel.load_audio(path) up to float rounding (mel.read_resampled). `starts_of(n_samples)` gives other windows
    than window_starts' (the original's chunks: reference_starts). A file that cannot be decoded at some point
    raises AudioError when its window is reached.
    """

    def __init__(self, path, window_s: float = WINDOW_SECONDS, overlap_s: float = OVERLAP_SECONDS, starts_of=None,
                 spans=None):
        self.path = str(path)
        self.frames, self.sr = audio_info(self.path)
        self.n_samples = n_resampled(self.frames, self.sr)  # (16 kHz)
        self.window, self.overlap = round(window_s * SAMPLE_RATE), round(overlap_s * SAMPLE_RATE)
        if spans is None:  # else [(start, end)] given (pause_spans): windows of their own lengths
            spans = ([(s, min(s + self.window, self.n_samples)) for s in starts_of(self.n_samples)] if starts_of
                     else window_spans(self.n_samples, self.window, self.overlap))
        self.starts, self.ends = [s for s, _ in spans], [e for _, e in spans]

    def __len__(self):
        return len(self.starts)

    def __iter__(self):
        with mel.open_audio(self.path) as f:
            for start, end in zip(self.starts, self.ends):
                yield start, mel.read_resampled(f, start, end, self.path)


def frame_power(wav: torch.Tensor) -> torch.Tensor:
    """(n,) samples -> (n // PAUSE_HOP,) mean power of each 10 ms frame (a last partial frame dropped)."""
    n = wav.shape[-1] // PAUSE_HOP
    return wav[: n * PAUSE_HOP].double().reshape(n, PAUSE_HOP).pow(2).mean(1)


def loudness(power: torch.Tensor) -> torch.Tensor:
    """Frame powers (m,) -> dB (m,), each the mean over PAUSE_SMOOTH frames around it (fewer at the ends)."""
    p = F.avg_pool1d(power[None, None], PAUSE_SMOOTH, 1, PAUSE_SMOOTH // 2, count_include_pad=False)[0, 0]
    return 10 * torch.log10(p + 1e-12)


def pause_spans(level_db: torch.Tensor, n_samples: int, window: int) -> list[tuple[int, int]]:
    """[start, end) samples of windows of at most `window` samples covering n_samples, none overlapping: each cut in
    its second half (and at least half a window before the end), in the middle of the latest quiet run (within
    PAUSE_DB of the quietest frame there), or PAUSE_LEAD frames before its end if that is later.

    level_db: loudness() of the file's frames. A file no longer than one window is one span.
    """
    spans, start = [], 0
    while n_samples - start > window:
        # in the window's second half, and leaving at least half a window after it: no sliver of a last window
        lo, hi = (start + window // 2) // PAUSE_HOP, min(start + window, n_samples - window // 2) // PAUSE_HOP
        seg = level_db[lo:hi]
        if len(seg) == 0:  # a window of a frame or two, or just over one window left: cut by length alone
            cut = start + min(window, (n_samples - start) // 2)
        else:
            quiet = seg <= seg.min() + PAUSE_DB
            last = first = int(quiet.nonzero()[-1])
            while first > 0 and quiet[first - 1]:  # back to the start of that run
                first -= 1
            at = max((first + last + 1) // 2, last + 1 - PAUSE_LEAD)  # mid-pause, or PAUSE_LEAD before its end
            cut = min(start + window, max(start + 1, (lo + at) * PAUSE_HOP))
        spans.append((start, cut))
        start = cut
    return spans + [(start, n_samples)]


def file_loudness(path, block_s: float = 60.0) -> torch.Tensor:
    """loudness() of a file at 16 kHz, read a block at a time (memory: the block, and 100 values a second)."""
    frames, sr = audio_info(path)
    n = n_resampled(frames, sr)
    block = round(block_s * SAMPLE_RATE) // PAUSE_HOP * PAUSE_HOP  # whole frames: blocks join exactly
    with mel.open_audio(path) as f:
        power = [frame_power(mel.read_resampled(f, s, min(s + block, n), str(path))) for s in range(0, n, block)]
    return loudness(torch.cat(power) if power else torch.zeros(0, dtype=torch.float64))


def merge_words(windows: list[tuple[float, float, list[dict]]]) -> list[dict]:
    """Splice windows (start s, end s, [{word, start, end}] in file time), in time order, into one word list."""
    if not windows:
        return []
    merged = list(windows[0][2])
    for (_, end0, _), (start1, _, words) in zip(windows, windows[1:]):
        merged = splice(merged, list(words), start1, end0)
    return merged


def _mid(w: dict) -> float:
    return (w["start"] + w["end"]) / 2


def splice(left: list[dict], right: list[dict], lo: float, hi: float) -> list[dict]:
    """Join two windows' words that overlap in time [lo, hi): left's words before the seam, right's from it.

    The seam is an agreed word (same word, about the same time) next to the middle of the overlap. Between the
    last agreed word before the middle and the first after it, the windows may disagree; that stretch is
    taken from the window it lies deeper in: from the left one if it centres before the middle, else the right.
    """
    cut = (lo + hi) / 2
    li = [i for i, w in enumerate(left) if _mid(w) >= lo]  # left's words inside the overlap
    ri = [j for j, w in enumerate(right) if _mid(w) < hi]  # right's words inside the overlap
    matcher = difflib.SequenceMatcher(None, [left[i]["word"] for i in li], [right[j]["word"] for j in ri],
                                      autojunk=False)
    agreed = [(li[a + k], ri[b + k]) for a, b, size in matcher.get_matching_blocks() for k in range(size)
              if abs(left[li[a + k]]["start"] - right[ri[b + k]]["start"]) <= AGREE_SECONDS]
    if not agreed:  # nothing in common: cut by time
        return [w for w in left if _mid(w) < cut] + [w for w in right if _mid(w) >= cut]
    before = [p for p in agreed if _mid(left[p[0]]) < cut]
    after = [p for p in agreed if _mid(left[p[0]]) >= cut]
    if not before or not after:
        i, j = after[0] if after else before[-1]
        return left[:i] + right[j:]
    (i0, j0), (i1, j1) = before[-1], after[0]
    gap = left[i0 + 1: i1] + right[j0 + 1: j1]  # both windows' words between the two agreed ones
    if gap and sum(_mid(w) for w in gap) / len(gap) >= cut:
        return left[:i0] + right[j0:]  # the disputed stretch lies past the middle: the right window's
    return left[:i1] + right[j1:]


def spread_times(words: list[str], start: float, end: float) -> list[dict]:
    """Words spread evenly over [start, end): the fallback when a window's tokens have no CTC alignment."""
    step = (end - start) / max(1, len(words))
    return [{"word": w, "start": round(start + i * step, 3), "end": round(start + (i + 1) * step, 3)}
            for i, w in enumerate(words)]


def reference_starts(n_samples: int) -> list[int]:
    """Start samples of the original's chunks (recipe §9) of n_samples: every 12 s; a last chunk under 1 s dropped.

    reference_starts(36.5 s) -> [0, 12 s, 24 s]; each chunk is the 15 s (or what is left) from its start.
    """
    starts = list(range(0, n_samples, round(REF_STRIDE_SECONDS * SAMPLE_RATE)))
    if len(starts) > 1 and n_samples - starts[-1] < REF_MIN_LAST_SECONDS * SAMPLE_RATE:
        starts.pop()
    return starts


def reference_chunks(wav: torch.Tensor) -> list[tuple[int, torch.Tensor]]:
    """The original's chunks (recipe §9) of a waveform: (start sample, 15 s of audio) at reference_starts."""
    return [(s, wav[s: s + mel.N_SAMPLES]) for s in reference_starts(wav.shape[-1])]


def kept_chunks(texts: list[str]) -> list[int]:
    """Indices of the chunks the original keeps: a text equal to the one before it is dropped."""
    return [i for i, t in enumerate(texts) if i == 0 or t != texts[i - 1]]


def join_chunk_texts(texts: list[str]) -> str:
    """Consecutive identical chunk texts kept once, then joined with a space: ["a b", "a b", "c"] -> "a b c"."""
    return " ".join(" ".join(texts[i] for i in kept_chunks(texts)).split())

