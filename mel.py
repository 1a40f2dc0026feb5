"""Audio in, log-mel features out: the front end of the SozKZ ASR model (SPEC §1).

load_audio() reads any file libsndfile can (wav 16/24-bit/float, flac, ogg vorbis/opus, mp3), averages the
channels and resamples to 16 kHz. log_mel_spectrogram() computes the features the release was trained on:
torchaudio's `MelSpectrogram(sample_rate=16000, n_fft=400, hop_length=160, n_mels=80)` with every other argument
at its default, then `log(clamp(mel, 1e-10))`. Both are re-derived here on plain torch.stft / conv1d, so torchaudio
is never needed; tests/test_mel.py checks them against librosa and against analytic references.

normalize_level() is an optional step before the log-mel (off for the release; a model folder turns it on).
Not here: Whisper's features (log10, max-8 clamp, (x+4)/4), mean/variance normalisation, augmentation, VAD.
"""

import math
import os
import re
from functools import lru_cache

import numpy as np
import soundfile as sf
import torch
import torch.nn.functional as F

SAMPLE_RATE = 16000
N_FFT = 400  # 25 ms analysis window
HOP_LENGTH = 160  # 10 ms between frames
N_MELS = 80
F_MIN, F_MAX = 0.0, SAMPLE_RATE / 2  # 0 .. 8000 Hz
LOG_FLOOR = 1e-10  # power is clamped here before the natural log
CHUNK_SECONDS = 15
N_SAMPLES = CHUNK_SECONDS * SAMPLE_RATE  # 240000 samples in a training window
N_FRAMES = N_SAMPLES // HOP_LENGTH  # 1500 frames: the stft gives 1501, training keeps the first 1500
FRAMES_PER_SECOND = SAMPLE_RATE // HOP_LENGTH  # 100 mel frames per second
LOWPASS_WIDTH = 6  # resampler: zero crossings of the sinc on each side (torchaudio's default)
ROLLOFF = 0.99  # resampler: cutoff as a fraction of the lower Nyquist (torchaudio's default)
LEVEL_DBFS = -20.0  # normalize_level's target RMS (1.0 = 0 dBFS): about the teaching data's level (median -20.8)
MAX_LEVEL_GAIN_DB = 60.0  # normalize_level never amplifies more than this: near-silence stays near-silent


class AudioError(ValueError):
    """A file that is not usable audio; str(e) == "<path>: <problem>"."""


def load_audio(path, sr: int = SAMPLE_RATE) -> torch.Tensor:
    """Read an audio file as a mono float32 waveform (samples,) at `sr` Hz (mean over channels, then resample)."""
    path = str(path)
    if not os.path.exists(path):
        raise AudioError(f"{path}: no such file")
    if os.path.isdir(path):
        raise AudioError(f"{path}: is a directory, not an audio file")
    try:
        with sf.SoundFile(path) as f:
            wav = f.read(dtype="float32", always_2d=True)  # (samples, channels), ints scaled to [-1, 1)
            orig_sr, promised, log = f.samplerate, f.frames, f.extra_info
    except (RuntimeError, OSError) as e:  # sf.LibsndfileError is a RuntimeError
        problem = " ".join(str(getattr(e, "error_string", e)).split())
        raise AudioError(f"{path}: not readable as audio ({problem})") from None
    cut = wav_shortfall(log)
    if cut or len(wav) < promised:  # libsndfile quietly returns what is there; a cut download is not a clip
        have, want = cut or (len(wav), promised)
        raise AudioError(f"{path}: truncated (header promises {want} {'bytes' if cut else 'frames'}, file has {have})")
    if len(wav) == 0:
        raise AudioError(f"{path}: contains no samples")
    if not np.isfinite(wav).all():
        raise AudioError(f"{path}: contains non-finite samples (NaN or inf)")
    return resample(torch.from_numpy(wav.mean(axis=1)), orig_sr, sr)  # (samples,)


def wav_shortfall(log: str):
    """(bytes present, bytes promised) when a WAV's data chunk is cut short, from libsndfile's header log; else None."""
    m = re.search(r"^data : (\d+) \(should be (\d+)\)", log, re.M)
    if m is None:
        return None
    promised, present = int(m[1]), int(m[2])
    # 0xFFFFFFFF (or 0, which libsndfile logs without "should be") marks a streamed wav whose size was never known
    return (present, promised) if present < promised < 0xFFFFFFFF else None


@lru_cache(maxsize=None)
def _sinc_kernel(orig: int, new: int) -> tuple[torch.Tensor, int]:
    """Polyphase kernels (new, 1, 2*width + orig) of a Hann-windowed sinc low-pass, for gcd-reduced rates."""
    cutoff = min(orig, new) * ROLLOFF  # below the lower Nyquist, so downsampling does not alias
    width = math.ceil(LOWPASS_WIDTH * orig / cutoff)  # input samples each side covering LOWPASS_WIDTH zero crossings
    # output phase j (time j/new) takes input taps at times (k - width)/orig; t = distance in units of 1/cutoff
    taps = torch.arange(-width, width + orig, dtype=torch.float64) / orig  # (K,)
    t = (taps[None, :] - torch.arange(new, dtype=torch.float64)[:, None] / new) * cutoff  # (new, K)
    t = t.clamp(-LOWPASS_WIDTH, LOWPASS_WIDTH)
    window = torch.cos(t * math.pi / LOWPASS_WIDTH / 2) ** 2  # Hann, zero at +-LOWPASS_WIDTH
    kernel = torch.sinc(t) * window * (cutoff / orig)  # unit DC gain
    return kernel[:, None, :].float(), width


def resample(wav: torch.Tensor, orig_sr: int, new_sr: int) -> torch.Tensor:
    """Band-limited resampling (..., n) -> (..., ceil(n * new_sr / orig_sr)).

    The method of torchaudio.functional.resample at its defaults (sinc_interp_hann, lowpass_filter_width=6,
    rolloff=0.99): y[m] = sum_n x[n] h(n/orig - m/new), h a Hann-windowed sinc with cutoff 0.99 x the lower Nyquist,
    rates reduced by their gcd so the `new` phases are one conv1d with stride `orig`. Same taps, zero padding and
    output length as torchaudio's code; the kernel is built in float64 (as transforms.Resample does; the functional
    form builds it in the input's dtype), so the two should differ only by float32 rounding (~1e-7). Not run against
    torchaudio itself; tests/test_mel.py checks it against a direct float64 evaluation of the formula above (max
    error ~5e-7 on unit-variance noise), pure tones (error < 1e-3 up to 3 kHz) and aliasing (12 kHz -> < 5e-3).
    Like torchaudio's, the filter is short (6 zero crossings): it starts to roll off well below the cutoff
    (a 5 kHz tone loses ~0.5% going 44.1 -> 16 kHz, a 7 kHz tone ~18%).
    """
    if orig_sr == new_sr:
        return wav
    g = math.gcd(orig_sr, new_sr)
    orig, new = orig_sr // g, new_sr // g
    kernel, width = _sinc_kernel(orig, new)
    n = wav.shape[-1]
    x = F.pad(wav.reshape(-1, 1, n), (width, width + orig))  # (N, 1, n + pad): zeros outside the signal
    y = F.conv1d(x, kernel.to(x), stride=orig)  # (N, new, blocks): one channel per output phase
    y = y.transpose(1, 2).reshape(x.shape[0], -1)[:, : -(-n * new // orig)]  # (N, m): interleave the phases
    return y.reshape(*wav.shape[:-1], -1)


@lru_cache(maxsize=None)
def mel_filters(device=None) -> torch.Tensor:
    """Triangular mel filterbank (N_MELS, N_FFT//2 + 1) = (80, 201), as torchaudio.functional.melscale_fbanks.

    HTK mel scale 2595*log10(1 + f/700), N_MELS + 2 points evenly spaced in mel from F_MIN to F_MAX, triangles
    evaluated in Hz at the FFT bin frequencies, peak 1, no area normalisation (norm=None). Built in float64.
    """
    fft_freqs = torch.linspace(0, SAMPLE_RATE / 2, N_FFT // 2 + 1, dtype=torch.float64)  # (201,)
    mel_lo, mel_hi = (2595.0 * math.log10(1.0 + f / 700.0) for f in (F_MIN, F_MAX))
    mels = torch.linspace(mel_lo, mel_hi, N_MELS + 2, dtype=torch.float64)
    hz = 700.0 * (10.0 ** (mels / 2595.0) - 1.0)  # (82,) left edge, centre, right edge of each triangle
    rise = (fft_freqs[None, :] - hz[:-2, None]) / (hz[1:-1] - hz[:-2])[:, None]  # (80, 201)
    fall = (hz[2:, None] - fft_freqs[None, :]) / (hz[2:] - hz[1:-1])[:, None]  # (80, 201)
    return torch.clamp(torch.minimum(rise, fall), min=0.0).float().to(device)


def normalize_level(wave: torch.Tensor, dbfs: float = LEVEL_DBFS) -> torch.Tensor:
    """Scale a waveform (samples,) to an RMS of `dbfs` over the whole clip (a model folder's `level_dbfs` option).

    The log-mel of g * x is the log-mel of x plus 2 ln g wherever the power is above the 1e-10 floor, and
    unchanged where it is not (digital silence): without this, a model sees a level it never trained at as a shifted,
    partly clamped input. Gain is capped at MAX_LEVEL_GAIN_DB; an all-zero clip comes back as it is.
    """
    rms = float(wave.double().square().mean().sqrt())
    if rms == 0.0:
        return wave
    return wave * min(10 ** (dbfs / 20) / rms, 10 ** (MAX_LEVEL_GAIN_DB / 20))


def n_frames(n_samples: int) -> int:
    """Mel frames for a waveform of n_samples: 1 + n_samples // HOP_LENGTH (15 s -> 1501)."""
    return 1 + n_samples // HOP_LENGTH


def log_mel_spectrogram(audio: torch.Tensor) -> torch.Tensor:
    """Waveform(s) (..., samples) at 16 kHz -> float32 log-mel (..., N_MELS, 1 + samples // HOP_LENGTH).

    Needs samples > N_FFT // 2 (center=True reflect-pads N_FFT // 2 samples at each end).
    """
    x = audio.reshape(-1, audio.shape[-1]).float()  # (N, samples)
    window = torch.hann_window(N_FFT, device=x.device)  # periodic, the default of torch, torchaudio and librosa
    stft = torch.stft(x, N_FFT, HOP_LENGTH, window=window, center=True, pad_mode="reflect", return_complex=True)  # (N, 201, frames)
    mel = mel_filters(x.device) @ stft.abs().square_()  # (N, 80, frames): power |X|^2, as torchaudio's power=2
    return mel.clamp_(min=LOG_FLOOR).log_().reshape(*audio.shape[:-1], N_MELS, -1)


def batch_log_mel(waves: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """1-D waveforms -> (mels (B, N_MELS, T) padded with 0.0, lengths (B,) in frames); item i == log_mel_spectrogram(waves[i]).

    One clip at a time: each is reflect-padded at its own end, exactly as alone (stacking zero-padded waves would
    put zeros, not the clip's own samples, into its last frames). On CPU this is as fast as one stacked stft.
    """
    lengths = torch.tensor([n_frames(w.shape[-1]) for w in waves])  # (B,)
    mels = torch.zeros(len(waves), N_MELS, int(lengths.max()), device=waves[0].device)  # (B, 80, T)
    for row, n, wave in zip(mels, lengths, waves):
        row[:, :n] = log_mel_spectrogram(wave)  # (80, n)
    return mels, lengths
