"""Tests for mel.py: log-mel against librosa, resampling against analytic and independent references,
load_audio across formats, every bad input, and batching.

librosa and scipy (a librosa dependency) are dev-only references, imported inside the tests.
"""

import math
import shutil
import subprocess

import numpy as np
import pytest
import soundfile as sf
import torch

import mel
from mel import AudioError


def librosa_log_mel(y: np.ndarray) -> np.ndarray:
    """The reference: librosa's HTK, unnormalised mel power, natural log clamped at 1e-10."""
    librosa = pytest.importorskip("librosa")
    m = librosa.feature.melspectrogram(
        y=y, sr=16000, n_fft=400, hop_length=160, n_mels=80, htk=True, norm=None,
        center=True, power=2.0, pad_mode="reflect", fmin=0, fmax=8000,
    )
    return np.log(np.maximum(m, 1e-10))


def assert_close_to_librosa(y: np.ndarray):
    ours = mel.log_mel_spectrogram(torch.from_numpy(y))
    assert ours.dtype == torch.float32
    diff = np.abs(ours.numpy() - librosa_log_mel(y))  # shapes must agree for this to broadcast sanely
    assert ours.shape == (80, 1 + len(y) // 160)
    assert diff.max() <= 5e-3 and diff.mean() <= 1e-4, (diff.max(), diff.mean())


def tones(t: np.ndarray) -> np.ndarray:
    """A test signal well inside every passband used here: 0.3 sin(440 Hz) + 0.2 sin(1 kHz + 1)."""
    return 0.3 * np.sin(2 * np.pi * 440 * t) + 0.2 * np.sin(2 * np.pi * 1000 * t + 1.0)


# ---------------------------------------------------------------- features

def test_constants_and_frame_counts():
    assert (mel.N_SAMPLES, mel.N_FRAMES) == (240000, 1500)
    assert mel.log_mel_spectrogram(torch.zeros(mel.N_SAMPLES)).shape == (80, 1501)  # 15 s -> 1501 frames
    for n in (201, 399, 1599, 1600, 1601, 16159, 16160, 240001):
        assert mel.n_frames(n) == 1 + n // 160
        assert mel.log_mel_spectrogram(torch.randn(n)).shape == (80, mel.n_frames(n))


def test_librosa_hann_is_periodic_like_torch():
    librosa = pytest.importorskip("librosa")
    np.testing.assert_allclose(librosa.filters.get_window("hann", 400, fftbins=True), torch.hann_window(400).numpy(), atol=1e-6)
    assert not np.allclose(torch.hann_window(400, periodic=False).numpy(), torch.hann_window(400).numpy(), atol=1e-4)


def test_mel_filters_match_librosa_htk():
    librosa = pytest.importorskip("librosa")
    ref = librosa.filters.mel(sr=16000, n_fft=400, n_mels=80, fmin=0, fmax=8000, htk=True, norm=None)
    ours = mel.mel_filters()
    assert ours.shape == (80, 201) and ours.dtype == torch.float32
    np.testing.assert_allclose(ours.numpy(), ref, atol=1e-6)
    assert mel.mel_filters() is ours  # cached


def test_log_mel_matches_librosa_on_white_noise():
    y = (0.1 * np.random.default_rng(0).standard_normal(3 * 16000)).astype(np.float32)
    assert_close_to_librosa(y)


def test_log_mel_matches_librosa_on_kazakh_speech(tmp_path):
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed (apt-get install espeak-ng): no synthetic Kazakh speech")
    path = tmp_path / "kk.wav"
    subprocess.run(["espeak-ng", "-v", "kk", "-w", str(path), "Сәлеметсіз бе, бүгін ауа райы жақсы"], check=True, capture_output=True)
    assert sf.info(str(path)).samplerate != 16000  # so the resampler is on the path too
    y = mel.load_audio(path).numpy()
    assert len(y) > 16000 and np.abs(y).max() > 0.1  # real speech, not silence
    assert_close_to_librosa(y)


def test_log_mel_handles_leading_dims():
    x = torch.randn(2, 3, 4000)
    out = mel.log_mel_spectrogram(x)
    assert out.shape == (2, 3, 80, 26)
    torch.testing.assert_close(out[1, 2], mel.log_mel_spectrogram(x[1, 2]), rtol=0, atol=1e-5)


def test_log_mel_of_silence_is_the_floor():
    assert torch.all(mel.log_mel_spectrogram(torch.zeros(1600)) == math.log(1e-10))


def test_batch_log_mel_items_equal_unbatched():
    g = torch.Generator().manual_seed(0)
    waves = [torch.randn(n, generator=g) for n in (16000, 48017, 401, 32000)]
    mels, lengths = mel.batch_log_mel(waves)
    assert mels.shape == (4, 80, mel.n_frames(48017)) and lengths.dtype == torch.long
    assert lengths.tolist() == [mel.n_frames(len(w)) for w in waves]
    for m, n, w in zip(mels, lengths, waves):
        assert torch.equal(m[:, :n], mel.log_mel_spectrogram(w))  # zero-padding before the stft would break the last frames
        assert torch.all(m[:, n:] == 0.0)


# ---------------------------------------------------------------- resampling

def direct_resample(x: np.ndarray, orig_sr: int, new_sr: int, width: int = 6, rolloff: float = 0.99) -> np.ndarray:
    """y[m] = sum_n x[n] h(n/orig - m/new), evaluated one output at a time in float64 (no polyphase, no conv)."""
    g = math.gcd(orig_sr, new_sr)
    orig, new = orig_sr // g, new_sr // g
    cutoff = min(orig, new) * rolloff
    n = np.arange(len(x))
    out = np.empty(-(-len(x) * new // orig))
    for m in range(len(out)):
        t = np.clip((n / orig - m / new) * cutoff, -width, width)
        out[m] = np.sum(x * np.sinc(t) * np.cos(t * np.pi / width / 2) ** 2) * cutoff / orig
    return out


@pytest.mark.parametrize("orig_sr", [44100, 8000, 48000, 22050])
def test_resample_matches_the_windowed_sinc_formula(orig_sr):
    x = np.random.default_rng(1).standard_normal(orig_sr // 20)  # 50 ms of white noise: every frequency present
    ours = mel.resample(torch.from_numpy(x).float(), orig_sr, 16000).double().numpy()
    ref = direct_resample(x, orig_sr, 16000)
    assert ours.shape == ref.shape
    np.testing.assert_allclose(ours, ref, atol=1e-5)


@pytest.mark.parametrize("orig_sr,freqs,tol", [(44100, [440, 1000, 2000, 3000], 1e-3), (8000, [300, 700, 1000, 1500], 2e-3)])
def test_resample_pure_tones(orig_sr, freqs, tol):
    t = np.arange(orig_sr) / orig_sr  # 1 s
    for f in freqs:
        y = mel.resample(torch.from_numpy(np.sin(2 * np.pi * f * t + 0.3)).float(), orig_sr, 16000).numpy()
        assert len(y) == 16000
        expected = np.sin(2 * np.pi * f * np.arange(16000) / 16000 + 0.3)  # the same tone sampled at 16 kHz
        inner = slice(1600, -1600)  # away from the zero-padded edges
        assert np.abs(y - expected)[inner].max() < tol, f


def test_resample_removes_what_would_alias():
    t = np.arange(44100) / 44100
    y = mel.resample(torch.from_numpy(np.sin(2 * np.pi * 12000 * t)).float(), 44100, 16000).numpy()
    assert np.abs(y[1600:-1600]).max() < 5e-3  # without the low-pass it folds to 4 kHz at full amplitude


def test_resample_agrees_with_scipy_resample_poly():
    signal = pytest.importorskip("scipy.signal")
    for orig_sr in (44100, 8000):
        x = np.random.default_rng(2).standard_normal(orig_sr)
        x = signal.sosfiltfilt(signal.butter(10, 2000, fs=orig_sr, output="sos"), x).copy()  # below 2 kHz: both filters pass it
        g = math.gcd(orig_sr, 16000)
        ref = signal.resample_poly(x, 16000 // g, orig_sr // g)  # Kaiser-windowed polyphase, an independent design
        ours = mel.resample(torch.from_numpy(x).float(), orig_sr, 16000).double().numpy()
        err = (ours - ref)[500:-500]
        assert np.sqrt(np.mean(err**2) / np.mean(ref[500:-500] ** 2)) < 5e-3


def test_resample_shapes():
    x = torch.randn(2, 3, 4410)
    y = mel.resample(x, 44100, 16000)
    assert y.shape == (2, 3, 1600)
    torch.testing.assert_close(y[1, 2], mel.resample(x[1, 2], 44100, 16000))
    assert mel.resample(x, 16000, 16000) is x
    assert mel.resample(torch.randn(1001), 8000, 16000).shape == (2002,)
    assert mel.resample(torch.randn(1000), 48000, 16000).shape == (334,)  # ceil(1000 / 3)


# ---------------------------------------------------------------- load_audio

FORMATS = [  # (id, sample rate, channels, soundfile format, subtype, tolerance vs the analytic signal)
    ("stereo", 16000, 2, "WAV", "PCM_16", 1e-4),
    ("8k", 8000, 1, "WAV", "PCM_16", 1e-3),
    ("44k1", 44100, 1, "WAV", "PCM_16", 1e-3),
    ("pcm24", 16000, 1, "WAV", "PCM_24", 1e-6),
    ("float", 16000, 1, "WAV", "FLOAT", 1e-7),
    ("flac", 16000, 1, "FLAC", "PCM_16", 1e-4),
    ("ogg", 16000, 1, "OGG", "VORBIS", 3e-2),  # lossy
    ("opus48k", 48000, 1, "OGG", "OPUS", 5e-2),  # lossy
]


@pytest.mark.parametrize("name,sr,channels,fmt,subtype,tol", FORMATS, ids=[f[0] for f in FORMATS])
def test_load_audio_formats(tmp_path, name, sr, channels, fmt, subtype, tol):
    if subtype not in sf.available_subtypes(fmt):
        pytest.skip(f"this libsndfile cannot write {fmt}/{subtype}")
    seconds = 1.5
    t = np.arange(int(seconds * sr)) / sr
    data = np.stack([tones(t), 0.5 * tones(t)], axis=1) if channels == 2 else tones(t)  # mean of stereo = 0.75 x
    path = tmp_path / f"{name}.{fmt.lower()}"
    sf.write(str(path), data, sr, format=fmt, subtype=subtype)
    wav = mel.load_audio(path)
    assert wav.dtype == torch.float32 and wav.ndim == 1
    assert len(wav) == -(-len(t) * 16000 // sr)  # ceil(n * 16000 / sr)
    expected = tones(np.arange(len(wav)) / 16000) * (0.75 if channels == 2 else 1.0)
    inner = slice(1600, -1600)  # resampler edges and codec start-up
    assert np.abs(wav.numpy() - expected)[inner].max() < tol


def test_load_audio_mp3(tmp_path):
    if "MP3" not in sf.available_formats():
        pytest.skip("this libsndfile has no MP3 support")
    path = tmp_path / "a.mp3"
    sf.write(str(path), tones(np.arange(24000) / 16000), 16000, format="MP3")
    wav = mel.load_audio(path)
    assert wav.shape == (24000,) and 0.4 < wav.abs().max() < 0.6  # peak of tones() is ~0.5


def bad_wavs(tmp_path):
    """(path, what the message must mention) for every kind of unusable input."""
    good = tmp_path / "good.wav"
    sf.write(str(good), np.zeros(16000, np.float32) + 0.1, 16000, subtype="PCM_16")
    raw = good.read_bytes()
    (tmp_path / "text.wav").write_text("not audio at all\n")
    (tmp_path / "cut.wav").write_bytes(raw[: 44 + 1000])  # header promises 32000 data bytes
    (tmp_path / "header_only.wav").write_bytes(raw[:44])
    sf.write(str(tmp_path / "empty.wav"), np.zeros(0, np.float32), 16000)
    nan = np.full(800, 0.1, np.float32)
    nan[400] = np.nan
    sf.write(str(tmp_path / "nan.wav"), nan, 16000, subtype="FLOAT")
    (tmp_path / "folder.wav").mkdir()
    return [
        (tmp_path / "missing.wav", "no such file"),
        (tmp_path / "folder.wav", "directory"),
        (tmp_path / "text.wav", "not readable"),
        (tmp_path / "cut.wav", "truncated"),
        (tmp_path / "header_only.wav", "truncated"),
        (tmp_path / "empty.wav", "no samples"),
        (tmp_path / "nan.wav", "non-finite"),
    ]


def test_load_audio_rejects_bad_input(tmp_path):
    for path, problem in bad_wavs(tmp_path):
        with pytest.raises(AudioError) as e:
            mel.load_audio(path)
        assert isinstance(e.value, ValueError)
        msg = str(e.value)
        assert msg.startswith(f"{path}: ") and problem in msg and "\n" not in msg, msg


def test_load_audio_accepts_a_streamed_wav(tmp_path):
    """A wav written to a pipe has 0xFFFFFFFF sizes: whole, not truncated."""
    path = tmp_path / "stream.wav"
    sf.write(str(path), tones(np.arange(16000) / 16000), 16000, subtype="PCM_16")
    raw = bytearray(path.read_bytes())
    raw[4:8] = raw[40:44] = b"\xff\xff\xff\xff"
    path.write_bytes(bytes(raw))
    assert mel.load_audio(path).shape == (16000,)
