"""Hostile input, by kind: bounded memory and time for any header, nothing that blocks, decoding that goes on past
a broken file or model folder, a scorer that is never silently wrong, and a seeded fuzz of decode.py.

Where exit statuses, tracebacks, hangs or memory are the point, the program runs in a subprocess (with a timeout,
and RLIMIT_AS where memory is); the rest call main(argv) in this process. The model is conftest's `tiny`.
"""
import json
import math
import os
import random
import resource
import shutil
import socket
import struct
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import soundfile as sf
import torch
from safetensors.torch import load_file, save_file

import decode
import evaluate
import mel
from fuzz_decode import mutants
from helpers import wave
from mel import SAMPLE_RATE, AudioError
from tokenizer import normalize

ROOT = Path(__file__).resolve().parents[1]
MEMORY_CAP = 3 << 30  # address space for a decoding subprocess: python + torch take ~0.6 GB of it


def run(script, *args, timeout=120, cap=MEMORY_CAP):
    """A real process of one of the repo's programs, its address space capped: (exit status, stdout, stderr)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    limit = (lambda: resource.setrlimit(resource.RLIMIT_AS, (cap, cap))) if cap else None
    r = subprocess.run([sys.executable, str(ROOT / script), *map(str, args)], capture_output=True, text=True,
                       cwd=ROOT, timeout=timeout, env=env, preexec_fn=limit)
    return r.returncode, r.stdout, r.stderr


def one_line_each(stderr: str, names) -> list[str]:
    """The stderr lines, after checking there is exactly one per name, each naming it, and no traceback."""
    assert "Traceback" not in stderr, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == len(names), stderr
    for name in names:
        assert sum(str(name) in line for line in lines) == 1, (name, stderr)
    return lines


def wav_with_rate(path: Path, rate: int, seconds: float = 3.4) -> Path:
    """A 16 kHz PCM-16 wav (3.4 s: ~109 kB) whose header is then made to claim `rate` Hz."""
    sf.write(path, wave(seconds).numpy(), SAMPLE_RATE, subtype="PCM_16")
    b = bytearray(path.read_bytes())
    fmt = b.index(b"fmt ")
    b[fmt + 12: fmt + 16] = struct.pack("<I", rate)
    b[fmt + 16: fmt + 20] = struct.pack("<I", rate * 2)  # byte rate, as a consistent header would have it
    path.write_bytes(bytes(b))
    return path


# --------------------------------------------------------------------------------------------------------------
# 1. bounded resources for any input

ODD_RATES = [44101, 7919, 15991, 22051, 96001, 1001, 767999, 12345, 31999]


def test_resampler_kernel_is_bounded_for_any_rate_and_close_to_the_true_ratio():
    rng = random.Random(0)
    for sr in ODD_RATES + [rng.randint(mel.MIN_RATE, mel.MAX_RATE) for _ in range(300)]:
        orig, new = mel.resample_ratio(sr, SAMPLE_RATE)
        assert mel.kernel_size(orig, new) <= mel.MAX_KERNEL, sr
        assert abs(orig / new * SAMPLE_RATE / sr - 1) < 6e-4, sr  # a time stretch of < 0.06 %
    for sr in (8000, 11025, 16000, 22050, 32000, 44100, 48000, 88200, 96000, 192000):  # exact, as torchaudio
        g = math.gcd(sr, SAMPLE_RATE)
        assert mel.resample_ratio(sr, SAMPLE_RATE) == (sr // g, SAMPLE_RATE // g)


@pytest.mark.parametrize("sr", [44101, 7919, 22051])
def test_odd_rates_resample_a_tone_faithfully(sr):
    t = np.arange(int(0.5 * sr)) / sr
    y = mel.resample(torch.from_numpy(np.sin(2 * np.pi * 1000 * t)).float(), sr, SAMPLE_RATE).numpy()
    assert len(y) == mel.resampled_length(len(t), sr) and abs(len(y) - len(t) * SAMPLE_RATE / sr) <= 1
    orig, new = mel.resample_ratio(sr, SAMPLE_RATE)
    expected = np.sin(2 * np.pi * 1000 * np.arange(len(y)) * orig / new / sr)  # output m is input m * orig / new
    assert np.abs(y - expected)[800:-800].max() < 2e-3
    kernel, _ = mel._sinc_kernel(*mel.resample_ratio(sr, SAMPLE_RATE))
    assert kernel.numel() <= mel.MAX_KERNEL  # gcd-reduced, 44101 Hz would be 16000 x 44115 values (2.8 GB)


def test_rates_outside_the_range_and_endless_headers_are_refused(tmp_path):
    for rate, says in [(999, "999 Hz is outside"), (768001, "768001 Hz is outside"), (1, "1 Hz is outside")]:
        path = wav_with_rate(tmp_path / f"r{rate}.wav", rate, 0.2)
        with pytest.raises(AudioError, match=says) as e:
            mel.load_audio(path)
        assert str(e.value).startswith(f"{path}: ") and "\n" not in str(e.value)
    # a FLAC whose STREAMINFO claims 2**36 samples (1193 h) for one second of audio
    path = tmp_path / "endless.flac"
    sf.write(path, np.zeros(16000, np.float32), 16000, format="FLAC")
    b = bytearray(path.read_bytes())
    v = int.from_bytes(b[18:26], "big") | ((1 << 36) - 1)  # total samples: the low 36 bits of these 8 bytes
    b[18:26] = v.to_bytes(8, "big")
    path.write_bytes(bytes(b))
    with pytest.raises(AudioError, match=r"claims 1193\.0 h of audio, more than the 12 h"):
        mel.load_audio(path)
    assert mel._header_problem(SimpleNamespace(samplerate=16000, frames=13 * 3600 * 16000, extra_info="")) \
        .startswith("header claims 13.0 h")


def test_109kb_wavs_claiming_odd_rates_decode_in_bounded_memory(tiny, tmp_path):
    """A 109 kB wav whose header says 44101 Hz (or 7919 Hz): gcd-reduced rates would need a kernel of many GB."""
    files = [wav_with_rate(tmp_path / f"odd{r}.wav", r) for r in (44101, 7919)]
    sf.write(tmp_path / "good.wav", wave(1.0, 1).numpy(), SAMPLE_RATE)
    files.append(tmp_path / "good.wav")
    assert all(95_000 < f.stat().st_size < 115_000 for f in files[:2])
    rc, out, err = run("decode.py", "--model", tiny.folder, "--mode", "ctc", *files)
    assert rc == 0 and "Traceback" not in err, err
    assert [line.split("\t")[0] for line in out.splitlines()] == [str(f) for f in files]


FLAG_CASES = [
    ("--beam-size", "0"), ("--beam-size", "65"), ("--pre-beam", "nan"), ("--pre-beam", "inf"), ("--pre-beam", "0.5"),
    ("--window", "nan"), ("--window", "inf"), ("--window", "0"), ("--window", "-8"),
    ("--overlap", "nan"), ("--overlap", "-1"), ("--overlap", "8"),  # more than half the 15 s window
    ("--length-penalty", "nan"), ("--length-penalty", "-inf"), ("--length-penalty", "1e9"),
    ("--ctc-weight", "nan"), ("--ctc-weight", "inf"), ("--ctc-weight", "-0.1"),
    ("--batch-size", "0"), ("--batch-size", "100000"), ("--max-tokens", "0"), ("--max-tokens", "1000000"),
    ("--repetition-penalty", "nan"), ("--repetition-penalty", "0"), ("--no-repeat-ngram", "-1"),
]


@pytest.mark.parametrize("flag,value", FLAG_CASES, ids=[f"{f}={v}" for f, v in FLAG_CASES])
def test_numeric_flags_must_be_finite_and_in_range(tiny, capsys, flag, value):
    assert decode.main(["--model", str(tiny.folder), f"{flag}={value}", "x.wav"]) == 2  # = lets "-inf" through
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("decode.py: error: ") and flag in err, err


def test_mistyped_decode_defaults_in_a_model_folder(tiny, tmp_path, capsys):
    folder = shutil.copytree(tiny.folder, tmp_path / "m")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "decode": {"window": "8"}}))
    assert decode.main(["--model", str(folder), "x.wav"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--window '8' is not a number" in err


# --------------------------------------------------------------------------------------------------------------
# 2. nothing hangs: what is not a regular file is refused before it is opened

def test_fifo_device_socket_and_folder_are_refused_up_front(tiny, tmp_path):
    fifo, sock_path, folder = tmp_path / "pipe.wav", tmp_path / "sock.wav", tmp_path / "folder.wav"
    os.mkfifo(fifo)  # opening it for reading would block until a writer comes: forever
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(sock_path))
    folder.mkdir()
    sf.write(tmp_path / "good.wav", wave(1.0).numpy(), SAMPLE_RATE)
    bad = [fifo, "/dev/zero", sock_path, folder]  # /dev/zero: an endless stream of samples
    try:
        rc, out, err = run("decode.py", "--model", tiny.folder, "--mode", "ctc", fifo, "/dev/zero", sock_path,
                           folder, tmp_path / "good.wav", timeout=60)
    finally:
        sock.close()
    assert rc == 1
    lines = one_line_each(err, bad)
    assert "FIFO" in lines[0] and "device" in lines[1] and "socket" in lines[2] and "directory" in lines[3]
    assert out.startswith(f"{tmp_path / 'good.wav'}\t")
    # the scorer's inputs too
    rc, out, err = run("evaluate.py", "--ref", fifo, "--hyp", "/dev/zero", timeout=60, cap=None)
    assert rc == 2 and out == "" and one_line_each(err, [fifo])[0].endswith("is a FIFO, not a regular file")


# --------------------------------------------------------------------------------------------------------------
# 3. decoding goes on: broken streams, a closed pipe, damaged model folders, reference mode's reads

def damaged_streams(d: Path) -> dict:
    """40 s files cut in half, or with 4 kB of garbage in the middle, in the compressed formats libsndfile has."""
    x = (np.random.default_rng(0).standard_normal(40 * SAMPLE_RATE) * 0.1).astype(np.float32)
    out = {}
    for fmt in ("FLAC", "MP3"):
        if fmt not in sf.available_formats():
            continue
        whole = d / f"whole.{fmt.lower()}"
        sf.write(whole, x, SAMPLE_RATE, format=fmt)
        raw = whole.read_bytes()
        n = len(raw)
        out[f"cut {fmt}"] = d / f"cut.{fmt.lower()}"
        out[f"cut {fmt}"].write_bytes(raw[: n // 2])
        out[f"garbage {fmt}"] = d / f"garbage.{fmt.lower()}"
        out[f"garbage {fmt}"].write_bytes(raw[: n // 2] + random.Random(1).randbytes(4000) + raw[n // 2 + 4000:])
    return out


def test_a_stream_that_breaks_mid_file_is_one_line_and_the_others_go_on(tiny, tmp_path, capsys):
    broken = damaged_streams(tmp_path)
    assert broken, "no compressed format to test"
    good = [tmp_path / "a.wav", tmp_path / "b.wav"]
    for i, g in enumerate(good):
        sf.write(g, wave(2.0 + i, i).numpy(), SAMPLE_RATE)
    rc = decode.main(["--model", str(tiny.folder), "--mode", "ctc", str(good[0]), *map(str, broken.values()),
                      str(good[1])])
    out, err = capsys.readouterr()
    assert rc == 1
    for line in one_line_each(err, broken.values()):
        assert "truncated" in line or "cannot decode the audio at" in line, line
    assert [line.split("\t")[0] for line in out.splitlines()] == [str(g) for g in good]


def test_a_closed_stdout_pipe_ends_quietly(tiny, tmp_path):
    files = []
    for i in range(24):
        files.append(tmp_path / f"f{i:02d}.wav")
        sf.write(files[-1], wave(0.3, i).numpy(), SAMPLE_RATE)
    cmd = (f"{sys.executable} decode.py --model {tiny.folder} --mode ctc --batch-size 1 {' '.join(map(str, files))}"
           " | head -c1 >/dev/null; echo ${PIPESTATUS[0]} >&2")
    r = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, cwd=ROOT, timeout=120,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.stderr.strip() == "141", r.stderr  # nothing but the status: no traceback, no message


def damage(folder: Path, kind: str) -> tuple[str, str]:
    """Damage a copy of a model folder one way; returns (the file the message must name, a word it must say)."""
    cfg, dec_cfg = folder / "config.json", folder / "decoder" / "config.json"
    weights, dec_weights = folder / "model.safetensors", folder / "decoder" / "model.safetensors"

    def edit_json(path, fn):
        d = json.loads(path.read_text())
        fn(d)
        path.write_text(json.dumps(d))

    def edit_tensors(path, name, value):
        t = load_file(path)
        t[name] = t[name].clone()
        t[name].view(-1)[3] = value
        save_file(t, path)

    if kind == "truncated weights":
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
        return str(weights), "not a readable safetensors file"
    if kind == "garbage weights":
        weights.write_bytes(random.Random(0).randbytes(5000))
        return str(weights), "not a readable safetensors file"
    if kind == "truncated decoder weights":
        dec_weights.write_bytes(dec_weights.read_bytes()[:1000])
        return str(dec_weights), "not a readable safetensors file"
    if kind == "config not JSON":
        cfg.write_text('{"format": "sozkz-asr", "encoder": {')
        return str(cfg), "not valid JSON"
    if kind == "config a list":
        cfg.write_text("[1, 2]")
        return str(cfg), "expected a JSON object"
    if kind == "config missing vocab_size":
        edit_json(cfg, lambda d: d.pop("vocab_size"))
        return str(cfg), "vocab_size"
    if kind == "encoder dim a string":
        edit_json(cfg, lambda d: d["encoder"].update(dim="64"))
        return str(cfg), "encoder.dim"
    if kind == "encoder heads not dividing":
        edit_json(cfg, lambda d: d["encoder"].update(n_heads=3))
        return str(cfg), "does not divide"
    if kind == "decoder config not JSON":
        dec_cfg.write_text("{'single': 'quotes'}")
        return str(dec_cfg), "not valid JSON"
    if kind == "decoder heads not dividing":
        edit_json(dec_cfg, lambda d: d.update(num_attention_heads=3, num_key_value_heads=3, head_dim=None))
        return str(dec_cfg), "must divide the width"
    if kind == "decoder width a string":
        edit_json(dec_cfg, lambda d: d.update(hidden_size="64"))
        return str(dec_cfg), "hidden_size"
    if kind == "decoder missing layers":
        edit_json(dec_cfg, lambda d: d.pop("num_hidden_layers"))
        return str(dec_cfg), "num_hidden_layers"
    if kind == "NaN weight":
        edit_tensors(weights, "ctc_head.weight", float("nan"))
        return str(weights), "ctc_head.weight holds NaN or inf"
    if kind == "inf decoder weight":
        edit_tensors(dec_weights, "model.norm.weight", float("inf"))
        return str(dec_weights), "model.norm.weight holds NaN or inf"
    raise ValueError(kind)


DAMAGES = ["truncated weights", "garbage weights", "truncated decoder weights", "config not JSON", "config a list",
           "config missing vocab_size", "encoder dim a string", "encoder heads not dividing",
           "decoder config not JSON", "decoder heads not dividing", "decoder width a string",
           "decoder missing layers", "NaN weight", "inf decoder weight"]


@pytest.mark.parametrize("kind", DAMAGES)
def test_a_damaged_model_folder_is_exit_2_and_one_line_naming_the_file(tiny, tmp_path, capsys, kind):
    folder = shutil.copytree(tiny.folder, tmp_path / "m")
    path, says = damage(folder, kind)
    assert decode.main(["--model", str(folder), "x.wav"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and path in err and says in err, err


def test_a_damaged_model_folder_in_a_real_process(tiny, tmp_path):
    folder = shutil.copytree(tiny.folder, tmp_path / "m")
    path, says = damage(folder, "truncated weights")
    rc, out, err = run("decode.py", "--model", folder, "x.wav", cap=None)
    assert rc == 2 and out == "" and says in one_line_each(err, [path])[0]

def test_a_release_checkpoint_holding_nan_is_refused_at_load(tiny, tmp_path, capsys):
    sd = {k: v.clone() for k, v in tiny.model.state_dict().items() if not k.startswith("llm.")}
    sd["encoder.norm.weight"][0] = float("nan")
    torch.save(sd, tmp_path / "model.pt")
    args = ["--checkpoint", tmp_path / "model.pt", "--decoder", tiny.root / "llm", "--tokenizer", tiny.tok.path]
    assert decode.main([*map(str, args), "x.wav"]) == 2
    err = capsys.readouterr().err
    assert "encoder.norm.weight holds NaN or inf" in one_line_each(err, [tmp_path / "model.pt"])[0]


@pytest.mark.parametrize("chunked", [False, True])
def test_reference_mode_reads_only_the_audio_it_uses(tiny, tmp_path, monkeypatch, chunked):
    sr = 44100
    path = tmp_path / "long.wav"
    x = np.concatenate([wave(10, i).numpy() for i in range(6)])  # 60 s at 16 kHz, written at 44.1 kHz
    sf.write(path, mel.resample(torch.from_numpy(x), SAMPLE_RATE, sr).numpy(), sr, subtype="FLOAT")
    reads, real = [], mel._read_mono
    monkeypatch.setattr(mel, "_read_mono", lambda f, first, n, p: reads.append(n) or real(f, first, n, p))
    t = decode.Transcriber(tiny.model, tiny.tok, decode.DecodeOptions(mode="reference", chunked=chunked,
                                                                      max_tokens=8, batch_size=2))
    from_file = t.transcribe([str(path)])[0]
    margin = 4 * 441  # two resampler blocks of 441 input samples each side
    assert reads and max(reads) <= 15 * sr + 2 * margin
    assert sum(reads) <= (15 * sr + 2 * margin) * (5 if chunked else 1)  # chunks at 0, 12, 24, 36, 48 s
    whole = t.transcribe([mel.load_audio(path)])[0]  # the same file in memory: the same text
    assert from_file["text"] == whole["text"]


# --------------------------------------------------------------------------------------------------------------
# 4. the scorer is never silently wrong

def score(capsys, tmp_path, ref: str | bytes, hyp: str | bytes, *flags):
    """evaluate.py --ref/--hyp on two files with exactly these contents -> (status, JSON summary or None, stderr)."""
    paths = []
    for name, text in (("ref.txt", ref), ("hyp.txt", hyp)):
        paths.append(tmp_path / name)
        paths[-1].write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
    code = evaluate.main(["--ref", str(paths[0]), "--hyp", str(paths[1]), "--json", "--bootstrap", "0", *flags])
    out, err = capsys.readouterr()
    return code, json.loads(out) if code == 0 else None, err


def test_an_id_line_without_a_tab_is_that_id_with_an_empty_text(tmp_path, capsys):
    # u2's reference has no tab: it is u2 with no words, not a reason to read both files line by line
    code, s, _ = score(capsys, tmp_path, "u1\tбір екі\nu2\n", "u2\tүш\nu1\tбір екі\n")
    assert code == 0 and (s["n"], s["hits"], s["insertions"], s["ref_words"]) == (2, 2, 1, 2)
    code, s, _ = score(capsys, tmp_path, "u1\tбір екі\nu2\tүш\n", "u2\tүш\nu1\n")  # an empty hypothesis
    assert code == 0 and (s["deletions"], s["hits"]) == (2, 1)


def test_a_byte_order_mark_is_not_part_of_the_first_id_or_word(tmp_path, capsys):
    code, s, err = score(capsys, tmp_path, "\ufeffu1\tбір\nu2\tекі\n", "u1\tбір\nu2\tекі\n")
    assert code == 0 and s["wer"] == 0.0, err
    code, s, _ = score(capsys, tmp_path, "\ufeffбір екі\n", "бір екі\n", "--layout", "lines")
    assert code == 0 and s["wer"] == 0.0 and s["cer"] == 0.0


def test_nfc_makes_one_spelling_of_й_and_ё(tmp_path, capsys):
    decomposed, composed = "ои\u0306ын е\u0308лка И\u0306", "ойын ёлка й"
    assert normalize(decomposed) == composed and normalize(decomposed, drop_tags=True) == composed  # targets too
    code, s, _ = score(capsys, tmp_path, decomposed + "\n", composed + "\n")
    assert code == 0 and s["wer"] == 0.0 and s["cer"] == 0.0


@pytest.mark.parametrize("sep", ["\u2028", "\u2029", "\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\x85", "\r"])
def test_only_newline_and_crlf_end_a_line(tmp_path, capsys, sep):
    ref = f"бір{sep}екі\nүш\r\nтөрт\n"  # three utterances; the separator is inside the first
    code, s, err = score(capsys, tmp_path, ref, "бір екі\nүш\nтөрт\n")
    assert code == 0 and s["n"] == 3 and s["wer"] == 0.0, err


def test_bad_utf8_is_named_file_and_line(tmp_path, capsys):
    code, _, err = score(capsys, tmp_path, b"\xd0\xb1\n\xd0\xb2\nok \xff here\n", "б\nв\nok here\n")
    assert code == 2 and err.strip() == f"evaluate.py: error: {tmp_path / 'ref.txt'}:3: not valid UTF-8 (byte 0xff)"


@pytest.mark.parametrize("row,says", [
    ({"audio_filepath": 5, "text": "x"}, "audio_filepath is int"),
    ({"audio_filepath": "a.wav", "text": None}, "text is NoneType"),
    ({"audio_filepath": "a.wav", "text": ["x"]}, "text is list"),
    ({"audio_filepath": "a.wav", "text": "x", "id": [1]}, "id is list"),
    ({"audio_filepath": "a.wav", "text": "x", "duration": "long"}, 'duration "long" is not a number'),
    ([1, 2], "not a JSON object"),  # the messages of dataset.read_manifest, the one manifest reader
])
def test_mistyped_manifest_fields_are_named_file_and_line(tiny, tmp_path, capsys, row, says):
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"audio_filepath": "ok.wav", "text": "бір"}) + "\n" + json.dumps(row) + "\n")
    assert evaluate.main(["--manifest", str(manifest), "--model", str(tiny.folder)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"{manifest}:2: " in err and says in err, err


@pytest.mark.parametrize("flag,value", [("--bootstrap", "-1"), ("--bootstrap", "1000000000"), ("--worst", "-2"),
                                        ("--seed", "-1")])
def test_the_scorers_count_flags_are_range_checked(tmp_path, capsys, flag, value):
    code, _, err = score(capsys, tmp_path, "бір\n", "бір\n", f"{flag}={value}")
    assert code == 2 and len(err.strip().splitlines()) == 1 and flag in err, err


def test_a_failed_out_write_keeps_the_summary_and_a_failure_is_exit_1(tiny, tmp_path, capsys):
    sf.write(tmp_path / "a.wav", wave(1.0).numpy(), SAMPLE_RATE)
    manifest = tmp_path / "m.jsonl"
    rows = [{"audio_filepath": "a.wav", "text": "бір"}, {"audio_filepath": "gone.wav", "text": "екі"}]
    manifest.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    (tmp_path / "file").write_text("a file, so no folder can be made under it")
    out = tmp_path / "file" / "results.jsonl"
    base = ["--manifest", str(manifest), "--model", str(tiny.folder), "--mode", "ctc", "--bootstrap", "0", "--json"]
    code = evaluate.main([*base, "--out", str(out), "--allow-failures"])
    stdout, err = capsys.readouterr()
    assert code == 2 and json.loads(stdout)["n"] == 2  # the summary was printed before the write failed
    lines = err.strip().splitlines()
    assert "gone.wav" in lines[0] and lines[-1].startswith(f"evaluate.py: error: {out}: cannot write")
    assert len(lines) == 2
    code = evaluate.main(base)  # without --allow-failures: the report, then exit 1
    stdout, err = capsys.readouterr()
    assert code == 1 and json.loads(stdout)["failed"] == 1 and "1 of 2 utterances failed" in err


# --------------------------------------------------------------------------------------------------------------
# 5. a seeded fuzz of decode.py

def test_fuzz_200_mutated_wavs_in_process_under_a_memory_cap(tiny, tmp_path):
    argv = ["--model", tiny.folder, "--n", 200, "--seed", 0, "--dir", tmp_path / "m", "--limit-gb", MEMORY_CAP / 2**30]
    r = subprocess.run([sys.executable, str(ROOT / "tests" / "fuzz_decode.py"), *map(str, argv)], capture_output=True,
                       text=True, cwd=ROOT, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr[-3000:]
    report = json.loads(r.stdout)
    transcribed, kinds = [], set()
    for call in report["calls"]:
        assert call["exception"] is None, call["exception"]
        assert call["rc"] in (0, 1) and call["seconds"] < 20 and call["fd2"] == "", call
        paths = list(call["what"])
        out, err = call["stdout"].splitlines(), call["stderr"].splitlines()
        assert call["rc"] == (1 if err else 0)
        for line in err:  # one line per failed file, naming it first
            assert line.startswith("decode.py: ") and line.split(": ")[1] in paths, line
            kinds.add(line.split(": ", 2)[2].split(" (")[0][:20])
        done = [line.split("\t")[0] for line in out] + [line.split(": ")[1] for line in err]
        assert sorted(done) == sorted(paths)  # every mutant answered exactly once: none lost, none twice
        transcribed += [call["what"][p] for p in done[: len(out)]]
    assert report["peak_rss_mb"] < 1500
    assert any("sample rate=44101" in w for w in transcribed)  # the odd rate was decoded, not refused or fatal
    assert len(kinds) >= 4 and len(transcribed) >= 50  # the mutations reach both refusals and transcripts


def test_fuzz_mutants_through_the_command_line(tiny, tmp_path):
    files = []
    for k, (_, data) in enumerate(mutants(12, seed=1)):
        files.append(tmp_path / f"c{k:02d}.wav")
        files[-1].write_bytes(data)
    rc, out, err = run("decode.py", "--model", tiny.folder, "--mode", "ctc", *files, timeout=60)
    assert rc in (0, 1) and "Traceback" not in err
    failed = err.strip().splitlines()
    assert rc == (1 if failed else 0) and all(line.startswith("decode.py: ") for line in failed)
    named = [line.split("\t")[0] for line in out.splitlines()] + [line.split(": ")[1] for line in failed]
    assert sorted(named) == sorted(map(str, files))
