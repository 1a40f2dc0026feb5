"""Transcribe audio files with a SozKZ ASR model: the command line, and the `Transcriber` evaluate.py reuses.

    python decode.py clip.wav                                      # the teaching model in models/teach/
    python decode.py --model runs/teach/best a.wav b.flac --format jsonl --timestamps
    python decode.py --checkpoint ckpt-92000/model.pt --decoder sozkz-core-llama-300m-kk-base-v1 \\
        --tokenizer sozkz-morphbpe-100k-kk-v1/tokenizer.json --mode reference clip.wav   # the release, as released

Modes (the strategies themselves are in search.py and ctc.py):
  reference  recipe §9 to the token: each file cut at 15 s (--chunked: the original's 12 s-stride chunks),
             float32, greedy with repetition penalty 1.15 and no-repeat-trigram, 256 tokens; several files
             are decoded as one masked batch, which gives each the tokens the original gets for it alone
  greedy     plain greedy, padded batches with masks
  beam       attention beam search, length-normalised
  joint      joint CTC/attention one-pass beam search (the default: DEFAULT_MODE below)
  ctc        CTC greedy alone: the encoder without the decoder
Every mode but reference decodes files of any length, in windows of at most 15 s: by default overlapping by 5 s,
spliced at the seams by the CTC word timings; `--long-cut pauses` gives windows that do not overlap, each ending at a
pause (the quietest stretch of its second half), their texts joined (longform.py). Texts are normalised as recipe §5 says.

A file that cannot be read (not a regular file, a broken header, a cut or corrupt stream) gets a one-line error
on stderr naming it; the others are still transcribed, and the exit status is 1 at the end (2 when the model or
the arguments are wrong: every numeric flag must be a finite number within LIMITS). Memory stays bounded by the
batch and the window, whatever a file's header claims; --mode reference reads only the 15 s (or chunks) it uses.
Not here: the decoding maths (search.py, ctc.py), long-audio windows (longform.py), scoring (evaluate.py).
"""
import argparse
import json
import math
import os
import sys
from dataclasses import dataclass, fields
from pathlib import Path

import torch

import cli
import longform
from ctc import CTCPrefixScorer, ctc_greedy, forced_align, frame_seconds, word_index, word_times
from decoder import DEVICES, pick_device
from encoder import subsampled_lengths
from mel import (N_FFT, N_SAMPLES, SAMPLE_RATE, AudioError, batch_log_mel, check_file, load_audio, n_frames,
                 normalize_level, require_finite)
from search import (CTCScorer, DecoderScorer, beam_search, greedy_tokens, length_runs, logit_filters,
                    release_filters)
from tokenizer import Tokenizer, normalize

__all__ = ["DecodeOptions", "Transcriber", "add_decoding_args", "load", "main"]

DEFAULT_MODE = "joint"  # the mode a plain `python decode.py` uses; change it here once measured
MODES = ("reference", "greedy", "beam", "joint", "ctc")
DEFAULT_MODEL = Path(__file__).resolve().parent / "models" / "teach"  # the teaching model shipped in the repo


@dataclass
class DecodeOptions:
    mode: str = DEFAULT_MODE       # one of MODES
    beam_size: int = 4             # hypotheses kept by beam and joint
    ctc_weight: float = 0.5        # decoding: w in (1 - w) log p_att + w log p_ctc (joint); 0.5 measured best
                                   # (README); not train.py's --ctc-loss-weight
    pre_beam: float = 1.5          # joint: candidates per hypothesis scored by CTC, as a multiple of beam_size
    length_penalty: float = 1.0    # beam/joint: finished scores divided by length**this (0: raw sums)
    repetition_penalty: float = 1.0  # greedy/beam/joint: a logit filter (search.RepetitionPenalty); 1: off
    no_repeat_ngram: int = 0       # greedy/beam/joint: ban repeated n-grams (search.NoRepeatNGram); 0: off
    max_tokens: int = 256          # per window (reference: per utterance, as the original)
    batch_size: int = 8            # files (or windows) decoded together
    chunked: bool = False          # reference: the original's chunking instead of the 15 s cut
    timestamps: bool = False       # word start/end times from the CTC alignment
    window: float = longform.WINDOW_SECONDS    # long files: window length (s)
    overlap: float = longform.OVERLAP_SECONDS  # long files: overlap of neighbouring windows (s), long_cut="overlap"
    long_cut: str = "overlap"      # long files: overlapping windows spliced, or cut at pauses (longform.CUTS)


# what each numeric option may be: (flag, least, most, integer); the most bound memory and time (beams x KV cache,
# files x window in a batch), and a model's positions bound --window and --max-tokens further (Transcriber._check)
LIMITS = {
    "beam_size": ("--beam-size", 1, 64, True),
    "ctc_weight": ("--ctc-weight", 0.0, 1.0, False),
    "pre_beam": ("--pre-beam", 1.0, 64.0, False),
    "length_penalty": ("--length-penalty", 0.0, 10.0, False),
    "max_tokens": ("--max-tokens", 1, 8192, True),
    "batch_size": ("--batch-size", 1, 1024, True),
    "window": ("--window", 1.0, 3600.0, False),
    "overlap": ("--overlap", 0.0, 1800.0, False),
    "repetition_penalty": ("--repetition-penalty", 0.01, 100.0, False),
    "no_repeat_ngram": ("--no-repeat-ngram", 0, 64, True),
}


def check_options(o: DecodeOptions):
    """ValueError, one line, for an option that is not a finite number in its LIMITS, or an unknown mode."""
    if o.mode not in MODES:
        raise ValueError(f"unknown mode {o.mode!r}; choose one of {', '.join(MODES)}")
    if o.long_cut not in longform.CUTS:
        raise ValueError(f"unknown --long-cut {o.long_cut!r}; choose one of {', '.join(longform.CUTS)}")
    for name, (flag, lo, hi, integer) in LIMITS.items():
        v = getattr(o, name)
        if isinstance(v, bool) or not isinstance(v, int if integer else (int, float)):
            raise ValueError(f"{flag} {v!r} is not {'an integer' if integer else 'a number'}")
        if not (math.isfinite(v) and lo <= v <= hi):
            raise ValueError(f"{flag} {v} is outside [{lo:g}, {hi:g}]")
    if o.long_cut == "overlap" and o.overlap > o.window / 2:  # pauses: windows share nothing
        raise ValueError(f"--overlap {o.overlap:g} must be between 0 and half of --window {o.window:g}")
    for name in ("chunked", "timestamps"):
        if not isinstance(getattr(o, name), bool):
            raise ValueError(f"{name} {getattr(o, name)!r} is not true or false")


class Transcriber:
    """A model + tokenizer + options: `transcribe(paths or 16 kHz waveforms) -> [{"audio", "text", ...}]`.

    Results come in input order; one that failed is {"audio", "error"} and did not stop the others.
    """

    def __init__(self, model, tokenizer: Tokenizer, options: DecodeOptions | None = None, device="cpu",
                 dtype=torch.float32):
        self.model = model.to(device=device, dtype=dtype).eval()
        self.tokenizer, self.opt = tokenizer, options or DecodeOptions()
        self.device, self.dtype = torch.device(device), dtype
        self.frame_s = frame_seconds(model.encoder.cfg.n_convs)  # 0.04 s per encoder frame
        self._check(dtype)
        o = self.opt  # the rules every attention mode applies to the decoder's logits (reference: the release's)
        self.filters = logit_filters(o.repetition_penalty, o.no_repeat_ngram)

    @classmethod
    def from_folder(cls, folder=DEFAULT_MODEL, device="auto", dtype=torch.float32, **options) -> "Transcriber":
        """A model folder -> its Transcriber: the folder's decoding defaults (config.json "decode", e.g. the teaching
        model's 8 s windows), then `options` (DecodeOptions fields) over them, as `decode.py --model` does.

            Transcriber.from_folder("models/teach").transcribe(["samples/sample1.wav"])[0]["text"]
        """
        from model import load_model, read_config, tokenizer_path

        unknown = sorted(set(options) - {f.name for f in fields(DecodeOptions)})
        if unknown:
            raise TypeError(f"unknown decoding options: {', '.join(unknown)} (see DecodeOptions)")
        known = {f.name for f in fields(DecodeOptions)}
        defaults = {k: v for k, v in read_config(folder).get("decode", {}).items() if k in known}
        tok = tokenizer_path(folder)
        if tok is None:
            raise ValueError(f"{folder}: the folder names no tokenizer")
        return cls(load_model(folder, dtype=dtype), Tokenizer.load(tok), DecodeOptions(**{**defaults, **options}),
                   device=pick_device(device), dtype=dtype)

    def _check(self, dtype):
        """Refuse options that cannot work with this model, in one line each (the CLI: exit status 2)."""
        o = self.opt
        check_options(o)
        if o.mode == "reference" and dtype != torch.float32:
            raise ValueError("--mode reference is float32 by definition (recipe §9)")
        if o.mode == "joint" and math.ceil(o.pre_beam * o.beam_size) > self.model.vocab_size:
            raise ValueError(f"--pre-beam {o.pre_beam:g} x --beam-size {o.beam_size} candidates exceed the "
                             f"{self.model.vocab_size} ids of the vocabulary")
        window = o.window if o.mode != "reference" else N_SAMPLES / SAMPLE_RATE
        frames = int(subsampled_lengths(torch.tensor(n_frames(round(window * SAMPLE_RATE))),
                                        self.model.encoder.cfg.n_convs))
        if frames + o.max_tokens + 1 > self.model.llm.config.max_seq_len:
            raise ValueError(f"{window:g} s of audio ({frames} frames) + {o.max_tokens} tokens exceed the decoder's "
                             f"{self.model.llm.config.max_seq_len} positions: lower --window or --max-tokens")

    @torch.no_grad()
    def transcribe(self, items) -> list[dict]:
        """Paths or 1-D 16 kHz waveforms -> one result dict each, in input order."""
        results = [None] * len(items)
        if self.opt.mode == "reference":
            self._reference(items, results)
            return results
        short = []  # (index, name, samples at 16 kHz) of the items that fit in one window
        for i, item in enumerate(items):
            name = _name(item, i)
            try:
                if isinstance(item, torch.Tensor):
                    require_finite(item, name)  # as a file's samples are checked when read
                n = item.shape[-1] if isinstance(item, torch.Tensor) else _samples(item)  # header only
                if n > round(self.opt.window * SAMPLE_RATE):
                    results[i] = self._long(name, item, n)
                else:
                    short.append((i, name, n))
            except AudioError as e:
                results[i] = {"audio": name, "error": str(e)}
        short.sort(key=lambda s: s[2])  # similar lengths together: little padding
        for k in range(0, len(short), self.opt.batch_size):
            names, wavs = [], []
            for i, name, _ in short[k: k + self.opt.batch_size]:
                try:
                    wavs.append(_load(items[i], max_seconds=self.opt.window))  # at most what the header said
                    names.append((i, name))
                except AudioError as e:
                    results[i] = {"audio": name, "error": str(e)}
            if wavs:
                for (i, name), wav, (tokens, lp) in zip(names, wavs, self._decode_windows(wavs, self.opt.timestamps)):
                    results[i] = self._result(name, tokens, lp, wav.shape[-1] / SAMPLE_RATE)
        return results

    # -- one batch of windows ------------------------------------------------------------------------------------

    def _decode_windows(self, wavs: list[torch.Tensor], align: bool) -> list[tuple[list[int], torch.Tensor | None]]:
        """Waveforms of at most one window each -> (token ids, CTC log-probs (T'_b, V) or None) per waveform."""
        o = self.opt
        audio, enc_len, log_probs = self._encode(wavs, ctc=align or o.mode in ("ctc", "joint"))
        if o.mode == "ctc":
            tokens = ctc_greedy(log_probs, enc_len)
        else:
            tokens = search(self.model.llm, audio, enc_len, log_probs, o, self.filters)
        return [(t, None if log_probs is None else log_probs[b, : int(enc_len[b])]) for b, t in enumerate(tokens)]

    def _encode(self, wavs: list[torch.Tensor], ctc: bool):
        """Waveforms -> audio embeddings (B, T', d), lengths (B,), CTC log-probs (B, T', V) float32 or None.

        Encoded in runs of similar length (search.length_runs), then padded together for the decoder. The CTC
        head runs only when something reads it (ctc and joint modes, word times): with the release's 100000 ids
        it costs about as much as the encoder. A model folder with `level_dbfs` has each waveform (each window of a
        long file) scaled to that RMS first, as its training data were.
        """
        if self.model.level_dbfs is not None:  # the model folder's front end (as its training data were made)
            wavs = [normalize_level(w, self.model.level_dbfs) for w in wavs]
        mels, lengths = batch_log_mel(wavs, self.model.encoder.cfg.n_mels)  # (B, n_mels, T), (B,): the model's bands
        mels, lengths = mels.to(self.device, self.dtype), lengths.to(self.device)
        runs = length_runs(lengths)
        runs = runs if len(runs) > 1 else [torch.arange(len(wavs), device=self.device)]  # input order
        parts = []
        for rows in runs:
            enc, audio, n = self.model.encode(mels[rows, :, : int(lengths[rows].max())], lengths[rows])
            parts.append((audio, n, self.model.ctc_log_probs(enc) if ctc else None))
        if len(runs) == 1:
            return parts[0]
        T = max(a.shape[1] for a, _, _ in parts)
        audio = mels.new_zeros(len(wavs), T, parts[0][0].shape[-1])
        enc_len = torch.zeros(len(wavs), dtype=torch.long, device=self.device)
        log_probs = torch.zeros(len(wavs), T, parts[0][2].shape[-1], device=self.device) if ctc else None
        for rows, (a, n, lp) in zip(runs, parts):
            audio[rows, : a.shape[1]], enc_len[rows] = a, n
            if ctc:
                log_probs[rows, : lp.shape[1]] = lp  # frames past an item's end: see ctc.pad_as_blank
        return audio, enc_len, log_probs

    def _words(self, tokens: list[int], log_probs: torch.Tensor, offset: float, duration: float) -> list[dict]:
        """[{word, start, end}] in seconds from the file's start, by aligning tokens to the CTC frames."""
        text = normalize(self.tokenizer.decode(tokens))
        spans = forced_align(log_probs, tokens)
        if spans is None:  # more tokens than frames can carry: spread the words evenly
            return longform.spread_times(text.split(), offset, offset + duration)
        return word_times(text.split(), word_index(self.tokenizer.decode, tokens, normalize), spans,
                          self.frame_s, offset, n_frames=log_probs.shape[0], audio_end=offset + duration)

    def _result(self, name: str, tokens: list[int], log_probs: torch.Tensor, duration: float) -> dict:
        """duration: the audio's seconds (its frames, rounded up to 40 ms and padded, can reach past it)."""
        out = {"audio": name, "text": normalize(self.tokenizer.decode(tokens))}
        if self.opt.timestamps:
            out["words"] = self._words(tokens, log_probs, 0.0, duration)
        return out

    # -- long files ----------------------------------------------------------------------------------------------

    def _long(self, name: str, item, n: int) -> dict:
        """Windows decoded in batches, then joined (long_cut="pauses") or spliced at the seams; memory bounded by
        batch_size windows. n: the item's samples at 16 kHz."""
        o = self.opt
        spans = None
        if o.long_cut == "pauses":  # one pass over the file for its loudness, then windows that end at pauses
            level = (longform.loudness(longform.frame_power(item.reshape(-1).float())) if isinstance(item, torch.Tensor)
                     else longform.file_loudness(item))
            spans = longform.pause_spans(level, n, round(o.window * SAMPLE_RATE))
        if isinstance(item, torch.Tensor):
            windows = _tensor_windows(item, o.window, o.overlap, spans)
        else:
            windows = longform.AudioWindows(item, o.window, o.overlap, spans=spans)  # read one at a time
        spliced, pending = [], []
        for start, wav in windows:
            pending.append((start, wav))
            if len(pending) == self.opt.batch_size:
                spliced += self._decode_pending(pending)
                pending = []
        spliced += self._decode_pending(pending) if pending else []
        words = longform.merge_words(spliced) if spans is None else [w for _, _, ws in spliced for w in ws]
        out = {"audio": name, "text": " ".join(w["word"] for w in words)}
        if self.opt.timestamps:
            out["words"] = words
        return out

    def _decode_pending(self, pending) -> list[tuple[float, float, list[dict]]]:
        out = []
        for (start, wav), (tokens, lp) in zip(pending, self._decode_windows([w for _, w in pending], True)):
            t0, dur = start / SAMPLE_RATE, wav.shape[-1] / SAMPLE_RATE
            out.append((t0, t0 + dur, self._words(tokens, lp, t0, dur)))
        return out

    # -- the release's own decoding ------------------------------------------------------------------------------

    def _reference(self, items, results):
        """recipe §9: each file's 15 s cut (or the original's chunks), float32, filtered greedy. The cuts of several
        files are decoded as one padded batch with masks, which gives each the tokens it gets alone, unmasked
        (tests/test_decode.py). Chunks stream through batch_size at a time: only the audio used is read."""
        texts, words, batch = {}, {}, []  # index -> per chunk, in order; batch: (index, start sample, waveform)
        for chunk in self._reference_chunks(items, results):
            batch.append(chunk)
            if len(batch) == self.opt.batch_size:
                self._reference_batch(batch, texts, words)
                batch = []
        if batch:
            self._reference_batch(batch, texts, words)
        for i, file_texts in texts.items():
            if results[i] is not None:  # failed part-way through its chunks
                continue
            results[i] = {"audio": _name(items[i], i), "text": longform.join_chunk_texts(file_texts)}
            if self.opt.timestamps:  # the words of the chunks whose text was kept
                results[i]["words"] = [w for c in longform.kept_chunks(file_texts) for w in words[i][c]]

    def _reference_chunks(self, items, results):
        """(index, start sample, waveform) of every file's cut or chunks, read one at a time; a file that cannot
        be read gets its error in results and yields no more."""
        for i, item in enumerate(items):
            try:
                if isinstance(item, torch.Tensor) or not self.opt.chunked:
                    wav = _load(item, max_seconds=N_SAMPLES / SAMPLE_RATE)  # a path: only the first 15 s read
                    parts = longform.reference_chunks(wav) if self.opt.chunked else [(0, wav[:N_SAMPLES])]
                    yield from ((i, start, chunk) for start, chunk in parts)
                    continue
                for start, chunk in longform.AudioWindows(item, N_SAMPLES / SAMPLE_RATE, 0.0,
                                                          starts_of=longform.reference_starts):
                    yield i, start, _pad(chunk)
            except AudioError as e:
                results[i] = {"audio": _name(item, i), "error": str(e)}

    def _reference_batch(self, batch, texts, words):
        """Decode one batch of reference chunks; their texts (and words) go to texts[index] (words[index])."""
        audio, enc_len, log_probs = self._encode([c for _, _, c in batch], ctc=self.opt.timestamps)
        tokens = greedy_tokens(self.model.llm, audio, enc_len, self.opt.max_tokens, release_filters())
        for b, ((i, start, chunk), t) in enumerate(zip(batch, tokens)):
            texts.setdefault(i, []).append(normalize(self.tokenizer.decode(t)))
            if self.opt.timestamps:
                lp = log_probs[b, : int(enc_len[b])]
                words.setdefault(i, []).append(self._words(t, lp, start / SAMPLE_RATE, chunk.shape[-1] / SAMPLE_RATE))


def _name(item, i: int) -> str:
    return f"<waveform {i}>" if isinstance(item, torch.Tensor) else str(item)


def search(llm, audio, enc_len, log_probs, o: DecodeOptions, filters=()) -> list[list[int]]:
    """The search of the mode: greedy; beam = beam search over the decoder; joint = beam search over the decoder
    and the CTC prefix scores, weighted 1 - w and w. The logit filters apply to the decoder in all three."""
    if o.mode == "greedy":  # at most one token an encoder frame, as beam_search (CTC could emit no more)
        return greedy_tokens(llm, audio, enc_len, o.max_tokens, filters, frame_bound=True)
    w = o.ctc_weight if o.mode == "joint" else 0.0
    scorers = [DecoderScorer(llm, audio, enc_len, 1 - w, filters)]
    if w > 0:
        scorers.append(CTCScorer(CTCPrefixScorer(log_probs, enc_len), w))
    return beam_search(scorers, enc_len, o.beam_size, o.max_tokens, o.length_penalty, o.pre_beam)


def _load(item, max_seconds: float | None = None) -> torch.Tensor:
    """A path -> 16 kHz mono waveform of at most max_seconds (mel.load_audio's checks); a waveform passes through."""
    wav = item.float().reshape(-1) if isinstance(item, torch.Tensor) else load_audio(item, max_seconds=max_seconds)
    return _pad(wav)


def _pad(wav: torch.Tensor) -> torch.Tensor:
    """A clip shorter than one 25 ms analysis window gets silence appended up to it (the stft's reflect padding
    needs that much), so even a click decodes, to (near) nothing."""
    return torch.nn.functional.pad(wav, (0, max(0, N_FFT - wav.shape[0])))


def _samples(path) -> int:
    """Samples at 16 kHz, from the header alone."""
    frames, sr = longform.audio_info(path)
    return longform.n_resampled(frames, sr)


def _tensor_windows(wav: torch.Tensor, window: float, overlap: float, spans=None):
    w, o = round(window * SAMPLE_RATE), round(overlap * SAMPLE_RATE)
    for start, end in spans or longform.window_spans(wav.shape[-1], w, o):
        yield start, wav.reshape(-1)[start: end].float()


# ---------------------------------------------------------------------------------------------------------------
# command line

def add_decoding_args(p: argparse.ArgumentParser):
    """The model and decoding flags, shared with evaluate.py."""
    m = p.add_argument_group("model (default: the teaching model in models/teach/)")
    m.add_argument("--model", default=None, metavar="DIR",
                   help="a model folder written by train.py / model.save_model (default: models/teach/)")
    m.add_argument("--checkpoint", default=None, metavar="PATH/model.pt",
                   help="the released checkpoint (checkpoint-92000/model.pt); needs --decoder and --tokenizer")
    m.add_argument("--decoder", default=None, metavar="LLAMA_DIR",
                   help="Hugging Face Llama folder of the frozen decoder (the release: "
                        "sozkz-core-llama-300m-kk-base-v1); with --model it overrides the folder's own")
    m.add_argument("--tokenizer", default=None, metavar="FILE",
                   help="tokenizer.json (the release: sozkz-morphbpe-100k-kk-v1) or a sentencepiece .model; "
                        "with --model it overrides the folder's own")
    m.add_argument("--device", choices=DEVICES, default="auto",
                   help="where to run; auto: cuda when available, else cpu (default: %(default)s)")
    m.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32",
                   help="weights and activations; norms, softmax and scores stay float32 (default: float32, "
                        "the release's recipe; --mode reference is always float32)")
    d = p.add_argument_group("decoding")
    d.add_argument("--mode", choices=MODES, default=DEFAULT_MODE,
                   help=f"reference: the release's own decoding, to the token (recipe §9); greedy; beam: attention "
                        f"beam search; joint: joint CTC/attention beam search; ctc: CTC greedy "
                        f"(default: {DEFAULT_MODE})")
    d.add_argument("--beam-size", type=int, default=DecodeOptions.beam_size,
                   help="hypotheses kept in beam and joint modes (default: %(default)s)")
    d.add_argument("--ctc-weight", type=float, default=DecodeOptions.ctc_weight,
                   help="joint: weight w of CTC in (1-w) attention + w CTC; 0 is attention beam search "
                        "(default: %(default)s)")
    d.add_argument("--pre-beam", type=float, default=DecodeOptions.pre_beam,
                   help="joint: candidates per hypothesis given exact CTC scores, times --beam-size "
                        "(default: %(default)s)")
    d.add_argument("--length-penalty", type=float, default=DecodeOptions.length_penalty,
                   help="beam/joint: rank finished hypotheses by score / length**this (default: %(default)s)")
    d.add_argument("--repetition-penalty", type=float, default=DecodeOptions.repetition_penalty,
                   help="greedy/beam/joint: divide the logits of ids already generated by this (multiply when "
                        "negative), as the release's reference decoding does with 1.15 (default: %(default)s, off)")
    d.add_argument("--no-repeat-ngram", type=int, default=DecodeOptions.no_repeat_ngram,
                   help="greedy/beam/joint: ban any id that would repeat an n-gram of this size, as the release's "
                        "reference decoding does with 3 (default: %(default)s, off)")
    d.add_argument("--max-tokens", type=int, default=DecodeOptions.max_tokens,
                   help="most tokens per utterance or window, EOS aside (default: %(default)s, the release's)")
    d.add_argument("--batch-size", type=int, default=DecodeOptions.batch_size,
                   help="files or windows decoded together, padded and masked: each gets the text it gets "
                        "alone (default: %(default)s)")
    d.add_argument("--chunked", action="store_true",
                   help="reference: the original's chunking (15 s chunks every 12 s, a last chunk under 1 s "
                        "dropped, repeated chunk texts removed) instead of cutting at 15 s")
    d.add_argument("--window", type=float, default=None,
                   help=f"long files (not reference): window length in seconds (default: the model folder's "
                        f"`decode.window`, else {DecodeOptions.window}, the release's training length)")
    d.add_argument("--long-cut", choices=longform.CUTS, default=None,
                   help="long files (not reference): overlap: windows of --window sharing --overlap seconds, "
                        "spliced at a word both agree on; pauses: windows of at most --window that do not overlap, "
                        "each ending at the quietest stretch of its second half, their texts joined "
                        f"(default: the model folder's `decode.long_cut`, else {DecodeOptions.long_cut})")
    d.add_argument("--overlap", type=float, default=None,
                   help=f"long files, --long-cut overlap: seconds shared by neighbouring windows, spliced in the middle "
                        f"(default: the model folder's `decode.overlap`, else {DecodeOptions.overlap})")
    return p


def options_from_args(args, folder_defaults: dict | None = None) -> DecodeOptions:
    """Flags given on the command line, else the model folder's `decode` defaults, else DecodeOptions'."""
    given = {f.name: getattr(args, f.name) for f in fields(DecodeOptions) if getattr(args, f.name, None) is not None}
    known = {f.name for f in fields(DecodeOptions)}
    return DecodeOptions(**{**{k: v for k, v in (folder_defaults or {}).items() if k in known}, **given})


def load(args) -> Transcriber:
    """Model, tokenizer and options from parsed add_decoding_args flags; ValueError (one line) when unusable."""
    from model import load_model, load_release, read_config, tokenizer_path  # here: --help needs no model code

    device = pick_device(args.device or "auto")  # cuda without CUDA: one line here, before anything loads
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[args.dtype]
    folder = None if args.checkpoint else (Path(args.model) if args.model else DEFAULT_MODEL)
    config = folder / "config.json" if folder else None
    defaults = read_config(folder).get("decode", {}) if config and config.is_file() else {}
    options = options_from_args(args, defaults)  # e.g. the teaching model's shorter windows
    check_options(options)  # before the model loads: a bad flag costs nothing
    if options.mode == "reference" and dtype != torch.float32:
        raise ValueError("--mode reference is float32 by definition (recipe §9); drop --dtype bfloat16")
    if args.checkpoint:
        if not (args.decoder and args.tokenizer):
            raise ValueError("--checkpoint needs --decoder LLAMA_DIR and --tokenizer PATH/tokenizer.json")
        tokenizer = Tokenizer.load(args.tokenizer)
        model = load_release(args.checkpoint, args.decoder, tokenizer_vocab=tokenizer.vocab_size, dtype=dtype)
    else:
        if not (folder / "config.json").is_file():
            if args.model:
                raise ValueError(f"{folder}: not a model folder (no config.json)")
            raise ValueError(f"no teaching model in {folder} yet (train one with train.py, or pass --model DIR); "
                             "to run the release: --checkpoint PATH/model.pt --decoder LLAMA_DIR "
                             "--tokenizer PATH/tokenizer.json")
        tok = args.tokenizer or tokenizer_path(folder)
        if tok is None:
            raise ValueError(f"{folder}: the folder names no tokenizer; pass --tokenizer FILE")
        tokenizer = Tokenizer.load(tok)
        model = load_model(folder, dtype=dtype, decoder=args.decoder)
        if model.vocab_size != tokenizer.vocab_size:
            raise ValueError(f"{tok}: has {tokenizer.vocab_size} ids but the model in {folder} has {model.vocab_size}")
    return Transcriber(model, tokenizer, options, device=device, dtype=dtype)


def parse_args(argv=None):
    p = cli.ArgumentParser(
        description="Transcribe Kazakh speech with a SozKZ ASR model (the teaching model by default, or the "
                    "released checkpoint-92000). Prints the normalised transcript (recipe §5).",
        epilog="Files longer than --window are transcribed whole in overlapping windows (not in reference mode, "
               "which cuts at 15 s as the original did unless --chunked). Exit status: 0 all files transcribed, "
               "1 some file failed (one line each on stderr; the others are still transcribed), 2 bad arguments "
               "or model, 141 the output pipe was closed (e.g. by head).",
    )
    p.add_argument("files", nargs="+", metavar="FILE", help="audio files (wav, flac, ogg, mp3; any rate, any channels)")
    add_decoding_args(p)
    o = p.add_argument_group("output")
    o.add_argument("--format", choices=["text", "jsonl"], default="text",
                   help="text: the transcript (PATH<TAB>text when several files); jsonl: one JSON object a line "
                        "with audio, text (and words) (default: text)")
    o.add_argument("--timestamps", action="store_true",
                   help="with --format jsonl: add words [{word, start, end}] in seconds, from the CTC alignment "
                        "of the final tokens (40 ms encoder frames; README: word timestamps)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.timestamps and args.format != "jsonl":  # text output has nowhere to put them
        print("decode.py: error: --timestamps needs --format jsonl (words are printed as JSON)", file=sys.stderr)
        return 2
    try:
        transcriber = load(args)
    except (ValueError, OSError) as e:  # AudioError, CheckpointError, TokenizerError and our own: all one line
        print(f"decode.py: error: {e}", file=sys.stderr)
        return 2
    try:
        failed = transcribe_files(transcriber, args)
    except BrokenPipeError:  # `decode.py ... | head`: the reader has gone, so stop quietly
        _silence_stdout()
        return 141  # what a shell reports for a program ended by SIGPIPE
    return 1 if failed else 0


def transcribe_files(transcriber: Transcriber, args) -> int:
    """Print every file's transcript as it is done, one error line per file that failed; returns how many failed.

    What is not a regular file (a FIFO, a device, a folder) is refused before anything is read from it."""
    failed, paths = 0, []
    for path in args.files:
        try:
            paths.append(check_file(path))
        except AudioError as e:
            failed += 1
            print(f"decode.py: {e}", file=sys.stderr)
    group = transcriber.opt.batch_size * 8  # print as we go, sorting by length within each group
    for k in range(0, len(paths), group):
        for r in transcriber.transcribe(paths[k: k + group]):
            if "error" in r:
                failed += 1
                print(f"decode.py: {r['error']}", file=sys.stderr)
            elif args.format == "jsonl":
                print(json.dumps(r, ensure_ascii=False))
            elif len(args.files) == 1:
                print(r["text"])
            else:
                print(f"{r['audio']}\t{r['text']}")
            sys.stdout.flush()
    return failed


def _silence_stdout():
    """Point stdout at /dev/null, so that the interpreter's last flush of a closed pipe raises nothing."""
    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # no real file descriptor (an in-process caller's buffer)
        pass


if __name__ == "__main__":
    sys.exit(main())
