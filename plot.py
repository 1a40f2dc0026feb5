"""Pictures of what the model does: one utterance's audio, alignment and attention, or a run's training curves.

    python plot.py samples/sample1.wav --out docs/sample1.png           # the teaching model, joint decoding
    python plot.py clip.wav --mode greedy --layer 3 --out clip.png      # one decoder layer's attention
    python plot.py long.wav --start 20 --out long.png                   # the window that starts at 20 s
    python plot.py --log runs/teach/log.jsonl --out curves.png          # the training curves of a run

An utterance's figure is four stacked panels on one time axis (seconds from the file's start):
  1. the log-mel spectrogram (mel.py), the transcript's words at their CTC-aligned times (decode.py's timestamps)
  2. the CTC posteriors of each 40 ms encoder frame: blank shaded, the best path's tokens labelled
  3. the decoder's attention from each output token to the audio frames, teacher-forced on the decoded tokens,
     averaged over heads and layers (or one --layer): row k is the position whose output predicts token k
     (the last audio frame for the first token, as in training), the last row predicts EOS; a row's sum is the
     attention mass on audio, the rest went to the text before it
  4. a caption: model, decoding mode, text
A training log's figure: loss with its CE and CTC parts and the validation loss; learning rate; gradient norm;
validation WER and CER; and, when the log has them, the validation CE after each utterance's own audio and after
another's, and their gap (listen.py: shuffled - own, nats/token; 0 when the decoder ignores the audio).

A figure's data is computed by `utterance_data` / `curve_data` as plain numpy arrays and dicts (what the tests
check), and drawn by `draw_utterance` / `draw_curves`. A file longer than one decoding window is drawn one
window at a time (--start). Matplotlib draws on its Agg backend: no display is needed.
Not here: decoding (decode.py, search.py), the alignment maths (ctc.py), the features (mel.py).
"""
import argparse
import json
import math
import os
import sys
import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display, no GUI toolkit
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

import cli  # noqa: E402
import longform  # noqa: E402
from atomic import atomic_file  # noqa: E402
from ctc import BLANK, ctc_greedy  # noqa: E402
from decode import DEFAULT_MODEL, _load, add_decoding_args, load, search  # noqa: E402
from mel import HOP_LENGTH, N_SAMPLES, SAMPLE_RATE, AudioError, check_file, log_mel_spectrogram  # noqa: E402
from model import decoder_prompt, predicting_positions  # noqa: E402
from search import greedy_tokens, release_filters  # noqa: E402
from tokenizer import normalize  # noqa: E402

UTTERANCE_PANELS = ("spectrogram", "ctc", "attention", "caption")
# training-log panels: (title, y label, the log.jsonl keys drawn in it); train.py writes these keys
CURVE_PANELS = (
    ("loss", "nats", ("loss", "ce", "ctc", "row_ctc", "valid_loss")),
    ("learning rate", "lr", ("lr",)),
    ("gradient norm (before clipping)", "norm", ("grad_norm",)),
    ("validation error", "rate", ("valid_wer", "valid_cer")),
    ("validation CE of the transcripts after their own audio and after another's (listen.py)", "nats/token",
     ("valid_ce_own", "valid_ce_shuffled")),
    ("does the decoder listen: CE(shuffled audio) - CE(own audio); 0: it ignores the audio", "nats/token",
     ("valid_listen_gap",)),
)


class LogError(ValueError):
    """A training log we cannot read; the message is one line naming the file (and line) and the problem."""


# ---------------------------------------------------------------------------------------------------------------
# one utterance: the data

def read_window(path, start: float, window: float) -> tuple[torch.Tensor, float, float]:
    """The window [start, start + window) s of a file -> (16 kHz waveform, its start s, the file's length s).

    Only that window is read from disk (longform.AudioWindows), so a long file costs one window of memory.
    """
    frames, sr = longform.audio_info(path)  # AudioError for what cannot be read
    n = longform.n_resampled(frames, sr)
    if not 0 <= start < n / SAMPLE_RATE:
        raise AudioError(f"{path}: --start {start:g} is outside the audio (0 to {n / SAMPLE_RATE:.2f} s)")
    first = round(start * SAMPLE_RATE)
    (_, wav), = longform.AudioWindows(path, window, 0.0, starts_of=lambda _: [first])  # this window alone
    return _load(wav), first / SAMPLE_RATE, n / SAMPLE_RATE


@torch.no_grad()
def decode_window(transcriber, wav: torch.Tensor):
    """A waveform of at most one window -> (token ids, CTC log-probs (T', V), audio embeddings (T', d)).

    The tokens are those decode.py gives the window in the transcriber's mode.
    """
    o, llm = transcriber.opt, transcriber.model.llm
    audio, enc_len, log_probs = transcriber._encode([wav], ctc=True)  # (1, T', d), (1,), (1, T', V)
    if o.mode == "ctc":
        tokens = ctc_greedy(log_probs, enc_len)[0]
    elif o.mode == "reference":
        tokens = greedy_tokens(llm, audio, enc_len, o.max_tokens, release_filters())[0]
    else:
        tokens = search(llm, audio, enc_len, log_probs, o, transcriber.filters)[0]
    return tokens, log_probs[0], audio[0]


@torch.no_grad()
def decoder_attention(llm, audio: torch.Tensor, tokens: list[int], layer: int | None = None):
    """Attention of the outputs that predict each token (then EOS) over [audio | text], teacher-forced.

    audio (T', d) embeddings, tokens [L] -> (L+1, T') mass on each audio frame and (L+1,) mass on the text,
    averaged over heads, and over layers unless `layer` is given. Row k is the query of the slot whose output
    predicts token k (model.predicting_positions: the last audio frame, then each text slot). Memory: layers x heads x (T'+L)^2 floats (the release, 15 s
    and 256 tokens: 18 x 16 x 631^2, ~0.5 GB).
    """
    Ta = audio.shape[0]
    prompt, _ = decoder_prompt(llm, audio[None], None)  # (1, P, d)
    if prompt.shape[1] != Ta:
        raise ValueError(f"the decoder's prompt has {prompt.shape[1]} slots, not the {Ta} audio frames alone")
    ids = torch.tensor([tokens], dtype=torch.long, device=audio.device)
    x = torch.cat([prompt, llm.embed(ids).to(prompt.dtype)], dim=1)  # (1, T'+L, d)
    probs = []
    llm(x, attn_probs=probs)  # one (1, H, T'+L, T'+L) per layer
    p = torch.stack([q[0].mean(0) for q in probs])  # (layers, T'+L, T'+L): heads averaged
    p = p.mean(0) if layer is None else p[layer]
    rows = p[predicting_positions(None, Ta, len(tokens))[0].to(p.device)]  # (L+1, T'+L)
    return rows[:, :Ta].cpu().numpy(), rows[:, Ta:].sum(-1).cpu().numpy()


def token_labels(tokenizer, tokens: list[int]) -> list[str]:
    """What each token adds to the decoded text; "▁" marks a token that starts a word."""
    out, before = [], ""
    for i in range(len(tokens)):
        text = tokenizer.decode(tokens[: i + 1])
        piece = text[len(before):] if text.startswith(before) else tokenizer.decode(tokens[i: i + 1])
        if piece and (i == 0 or piece[0].isspace()):  # the decoder drops the first word's space
            piece = "▁" + piece.lstrip()
        out.append(piece or f"<{tokens[i]}>")  # a token that adds nothing alone (part of a character)
        before = text
    return out


def ctc_path(log_probs: torch.Tensor, labels, frame_s: float, offset: float) -> list[dict]:
    """The best path's runs of one non-blank token: [{token, label, start, end, prob}] (s; prob = the run's peak)."""
    probs = log_probs.float().exp()
    best = probs.argmax(-1).tolist()
    runs = []
    for t, v in enumerate(best):
        if v == BLANK:
            continue
        if runs and runs[-1]["token"] == v and runs[-1]["last"] == t - 1:
            runs[-1]["last"] = t
        else:
            runs.append(dict(token=v, first=t, last=t))
    return [dict(token=r["token"], label=labels(r["token"]), start=round(offset + r["first"] * frame_s, 3),
                 end=round(offset + (r["last"] + 1) * frame_s, 3),
                 prob=float(probs[r["first"]: r["last"] + 1, r["token"]].max())) for r in runs]


def utterance_data(transcriber, path, start: float = 0.0, layer: int | None = None, model_name: str = "") -> dict:
    """Everything the utterance figure draws, as plain numbers: see the keys below; times in s from the file's start."""
    o, tok, llm = transcriber.opt, transcriber.tokenizer, transcriber.model.llm
    window = N_SAMPLES / SAMPLE_RATE if o.mode == "reference" else o.window  # what the mode decodes at once
    wav, offset, total = read_window(path, start, window)
    tokens, log_probs, audio = decode_window(transcriber, wav)
    duration = wav.shape[-1] / SAMPLE_RATE
    fs = transcriber.frame_s
    words = [w for w in transcriber._words(tokens, log_probs, offset, duration) if w["start"] is not None]
    attention, text_mass = decoder_attention(llm, audio, tokens, layer)
    lp = log_probs.float().cpu()
    return dict(
        panels=list(UTTERANCE_PANELS),
        audio=str(path), offset=offset, duration=duration, file_duration=total,
        mel=log_mel_spectrogram(wav, transcriber.model.encoder.cfg.n_mels).cpu().numpy(),  # (n_mels, frames)
        mel_hop_s=HOP_LENGTH / SAMPLE_RATE,
        words=words,  # [{word, start, end}], decode.py --timestamps
        frame_s=fs, blank=lp[:, BLANK].exp().numpy(),  # (T',) blank posterior per encoder frame
        nonblank=lp[:, 1:].exp().max(-1).values.numpy(),  # (T',) the likeliest other token's posterior
        path=ctc_path(lp, lambda v: tok.decode([v]) or f"<{v}>", fs, offset),
        tokens=tokens, token_labels=token_labels(tok, tokens) + ["EOS"],
        attention=attention, text_mass=text_mass,  # (L+1, T'), (L+1,)
        layer=layer, n_layers=llm.config.n_layers, n_heads=llm.config.n_heads,
        model=model_name, mode=o.mode, text=normalize(tok.decode(tokens)),
    )


# ---------------------------------------------------------------------------------------------------------------
# one utterance: the drawing

def draw_utterance(d: dict):
    """The four panels of utterance_data -> a matplotlib Figure."""
    n_rows = len(d["tokens"]) + 1
    fig, axes = plt.subplots(4, 1, figsize=(max(10.0, 2.2 * d["duration"] + 2), 8.5 + 0.09 * n_rows),
                             gridspec_kw=dict(height_ratios=[3, 2, 2.5 + 0.1 * n_rows, 0.8]))
    spec, ctc, att, cap = axes
    t0, t1 = d["offset"], d["offset"] + d["duration"]
    for ax in (ctc, att):
        ax.sharex(spec)

    n_mels, n_mel_frames = d["mel"].shape
    spec.imshow(d["mel"], origin="lower", aspect="auto", cmap="magma",
                extent=(t0, t0 + n_mel_frames * d["mel_hop_s"], 0, n_mels))
    spec.set(ylabel="mel bin", title="log-mel spectrogram, words at their CTC-aligned times", xlim=(t0, t1))
    for i, w in enumerate(d["words"]):
        y = n_mels * (0.93 if i % 2 == 0 else 0.82)  # two rows, so neighbours do not overlap
        spec.plot([w["start"], w["end"]], [y - 3, y - 3], color="white", lw=2)
        spec.axvline(w["start"], color="white", lw=0.6, ls=":")
        spec.text((w["start"] + w["end"]) / 2, y, w["word"], color="white", ha="center", va="bottom", fontsize=9)

    frames = d["offset"] + (np.arange(len(d["blank"])) + 0.5) * d["frame_s"]
    ctc.fill_between(frames, 0, d["blank"], step="mid", color="0.6", alpha=0.5, lw=0, label="blank")
    ctc.step(frames, d["nonblank"], where="mid", color="tab:blue", lw=1, label="best non-blank token")
    for r in d["path"]:
        ctc.text((r["start"] + r["end"]) / 2, min(r["prob"], 1.0) + 0.03, r["label"], rotation=90,
                 ha="center", va="bottom", fontsize=7)
    ctc.set(ylim=(0, 1.6), yticks=[0, 0.5, 1], ylabel="posterior", title="CTC posteriors: the best path's tokens")
    ctc.legend(loc="upper right", fontsize=7, ncol=2)

    frame_end = d["offset"] + d["attention"].shape[1] * d["frame_s"]
    # square-root colours: a uniform row is 1/T' per frame, and the few peaks would otherwise hide it
    att.imshow(d["attention"], aspect="auto", cmap="viridis", interpolation="nearest",
               norm=matplotlib.colors.PowerNorm(0.5, vmin=0), extent=(d["offset"], frame_end, n_rows - 0.5, -0.5))
    step = max(1, math.ceil(n_rows / 60))  # at most ~60 labels
    att.set_yticks(range(0, n_rows, step), d["token_labels"][::step], fontsize=7)
    which = f"mean of {d['n_layers']} layers" if d["layer"] is None else f"layer {d['layer']}"
    att.set(xlabel="seconds", ylabel="output token",
            title=f"decoder attention to the audio ({which}, {d['n_heads']} heads, sqrt colours); right: mass on audio")
    mass = att.twinx()
    mass.set_ylim(att.get_ylim())
    mass.set_yticks(range(0, n_rows, step), [f"{1 - m:.2f}" for m in d["text_mass"][::step]], fontsize=6)

    cap.axis("off")
    where = "" if d["duration"] >= d["file_duration"] - 1e-3 else \
        f"  window {t0:.1f}-{t1:.1f} s of {d['file_duration']:.1f} s (--start moves it)"
    caption = f"{d['audio']}  model: {d['model']}  mode: {d['mode']}{where}\n" + \
        "\n".join(textwrap.wrap(d["text"] or "(empty)", width=int(fig.get_figwidth() * 11)))
    cap.text(0, 1, caption, va="top", ha="left", fontsize=9, transform=cap.transAxes)
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------------------------------------------------------
# a training log

def read_log(path) -> list[dict]:
    """log.jsonl -> its records. A last line without its newline (a run still writing it) is left out."""
    try:
        if Path(path).exists():  # (a missing one is read_text's "cannot read" below)
            check_file(path)  # a FIFO would block the read forever and /dev/zero fill the memory
        text = Path(path).read_text(encoding="utf-8")
    except AudioError as e:
        raise LogError(str(e).replace("not an audio file", "not a log")) from None
    except (OSError, UnicodeDecodeError) as e:
        raise LogError(f"{path}: cannot read ({type(e).__name__}: {getattr(e, 'strerror', None) or e})") from None
    lines = text.split("\n")
    records = []
    for n, line in enumerate(lines[:-1], 1):  # lines[-1]: what follows the last newline
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except (ValueError, RecursionError):  # JSONDecodeError; too many digits; nested too deep
            raise LogError(f"{path}:{n}: not a JSON line") from None
        if not isinstance(rec, dict) or not isinstance(rec.get("step"), int):
            raise LogError(f"{path}:{n}: not a train.py log record (no integer step)")
        records.append(rec)
    if not records:
        raise LogError(f"{path}: no log records")
    return records


def curve_data(records: list[dict], source: str = "log") -> dict:
    """Records -> {"panels": [{title, ylabel, series: {key: (steps, values)}}], "left_out": [keys]}.

    A step logged twice (a run resumed from an earlier checkpoint logs its steps again) keeps its last value.
    Only keys with a finite number somewhere are drawn; a series that is 0 at every step (CE of a CTC-stage run)
    is left out and named in "left_out".
    """
    panels, left_out = [], []
    for title, ylabel, keys in CURVE_PANELS:
        series = {}
        for key in keys:
            by_step = {r["step"]: float(r[key]) for r in records
                       if isinstance(r.get(key), (int, float)) and math.isfinite(r[key])}
            if not by_step:
                continue
            if not any(by_step.values()):
                left_out.append(key)
                continue
            steps = sorted(by_step)
            series[key] = (np.array(steps), np.array([by_step[s] for s in steps]))
        if series:
            panels.append(dict(title=title, ylabel=ylabel, series=series))
    if not panels:
        known = ", ".join(k for *_, keys in CURVE_PANELS for k in keys)
        raise LogError(f"{source}: no series to draw (expected some of {known})")
    return dict(panels=panels, left_out=left_out)


def draw_curves(d: dict, title: str = ""):
    """curve_data -> a matplotlib Figure, one panel per row sharing the step axis."""
    fig, axes = plt.subplots(len(d["panels"]), 1, figsize=(9, 2.3 * len(d["panels"]) + 0.6), sharex=True,
                             squeeze=False)
    for ax, panel in zip(axes[:, 0], d["panels"]):
        for key, (steps, values) in panel["series"].items():
            valid = key.startswith("valid")
            ax.plot(steps, values, marker="o" if valid else None, ms=3, lw=1.2, label=key)
        if panel["ylabel"] == "nats" and all((v > 0).all() for _, v in panel["series"].values()):
            ax.set_yscale("log")  # CTC starts tens of times above where it ends
        if panel["series"].keys() == {"valid_listen_gap"}:
            ax.axhline(0, color="0.5", lw=0.8, ls="--")  # 0: the decoder ignores the audio
        ax.set(title=panel["title"], ylabel=panel["ylabel"])
        ax.legend(fontsize=8, loc="best")
        ax.grid(alpha=0.3)
    axes[-1, 0].set_xlabel("optimiser step")
    note = f" (all zero, not drawn: {', '.join(d['left_out'])})" if d["left_out"] else ""
    fig.suptitle(title + note, fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.3 / fig.get_figheight()))  # room for the suptitle
    return fig


# ---------------------------------------------------------------------------------------------------------------
# command line

def save_figure(fig, out):
    """Write a PNG atomically (atomic.py: a reader never sees half a picture)."""
    try:
        with atomic_file(out, "wb") as f:
            fig.savefig(f, format="png", dpi=110)
    finally:
        plt.close(fig)


def parse_args(argv=None):
    p = cli.ArgumentParser(
        description="Draw what the model does with one audio file (spectrogram and words, CTC posteriors, the "
                    "decoder's attention), or the training curves of a run's log.jsonl.",
        epilog="Exit status: 0 drawn, 1 the audio or log could not be read or the picture written (one line on "
               "stderr), 2 bad arguments or model.")
    p.add_argument("audio", nargs="?", metavar="AUDIO", help="an audio file (wav, flac, ogg, mp3; any rate)")
    p.add_argument("--log", metavar="RUN/log.jsonl", help="draw this training log's curves instead of an audio file")
    p.add_argument("--out", required=True, metavar="PNG", help="the picture to write (PNG)")
    p.add_argument("--layer", type=int, default=None,
                   help="decoder layer whose attention is drawn, from 0 (default: the mean over all layers)")
    p.add_argument("--start", type=float, default=0.0,
                   help="seconds into the file where the drawn window starts; one window of --window seconds "
                        "(reference: 15 s) is drawn (default: 0)")
    add_decoding_args(p)
    args = p.parse_args(argv)
    if (args.audio is None) == (args.log is None):
        p.error("give either AUDIO or --log RUN/log.jsonl")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    out_dir = os.path.dirname(os.path.abspath(args.out))
    if not os.path.isdir(out_dir):
        print(f"plot.py: error: {args.out}: folder {out_dir} does not exist", file=sys.stderr)
        return 2
    try:
        if args.log:
            fig = draw_curves(curve_data(read_log(args.log), args.log), title=args.log)
        else:
            try:
                transcriber = load(args)
                n_layers = transcriber.model.llm.config.n_layers
                if args.layer is not None and not 0 <= args.layer < n_layers:
                    raise ValueError(f"--layer {args.layer}: the decoder has layers 0 to {n_layers - 1}")
            except ValueError as e:  # the model, tokenizer or options: decode.py's one-line errors
                print(f"plot.py: error: {e}", file=sys.stderr)
                return 2
            name = args.checkpoint or args.model or os.path.relpath(DEFAULT_MODEL)
            d = utterance_data(transcriber, args.audio, args.start, args.layer, name)
            if d["duration"] < d["file_duration"] - 1e-3:
                print(f"plot.py: {args.audio}: {d['file_duration']:.1f} s, drawn {d['offset']:.1f}-"
                      f"{d['offset'] + d['duration']:.1f} s (--start moves the window)", file=sys.stderr)
            fig = draw_utterance(d)
        save_figure(fig, args.out)
    except ValueError as e:  # AudioError, LogError: the input named in the message
        print(f"plot.py: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"plot.py: {args.out}: cannot write ({e.strerror or e})", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
