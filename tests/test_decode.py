"""decode.py and search.py on a tiny random model: the release's decoding against a naive re-implementation,
batching, beam and joint search against their special cases, and the command line on good and bad files."""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

import decode
from ctc import CTCPrefixScorer
from mel import SAMPLE_RATE, batch_log_mel, log_mel_spectrogram
from model import decoder_prompt
import search
from search import (CTCScorer, DecoderScorer, DecoderState, NoRepeatNGram, RepetitionPenalty, greedy_tokens,
                    reference_greedy)
from tokenizer import normalize

from helpers import wave  # the `tiny` model folder is conftest.py's fixture

REPO = Path(__file__).resolve().parent.parent


def transcriber(tiny, **opts):
    return decode.Transcriber(tiny.model, tiny.tok, decode.DecodeOptions(**opts))


def mels(seconds=(2.0, 1.2, 3.1)):
    """Padded log-mels (B, 80, T) and lengths of a few test signals."""
    return batch_log_mel([wave(s, i) for i, s in enumerate(seconds)])


def audio_embeds(tiny, seconds=(2.0, 1.2, 3.1)):
    """Padded audio embeddings (B, T', d) and encoder lengths of a few test signals."""
    _, audio, enc_len = tiny.model.encode(*mels(seconds))
    return audio, enc_len


# ---------------------------------------------------------------------------------------------------------------
# the release's decoding

def naive_reference(llm, audio, max_tokens, penalty=1.15, n=3):
    """recipe §9 without a cache: the whole sequence recomputed at every step, the rules written out plainly."""
    tokens, prompt = [], decoder_prompt(llm, audio, None)[0]  # the prompt as model.py defines it
    while len(tokens) < max_tokens:
        x = prompt if not tokens else torch.cat([prompt, llm.embed(torch.tensor([tokens]))], dim=1)
        logits = llm.logits(llm(x))[0, -1].clone()
        for t in set(tokens):
            logits[t] = logits[t] * penalty if logits[t] < 0 else logits[t] / penalty
        if len(tokens) >= n - 1:
            for i in range(len(tokens) - n + 1):
                if tokens[i:i + n - 1] == tokens[len(tokens) - n + 1:]:
                    logits[tokens[i + n - 1]] = float("-inf")
        token = int(logits.argmax())
        if token == 0:
            break
        tokens.append(token)
    return tokens


@torch.no_grad()
def test_reference_matches_naive_no_cache(tiny):
    for seed, seconds in [(0, 2.0), (1, 4.5)]:
        _, audio, _ = tiny.model.encode(log_mel_spectrogram(wave(seconds, seed))[None])
        want = naive_reference(tiny.llm, audio, 60)
        got = reference_greedy(tiny.llm, audio, 60)
        assert got == want
        plain = greedy_tokens(tiny.llm, audio, None, 60)
        assert got != plain  # the filters did something on this input: the comparison above tests them
    assert len(set(got)) < len(got)  # ids repeat: the penalty had something to act on


def test_filters_match_transformers():
    """One batch of rows with histories of every length 0..11 at once: each row as transformers filters it alone."""
    transformers = pytest.importorskip("transformers")
    g = torch.Generator().manual_seed(0)
    histories = [torch.randint(0, 3, (L,), generator=g).tolist() for L in range(12)]  # repeats and trigrams
    logits = torch.randn(12, 10, generator=g) * 3
    got = logits.clone()
    RepetitionPenalty(1.15).apply(got, histories)
    NoRepeatNGram(3).apply(got, histories)
    for b, tokens in enumerate(histories):
        ids = torch.tensor([tokens], dtype=torch.long)
        want = transformers.RepetitionPenaltyLogitsProcessor(1.15)(ids, logits[b:b + 1].clone())
        want = transformers.NoRepeatNGramLogitsProcessor(3)(ids, want)
        torch.testing.assert_close(got[b], want[0])
    assert torch.isinf(got).sum() >= 3  # trigram bans happened: the comparison covers them


def test_reference_mode_cuts_at_15s_and_silence_is_bounded(tiny):
    t = transcriber(tiny, mode="reference")
    long, first = wave(17.0), wave(17.0)[: 15 * SAMPLE_RATE]
    a, b = t.transcribe([long, first])
    assert a["text"] == b["text"] and a["text"]
    with torch.no_grad():
        _, audio, _ = tiny.model.encode(log_mel_spectrogram(torch.zeros(5 * SAMPLE_RATE))[None])
        tokens = reference_greedy(tiny.llm, audio)
    assert len(tokens) <= 256
    trigrams = [tuple(tokens[i:i + 3]) for i in range(len(tokens) - 2)]
    assert len(trigrams) == len(set(trigrams))  # never a loop: no trigram twice


def test_reference_chunked_joins_chunk_texts(tiny):
    wav = wave(26.5)
    chunked = transcriber(tiny, mode="reference", chunked=True).transcribe([wav])[0]["text"]
    one = transcriber(tiny, mode="reference")
    parts = [one.transcribe([wav[s: s + 15 * SAMPLE_RATE]])[0]["text"] for s in (0, 12 * SAMPLE_RATE, 24 * SAMPLE_RATE)]
    assert chunked == " ".join(parts)


@torch.no_grad()
def test_reference_batched_gives_each_file_the_tokens_it_gets_alone_unmasked(tiny):
    waves = [wave(s, i) for i, s in enumerate([1.3, 2.7, 0.6, 17.0, 2.0])]  # one over 15 s: cut
    got = transcriber(tiny, mode="reference", batch_size=5, max_tokens=30).transcribe(waves)
    for w, r in zip(waves, got):
        _, audio, _ = tiny.model.encode(log_mel_spectrogram(w[: 15 * SAMPLE_RATE])[None])  # alone, no masks
        assert r["text"] == normalize(tiny.tok.decode(naive_reference(tiny.llm, audio, 30)))
    assert len({r["text"] for r in got}) >= 3  # the files differ: a mix-up between them would show
    files = [wave(26.5), waves[1], wave(14.0, 3)]
    chunked = transcriber(tiny, mode="reference", chunked=True, batch_size=4, max_tokens=30).transcribe(files)
    alone = transcriber(tiny, mode="reference", chunked=True, batch_size=1, max_tokens=30).transcribe(files)
    assert [r["text"] for r in chunked] == [r["text"] for r in alone]


# ---------------------------------------------------------------------------------------------------------------
# batching, beam and joint search

@torch.no_grad()
def test_grouped_rows_see_their_own_audio_and_text_only(tiny):
    """DecoderState with 3 rows per utterance (beams sharing the audio slots, text slots interleaved), reordered
    and with an utterance dropped midway: each row's logits equal its whole sequence recomputed alone, no cache."""
    audio, enc_len = audio_embeds(tiny)  # 3 utterances of unequal length: padding masked
    R, g = 3, torch.Generator().manual_seed(0)
    state = DecoderState(tiny.llm, audio, enc_len, max_new=8, group=R)
    state.prefill()
    seqs = [[] for _ in range(3 * R)]  # row -> (utterance, tokens fed)
    utt = [i // R for i in range(3 * R)]
    for step in range(5):
        if step == 2:  # rows swap hypotheses within their utterance
            rows = torch.tensor([1, 0, 0, 5, 3, 4, 6, 8, 7])
            state.reorder(rows)
            seqs, utt = [list(seqs[r]) for r in rows], [utt[r] for r in rows]
        if step == 3:  # utterance 1 leaves; 0 and 2 swap places, rows reordered as they go
            rows = torch.tensor([8, 6, 7, 2, 2, 0])
            state.select(rows)
            seqs, utt = [list(seqs[r]) for r in rows], [utt[r] for r in rows]
        tokens = torch.randint(1, tiny.llm.vocab_size, (len(seqs),), generator=g)
        logits = state.step(tokens)
        for row, t in enumerate(tokens.tolist()):
            seqs[row].append(t)
            u, n = utt[row], int(enc_len[utt[row]])
            prompt = decoder_prompt(tiny.llm, audio[u:u + 1, :n], None)[0]
            x = torch.cat([prompt, tiny.llm.embed(torch.tensor([seqs[row]]))], dim=1)
            want = tiny.llm.logits(tiny.llm(x))[0, -1]
            torch.testing.assert_close(logits[row], want, atol=1e-4, rtol=1e-4)


@torch.no_grad()
@pytest.mark.parametrize("seconds", [(2.0, 1.9, 1.8), (2.0, 1.0, 3.0, 1.1)])  # one run; runs out of order
def test_encoding_in_runs_keeps_input_order_and_equals_alone(tiny, seconds):
    tr = transcriber(tiny)
    wavs = [wave(s, i) for i, s in enumerate(seconds)]
    audio, enc_len, log_probs = tr._encode(wavs, ctc=True)
    for b, w in enumerate(wavs):
        enc, alone, _ = tiny.model.encode(log_mel_spectrogram(w)[None])
        n = alone.shape[1]
        assert int(enc_len[b]) == n
        torch.testing.assert_close(audio[b, :n], alone[0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(log_probs[b, :n], tiny.model.ctc_log_probs(enc)[0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("mode", ["greedy", "beam", "joint", "ctc"])
def test_batched_equals_one_at_a_time(tiny, mode):
    waves = [wave(s, i) for i, s in enumerate([1.3, 2.7, 0.6, 3.9, 2.0])]
    together = transcriber(tiny, mode=mode, batch_size=5, beam_size=3, max_tokens=12).transcribe(waves)
    alone = transcriber(tiny, mode=mode, batch_size=1, beam_size=3, max_tokens=12).transcribe(waves)
    assert [r["text"] for r in together] == [r["text"] for r in alone]
    assert len({r["text"] for r in together}) >= 3  # the items differ: a mix-up between them would show


def beam(tiny, audio, enc_len, k, max_tokens, ctc=None, ctc_weight=0.0, filters=()):
    """Attention beam search, or joint CTC/attention search given a CTC prefix scorer."""
    scorers = [DecoderScorer(tiny.llm, audio, enc_len, 1 - ctc_weight, filters)]
    scorers += [CTCScorer(ctc, ctc_weight)] if ctc is not None else []
    return search.beam_search(scorers, enc_len, k, max_tokens)


class BanIds:
    """A rule written for this test alone, in one place: these ids are never emitted."""

    def __init__(self, ids):
        self.ids = sorted(ids)

    def apply(self, logits, tokens):
        logits[:, self.ids] = float("-inf")


@pytest.mark.parametrize("mode", ["greedy", "beam", "joint"])
def test_a_logit_filter_added_in_one_place_holds_in_every_mode(tiny, monkeypatch, mode):
    """decode.py builds its filters in one function (search.logit_filters); a rule added there is obeyed by
    greedy, beam and joint search: banning every id a mode emitted makes it emit none of them."""
    wavs = [wave(s, i) for i, s in enumerate([1.3, 2.7, 0.6])]
    before = [t for t, _ in transcriber(tiny, mode=mode, beam_size=3, max_tokens=12)._decode_windows(wavs, False)]
    emitted = {t for ids in before for t in ids}
    assert len(emitted) >= 5
    monkeypatch.setattr(decode, "logit_filters", lambda *a: [BanIds(emitted)])
    after = [t for t, _ in transcriber(tiny, mode=mode, beam_size=3, max_tokens=12)._decode_windows(wavs, False)]
    assert all(after) and not emitted & {t for ids in after for t in ids}


def test_beam_of_one_is_greedy(tiny):
    audio, enc_len = audio_embeds(tiny)
    greedy = greedy_tokens(tiny.llm, audio, enc_len, max_tokens=20)
    assert beam(tiny, audio, enc_len, 1, 20) == greedy and all(greedy)


def test_joint_with_ctc_weight_0_is_attention_beam_search(tiny):
    audio, enc_len = audio_embeds(tiny)
    with torch.no_grad():
        lp = tiny.model.ctc_log_probs(tiny.model.encode(*mels())[0])
    for k in (2, 4):
        beam_only = beam(tiny, audio, enc_len, k, 15)
        joint = beam(tiny, audio, enc_len, k, 15, ctc=CTCPrefixScorer(lp, enc_len), ctc_weight=0.0)
        assert joint == beam_only
    assert beam_only != greedy_tokens(tiny.llm, audio, enc_len, 15)  # beam search found other hypotheses here


def spelled(tokens, frames, B=1, V=320, p=0.98):
    """CTC log-probs (B, frames, V) that spell `tokens` with near certainty: each label, then a blank."""
    lp = torch.full((B, frames, V), math.log((1 - p) / (V - 1)))
    path = [t for tok in tokens for t in (tok, 0)]
    path += [0] * (frames - len(path))
    for t, c in enumerate(path):
        lp[:, t, c] = math.log(p)
    return lp


def test_joint_follows_a_confident_ctc(tiny):
    audio, enc_len = audio_embeds(tiny, (1.0,))
    target = [17, 42, 42, 99, 5]  # a repeated label needs its blank in between
    lp = spelled(target, audio.shape[1])
    got = beam(tiny, audio, enc_len, 3, 20, ctc=CTCPrefixScorer(lp, enc_len), ctc_weight=0.8)
    assert got == [target]
    assert beam(tiny, audio, enc_len, 3, 20) != [target]


def test_beam_and_joint_stay_within_the_frames(tiny):
    """Silence: at most one token per encoder frame, whatever the decoder would like to say."""
    silence = torch.zeros(SAMPLE_RATE // 2)  # 0.5 s -> 13 encoder frames
    for mode in ("beam", "joint", "greedy"):
        r = transcriber(tiny, mode=mode, max_tokens=256 if mode != "greedy" else 13).transcribe([silence])[0]
        assert len(tiny.tok.encode(r["text"])) <= 2 * 13


def test_greedy_writes_at_most_one_token_an_encoder_frame_as_beam_search(tiny):
    """A decoder that never says EOS (the random tiny one) stops at the clip's encoder frames, not at --max-tokens:
    the bound beam_search has always had (CTC cannot emit more labels than frames), now greedy's too. The
    release's reference greedy keeps its 256 (recipe §9)."""
    import search
    clip = wave(0.5, 4)
    audio, enc_len, _ = transcriber(tiny)._encode([clip], ctc=False)
    frames = int(enc_len[0])
    for mode in ("greedy", "beam"):
        r = transcriber(tiny, mode=mode, max_tokens=256, beam_size=2).transcribe([clip])[0]
        assert len(tiny.tok.encode(r["text"])) <= frames + 2, (mode, r)  # re-tokenising the text may differ by a piece
    unbounded = search.greedy_tokens(tiny.model.llm, audio, enc_len, 256)[0]
    bounded = search.greedy_tokens(tiny.model.llm, audio, enc_len, 256, frame_bound=True)[0]
    assert len(unbounded) > frames and bounded == unbounded[:frames]  # the same tokens, cut where the bound falls


# ---------------------------------------------------------------------------------------------------------------
# long audio through the Transcriber

def test_long_file_streams_and_matches_in_memory(tiny, tmp_path):
    wav = wave(27.0, 3)
    sf.write(tmp_path / "long.wav", wav.numpy(), SAMPLE_RATE, subtype="FLOAT")
    t = transcriber(tiny, mode="ctc", batch_size=2, timestamps=True)  # random CTC: many short words
    from_file, from_tensor = t.transcribe([str(tmp_path / "long.wav"), wav])
    assert from_file["text"] == from_tensor["text"] and from_file["words"] == from_tensor["words"]
    words = from_file["words"]
    assert " ".join(w["word"] for w in words) == from_file["text"] and len(words) > 20  # three windows' worth
    starts = [w["start"] for w in words]
    assert starts == sorted(starts) and 0 <= starts[0] and words[-1]["end"] <= 27.0 + 0.04


def test_long_file_cut_at_pauses_is_its_pieces_decoded_apart_and_joined(tiny, tmp_path):
    """long_cut="pauses": windows end in the pauses, do not overlap, and the text is each window's text in order,
    as if each piece were a file of its own; the default ("overlap") splices overlapping ones."""
    import longform
    pieces = [wave(5.0 + i, i) for i in range(4)]
    gap = torch.zeros(int(0.4 * SAMPLE_RATE))
    wav = torch.cat([p for piece in pieces for p in (piece, gap)][:-1])  # 5 + 6 + 7 + 8 s and three pauses
    sf.write(tmp_path / "long.wav", wav.numpy(), SAMPLE_RATE, subtype="FLOAT")
    t = transcriber(tiny, mode="ctc", batch_size=2, timestamps=True, window=10.0, long_cut="pauses")
    spans = longform.pause_spans(longform.loudness(longform.frame_power(wav)), wav.shape[0], 10 * SAMPLE_RATE)
    assert len(spans) == 4  # one window a piece: each pause is the latest in its window's second half
    apart = t.transcribe([wav[s:e] for s, e in spans])
    from_file, from_tensor = t.transcribe([str(tmp_path / "long.wav"), wav])
    assert from_file["text"] == from_tensor["text"] == " ".join(r["text"] for r in apart if r["text"])
    starts = [w["start"] for w in from_file["words"]]
    assert starts == sorted(starts) and from_file["words"] == from_tensor["words"]
    overlap = transcriber(tiny, mode="ctc", window=10.0).transcribe([wav])[0]
    assert decode.DecodeOptions().long_cut == "overlap"
    assert overlap["text"] != from_file["text"]  # random CTC: different windows hear different things
    with pytest.raises(ValueError, match="unknown --long-cut 'vad'"):
        transcriber(tiny, long_cut="vad")
    # windows that share nothing need no overlap: a short window is fine with the default overlap there
    short = transcriber(tiny, mode="ctc", window=1.0, overlap=5.0, long_cut="pauses").transcribe([wav[: 3 * SAMPLE_RATE]])
    assert "error" not in short[0]
    with pytest.raises(ValueError, match="--overlap 5 must be between 0 and half of --window 1"):
        transcriber(tiny, window=1.0, overlap=5.0)
    # a waveform with NaN is that item's error, in both cuts, and the others are still done
    bad = wav.clone()
    bad[20 * SAMPLE_RATE] = float("nan")
    for cut in longform.CUTS:
        r = transcriber(tiny, mode="ctc", window=10.0, long_cut=cut).transcribe([bad, wav[: 2 * SAMPLE_RATE]])
        assert "non-finite" in r[0]["error"] and "text" in r[1], (cut, r)


# ---------------------------------------------------------------------------------------------------------------
# the command line

def run_cli(*args, cwd=REPO):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # see conftest.py
    return subprocess.run([sys.executable, str(REPO / "decode.py"), *map(str, args)], capture_output=True,
                          text=True, cwd=cwd, timeout=120, env=env)


def bad_files(d: Path) -> dict:
    """One of each kind of unusable input, by name."""
    files = {"missing": d / "missing.wav", "folder": d / "folder.wav", "empty": d / "empty.wav",
             "not_audio": d / "notes.wav", "zero": d / "zero.wav", "truncated": d / "cut.wav"}
    files["folder"].mkdir()
    files["empty"].write_bytes(b"")
    files["not_audio"].write_text("this is not audio\n")
    sf.write(files["zero"], np.zeros(0, dtype=np.float32), SAMPLE_RATE)
    sf.write(d / "full.wav", wave(2.0).numpy(), SAMPLE_RATE, subtype="PCM_16")
    files["truncated"].write_bytes((d / "full.wav").read_bytes()[:20000])
    return files


def test_cli_bad_inputs_one_line_each_and_others_transcribed(tiny, tmp_path):
    good = [tmp_path / "a.wav", tmp_path / "b.wav"]
    for i, g in enumerate(good):
        sf.write(g, wave(1.5 + i, i).numpy(), SAMPLE_RATE)
    bad = bad_files(tmp_path)
    r = run_cli("--model", tiny.folder, "--max-tokens", 6, "--beam-size", 2, good[0], *bad.values(), good[1])
    assert r.returncode == 1 and "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == len(bad)
    for line, path in zip(lines, bad.values()):
        assert str(path) in line
    out = [line.split("\t") for line in r.stdout.splitlines()]
    assert [o[0] for o in out] == [str(g) for g in good] and all(len(o) == 2 for o in out)


def test_cli_jsonl_timestamps(tiny, tmp_path, capsys):
    sf.write(tmp_path / "a.wav", wave(2.5).numpy(), SAMPLE_RATE)
    sf.write(tmp_path / "b.flac", np.stack([wave(1.0, 1).numpy()] * 2, 1), SAMPLE_RATE)  # stereo flac
    model = ["--model", str(tiny.folder), "--mode", "ctc"]
    assert decode.main([*model, "--format", "jsonl", "--timestamps", str(tmp_path / "a.wav"),
                        str(tmp_path / "b.flac")]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [row["audio"] for row in rows] == [str(tmp_path / "a.wav"), str(tmp_path / "b.flac")]
    for row, seconds in zip(rows, (2.5, 1.0)):
        assert row["text"] and [w["word"] for w in row["words"]] == row["text"].split()
        for w in row["words"]:
            assert 0 <= w["start"] < w["end"] <= seconds + 0.04
    assert decode.main([*model, str(tmp_path / "a.wav")]) == 0  # one file, text: the transcript alone
    assert capsys.readouterr().out == rows[0]["text"] + "\n"


def test_cli_refuses_a_wrong_vocabulary_and_bad_options(tiny, tmp_path, capsys):
    # a release-format checkpoint (every tensor not under llm.) whose CTC head has fewer ids than the tokenizer
    sd = {k: v for k, v in tiny.model.state_dict().items() if not k.startswith("llm.")}
    sd["ctc_head.weight"], sd["ctc_head.bias"] = sd["ctc_head.weight"][:300], sd["ctc_head.bias"][:300]
    torch.save(sd, tmp_path / "model.pt")
    args = ["--checkpoint", tmp_path / "model.pt", "--decoder", tiny.root / "llm", "--tokenizer", tiny.tok.path]
    assert decode.main([*map(str, args), "x.wav"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "300" in err and "320" in err
    for flags, says in [(["--mode", "reference", "--dtype", "bfloat16"], "float32"), (["--ctc-weight", "2"], "[0, 1]"),
                        (["--window", "60", "--overlap", "5"], "positions"), (["--overlap", "9"], "half")]:
        assert decode.main(["--model", str(tiny.folder), *flags, "x.wav"]) == 2
        err = capsys.readouterr().err
        assert says in err and len(err.strip().splitlines()) == 1


def test_cli_without_the_teaching_model_says_how_to_run_the_release(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(decode, "DEFAULT_MODEL", tmp_path / "models" / "teach")  # a clone without the model
    assert decode.main([str(tmp_path / "x.wav")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert "models/teach" in err and "--checkpoint" in err
