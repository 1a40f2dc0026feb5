"""data/prepare_synthetic.py stages `ood` (our own sentences, unseen voice settings) and `degraded` (test copies)."""
import importlib.util
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

SCRIPT = Path(__file__).resolve().parents[1] / "data" / "prepare_synthetic.py"
if "prepare_synthetic" not in sys.modules:
    spec = importlib.util.spec_from_file_location("prepare_synthetic", SCRIPT)
    sys.modules["prepare_synthetic"] = importlib.util.module_from_spec(spec)  # dataclasses look their module up here
    spec.loader.exec_module(sys.modules["prepare_synthetic"])
ps = sys.modules["prepare_synthetic"]


def test_read_ood_sentences_reports_bad_lines(tmp_path):
    path = tmp_path / "s.txt"
    path.write_text("# a comment\nБүгін сағат 9:30 жиналыс бар.\n\nOpen the file\nБүгін сағат 9:30 жиналыс бар!\n"
                    "Біз 5мин күттік.\nМен 2015 жылы туғанмын.\n", encoding="utf-8")
    sentences, problems = ps.read_ood_sentences(path)
    assert sentences == ["бүгін сағат 9 30 жиналыс бар", "мен 2015 жылы туғанмын"]
    assert [p.split(": ")[0] for p in problems] == [f"{path}:4", f"{path}:5", f"{path}:6"]
    assert "Kazakh" in problems[0] and "earlier line" in problems[1] and "5мин" in problems[2]


def test_shipped_ood_sentences():
    sentences, problems = ps.read_ood_sentences(ps.OOD_SENTENCES)
    assert problems == [] and len(sentences) >= 150
    assert sum(bool(re.search(r"\d", s)) for s in sentences) >= 100  # numbers, dates, times, ordinals
    assert sum("сағат" in s for s in sentences) >= 10 and sum("жылы" in s or "жылғы" in s for s in sentences) >= 10
    assert "written for this test" in ps.OOD_SENTENCES.read_text(encoding="utf-8").split("\n", 3)[0] + \
        ps.OOD_SENTENCES.read_text(encoding="utf-8").split("\n", 3)[1]


def test_plan_ood_uses_settings_training_never_saw():
    utts = ps.plan_ood([f"сөз {i}" for i in range(200)], "f3", seed=0)
    assert {u.voice for u in utts} == {"f3"} and [u.index for u in utts] == list(range(200))
    assert all(not 130 <= u.speed <= 190 and not 30 <= u.pitch <= 70 for u in utts)  # training's default ranges
    assert {u.speed < 130 for u in utts} == {True, False} and {u.pitch < 30 for u in utts} == {True, False}
    assert utts == ps.plan_ood([f"сөз {i}" for i in range(200)], "f3", seed=0)
    assert utts != ps.plan_ood([f"сөз {i}" for i in range(200)], "f3", seed=1)


def write_test_wav(path: Path) -> np.ndarray:
    """0.5 s of 1 kHz + 100 Hz + 3.9 kHz tones then 0.2 s of silence, int16 at 16 kHz -> the float samples."""
    t = np.arange(8000) / 16000
    x = 0.3 * np.sin(2 * np.pi * 1000 * t) + 0.1 * np.sin(2 * np.pi * 100 * t) + 0.1 * np.sin(2 * np.pi * 3900 * t)
    x = np.concatenate([x, np.zeros(3200)])
    sf.write(str(path), x, 16000, subtype="PCM_16")
    return sf.read(str(path), dtype="float32")[0]


def band_power(x: np.ndarray, rate: int, lo: float, hi: float) -> float:
    spectrum, freqs = np.abs(np.fft.rfft(x)) ** 2, np.fft.rfftfreq(len(x), 1 / rate)
    return float(spectrum[(freqs >= lo) & (freqs <= hi)].sum())


def test_gain_and_noise():
    x = np.sin(np.linspace(0, 100, 16000)).astype(np.float32)
    assert np.allclose(ps.gain(x, -20), x / 10, atol=1e-7) and ps.gain(x, 12).max() > 3.9  # not clipped
    y = ps.add_noise(x, 10, np.random.default_rng(0))
    snr = 10 * np.log10(np.mean(x.astype(np.float64) ** 2) / np.mean((y - x).astype(np.float64) ** 2))
    assert y.dtype == np.float32 and abs(snr - 10) < 0.2
    assert np.array_equal(y, ps.add_noise(x, 10, np.random.default_rng(0)))


def test_float_wavs_carry_no_time_stamp(tmp_path):
    """libsndfile's PEAK chunk holds the time of writing: two rebuilds seconds apart wrote different bytes for the
    same samples. write_float_wav zeroes it; the samples are untouched."""
    y = (0.3 * np.random.default_rng(0).standard_normal(4000)).astype(np.float32)
    sf.write(str(tmp_path / "plain.wav"), y, 16000, subtype="FLOAT", format="WAV")
    plain = (tmp_path / "plain.wav").read_bytes()
    at = plain.find(b"PEAK")
    assert at > 0 and plain[at + 12: at + 16] != bytes(4)  # libsndfile's own: the time now, not zero
    ps.write_float_wav(tmp_path / "ours.wav", y, 16000)
    ours = (tmp_path / "ours.wav").read_bytes()
    assert ours.find(b"PEAK") == at and ours[at + 12: at + 16] == bytes(4)
    assert ours[: at + 12] == plain[: at + 12] and ours[at + 16:] == plain[at + 16:]  # only the stamp differs
    back, rate = sf.read(str(tmp_path / "ours.wav"), dtype="float32")
    assert rate == 16000 and np.array_equal(back, y)


@pytest.mark.skipif(shutil.which("sox") is None, reason="needs sox")
def test_degrade_each_kind(tmp_path):
    x = write_test_wav(tmp_path / "u.wav")
    for kind in ps.DEGRADATIONS:
        ps.degrade(tmp_path / "u.wav", tmp_path / kind / "u.wav", kind, seed=0)
    quiet, rate = sf.read(str(tmp_path / "quiet/u.wav"), dtype="float32")
    assert rate == 16000 and sf.info(str(tmp_path / "quiet/u.wav")).subtype == "FLOAT"
    assert np.allclose(quiet, x / 10, atol=1e-7)
    loud = sf.read(str(tmp_path / "loud/u.wav"), dtype="float32")[0]
    assert sf.info(str(tmp_path / "loud/u.wav")).subtype == "FLOAT" and np.abs(loud).max() > 1.0  # unclipped
    assert np.allclose(loud, x * 10 ** 0.6, atol=1e-5)
    noisy = sf.read(str(tmp_path / "noise10/u.wav"), dtype="float32")[0]
    snr = 10 * np.log10(np.mean(x.astype(np.float64) ** 2) / np.mean((noisy - x).astype(np.float64) ** 2))
    assert abs(snr - 10) < 0.3
    tel, rate = sf.read(str(tmp_path / "tel8k/u.wav"), dtype="float32")
    assert rate == 8000 and abs(len(tel) - len(x) / 2) <= 2
    kept = band_power(tel, 8000, 900, 1100)
    assert band_power(tel, 8000, 80, 120) < 1e-3 * kept  # 100 Hz: below the band, removed
    assert band_power(tel, 8000, 3800, 4000) < 1e-3 * kept  # 3.9 kHz: above the band, removed

    ps.degrade(tmp_path / "u.wav", tmp_path / "again" / "u.wav", "noise10", seed=0)
    ps.degrade(tmp_path / "u.wav", tmp_path / "tel_again" / "u.wav", "tel8k", seed=0)
    assert (tmp_path / "again/u.wav").read_bytes() == (tmp_path / "noise10/u.wav").read_bytes()  # seeded
    assert (tmp_path / "tel_again/u.wav").read_bytes() == (tmp_path / "tel8k/u.wav").read_bytes()  # no dither
    with pytest.raises(ValueError, match="no degradation"):
        ps.degrade(tmp_path / "u.wav", tmp_path / "x" / "u.wav", "reverb", seed=0)
    assert not list(tmp_path.rglob("*.tmp"))


@pytest.mark.skipif(shutil.which("sox") is None, reason="needs sox")
def test_degraded_stage_writes_four_manifests(tmp_path, capsys):
    (tmp_path / "wavs" / "test").mkdir(parents=True)
    write_test_wav(tmp_path / "wavs/test/000000_ab.wav")
    row = {"audio_filepath": "wavs/test/000000_ab.wav", "text": "сәлем", "duration": 0.7, "voice": "f3"}
    (tmp_path / "test.jsonl").write_text(json.dumps(row, ensure_ascii=False) + "\n", encoding="utf-8")
    assert ps.main(["degraded", "--out", str(tmp_path)]) == 0
    for kind in ("quiet", "loud", "tel8k", "noise10"):
        (got,) = [json.loads(line) for line in (tmp_path / f"test_{kind}.jsonl").read_text().splitlines()]
        assert got["audio_filepath"] == f"wavs/test_{kind}/000000_ab.wav" and got["degradation"] == kind
        assert got["text"] == "сәлем" and got["duration"] == pytest.approx(0.7, abs=1e-3)
        assert (tmp_path / got["audio_filepath"]).exists()

    (tmp_path / "test.jsonl").write_text('{"text": "no audio"}\n', encoding="utf-8")
    assert ps.main(["degraded", "--out", str(tmp_path)]) == 1
    assert capsys.readouterr().err.strip().splitlines()[-1] == \
        f"error: {tmp_path / 'test.jsonl'}:1: not a manifest line (a JSON object with audio_filepath)"


def has_espeak_kk() -> bool:
    if shutil.which("espeak-ng") is None or shutil.which("sox") is None:
        return False
    return "trk/kk" in subprocess.run(["espeak-ng", "--voices=kk"], capture_output=True, text=True).stdout


@pytest.mark.skipif(not has_espeak_kk(), reason="needs espeak-ng with its kk voice, and sox")
def test_ood_stage(tmp_path):
    sentences = tmp_path / "s.txt"
    sentences.write_text("# test\nСабақ сағат 8:30 басталады.\nАйгүл 3-ші қабатта тұрады.\n", encoding="utf-8")
    assert ps.main(["ood", "--out", str(tmp_path / "synth"), "--sentences", str(sentences)]) == 0
    rows = [json.loads(line) for line in (tmp_path / "synth/ood.jsonl").read_text().splitlines()]
    assert [r["text"] for r in rows] == ["сабақ сағат 8 30 басталады", "айгүл 3 ші қабатта тұрады"]
    assert [r["spoken"] for r in rows] == ["сабақ сағат сегіз отыз басталады", "айгүл үшінші қабатта тұрады"]
    for r in rows:
        assert r["audio_filepath"].startswith("ood/") and (tmp_path / "synth" / r["audio_filepath"]).exists()
        assert r["voice"] == "f3" and not 130 <= r["speed"] <= 190 and not 30 <= r["pitch"] <= 70
