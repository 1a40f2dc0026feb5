"""
Waveform augmentation for training: recording level, background noise, telephone line and room, on 16 kHz audio.

Each op is a small pure function (wave (n,) float32, torch.Generator, ...) -> wave (n,): the same generator state
gives the same output, so an item's augmentation follows from (seed, epoch, index) like the rest of dataset.py, and
a resumed run sees exactly what an uninterrupted one would. `augment()` applies each with its own probability, in a
fixed order that follows the sound from the talker to the file:

    silence    a lead-in and a tail: U[0, 0.5] s of digital silence before the clip and, drawn apart, after it (a
               recording seldom starts on the first phoneme, and a long file's windows start at pauses); the room
               and the noise below then fill it as they would a real one's
    reverb     the room: a synthetic impulse response (direct path + exponentially decaying Gaussian noise,
               RT60 U[0.2, 0.8] s, direct-to-reverberant ratio U[0, 10] dB), by FFT convolution; level kept
    noise      the background, at an SNR U[5, 30] dB: white, pink or brown noise (seeded Gaussian noise shaped to a
               1/f^beta power spectrum), or babble (3-5 other training utterances summed, each at unit power)
    telephone  the line: down to 8 kHz and back with mel.resample, band-passed to the 300-3400 Hz telephone band
               (edges drawn in 200-400 / 3000-3400 Hz)
    gain       the recording level: uniform in dB over [-20, +20] dB; float and never clipped (an unclipped
               float wav at +12 dB is a real input)

The released recipe used none of these (recipe §1: speed perturbation and SpecAugment only), so AugmentConfig()
has every probability at 0; train.py's teaching preset turns them on (its --aug-* flags).
Not here: SpecAugment and speed perturbation (dataset.py); measured noise and RIR corpora (MUSAN, RIRS_NOISES); codecs.
"""
import math
from dataclasses import dataclass

import torch

from mel import SAMPLE_RATE, resample

TELEPHONE_RATE = 8000  # narrow-band telephony samples at 8 kHz (ITU-T G.711)
NOISE_COLOURS = {"white": 0.0, "pink": 1.0, "brown": 2.0}  # beta in power ~ 1/f^beta


@dataclass
class AugmentConfig:
    p_reverb: float = 0.0  # probability of each op; all 0 is the released recipe (no waveform augmentation)
    p_noise: float = 0.0
    p_telephone: float = 0.0
    p_gain: float = 0.0
    p_silence: float = 0.0
    silence_s: float = 0.5  # silence: each end's lead-in / tail drawn in [0, silence_s] seconds
    gain_db: float = 20.0  # gain drawn uniformly in [-gain_db, +gain_db] dB
    snr_db: tuple = (5.0, 30.0)  # noise: SNR range in dB
    p_babble: float = 0.25  # noise: share that is babble rather than coloured noise (when a babble pool is given)
    rt60: tuple = (0.2, 0.8)  # reverb: RT60 range in seconds
    drr_db: tuple = (0.0, 10.0)  # reverb: direct-to-reverberant energy ratio range in dB

    def enabled(self) -> bool:
        return any(p > 0 for p in (self.p_silence, self.p_reverb, self.p_noise, self.p_telephone, self.p_gain))


def uniform(g: torch.Generator, lo: float, hi: float) -> float:
    """One draw from U[lo, hi); every op's random numbers come from here or torch.randn/randint with `g`."""
    return lo + (hi - lo) * float(torch.rand((), generator=g))


def power(x: torch.Tensor) -> float:
    """Mean square over the whole clip, in float64 (a 10 s clip sums 160000 squares)."""
    return float(x.double().square().mean())


# ---------------------------------------------------------------------------------------------------------------
# the ops

def pad_silence(wave: torch.Tensor, g: torch.Generator, max_s: float = 0.5,
                max_len: int | None = None) -> torch.Tensor:
    """Zeros of U[0, max_s] s before the clip and, drawn apart, after it: (n,) -> (n + lead + tail,); with max_len
    (the longest clip training takes) both are trimmed to fit, so no speech is pushed past the cut."""
    lead, tail = (round(uniform(g, 0, max_s) * SAMPLE_RATE) for _ in range(2))
    if max_len is not None:  # the same draws either way: only what fits is kept
        spare = max(0, max_len - wave.shape[-1])
        lead = min(lead, spare)
        tail = min(tail, spare - lead)
    return torch.cat([wave.new_zeros(lead), wave, wave.new_zeros(tail)])


def gain(wave: torch.Tensor, g: torch.Generator, max_db: float = 20.0) -> torch.Tensor:
    """wave * 10^(db/20), db ~ U[-max_db, max_db]: the RMS moves by exactly db. Not clipped."""
    return wave * 10 ** (uniform(g, -max_db, max_db) / 20)


def coloured_noise(n: int, beta: float, g: torch.Generator) -> torch.Tensor:
    """(n,) unit-power noise whose power spectrum falls as 1/f^beta (0 white, 1 pink, 2 brown), no DC."""
    spec = torch.fft.rfft(torch.randn(n, generator=g))  # (n // 2 + 1,)
    spec = spec / torch.arange(spec.shape[0]).clamp(min=1) ** (beta / 2)  # amplitude ~ f^(-beta/2)
    spec[0] = 0  # a random DC offset is no sound
    noise = torch.fft.irfft(spec, n)
    return noise / math.sqrt(max(power(noise), 1e-20))


def babble(n: int, pool: list, g: torch.Generator, talkers=(3, 5)) -> torch.Tensor:
    """(n,) the sum of 3-5 different utterances of `pool` (1-D waves), each looped from a random start, at unit power."""
    k = min(len(pool), int(torch.randint(talkers[0], talkers[1] + 1, (), generator=g)))
    out = torch.zeros(n)
    for i in torch.randperm(len(pool), generator=g)[:k].tolist():
        w = pool[i]
        start = int(torch.randint(0, w.shape[0], (), generator=g))
        out += w[(start + torch.arange(n)) % w.shape[0]] / math.sqrt(max(power(w), 1e-20))
    return out


def mix_at_snr(wave: torch.Tensor, noise: torch.Tensor, snr_db: float) -> torch.Tensor:
    """wave + noise scaled so that 10 log10(power(wave) / power(scaled noise)) == snr_db; silence stays silent."""
    p_wave, p_noise = power(wave), power(noise)
    if p_wave == 0 or p_noise == 0:
        return wave
    return wave + noise * math.sqrt(p_wave / (p_noise * 10 ** (snr_db / 10)))


def add_noise(wave: torch.Tensor, g: torch.Generator, snr_db=(5.0, 30.0), p_babble=0.25, pool=()) -> torch.Tensor:
    """Noise at an SNR ~ U[snr_db]: babble from `pool` (when it holds >= 3 utterances) with probability p_babble,
    else white, pink or brown noise with equal chances."""
    snr = uniform(g, *snr_db)
    if len(pool) >= 3 and uniform(g, 0, 1) < p_babble:
        noise = babble(wave.shape[-1], pool, g)
    else:
        beta = list(NOISE_COLOURS.values())[int(torch.randint(0, len(NOISE_COLOURS), (), generator=g))]
        noise = coloured_noise(wave.shape[-1], beta, g)
    return mix_at_snr(wave, noise, snr)


def band_pass(wave: torch.Tensor, sr: int, lo: float, hi: float) -> torch.Tensor:
    """Zero every FFT bin of the whole clip outside [lo, hi] Hz (a brick wall: exact, and cheap at clip length)."""
    spec = torch.fft.rfft(wave)
    freqs = torch.fft.rfftfreq(wave.shape[-1], 1 / sr)
    spec[(freqs < lo) | (freqs > hi)] = 0
    return torch.fft.irfft(spec, wave.shape[-1])


def telephone(wave: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Narrow-band telephone speech: 16 kHz -> 8 kHz, band-pass to ~300-3400 Hz, -> 16 kHz (same length).

    Going back up, the resampler's short filter lets a trace of the 4-8 kHz image through: measured 3e-4 of the
    power for white noise, 7e-5 for speech (tests/test_augment.py bounds it by 1e-3).
    """
    lo, hi = uniform(g, 200, 400), uniform(g, 3000, 3400)
    narrow = band_pass(resample(wave, SAMPLE_RATE, TELEPHONE_RATE), TELEPHONE_RATE, lo, hi)
    return resample(narrow, TELEPHONE_RATE, SAMPLE_RATE)[: wave.shape[-1]]


def room_impulse_response(g: torch.Generator, rt60: float, drr_db: float, sr: int = SAMPLE_RATE) -> torch.Tensor:
    """(rt60 * sr,) h[0] = 1 (the direct path), then Gaussian noise decaying by 60 dB over rt60 seconds, scaled
    so that direct energy / tail energy = 10^(drr_db / 10)."""
    n = max(2, int(rt60 * sr))
    t = torch.arange(1, n) / sr
    tail = torch.randn(n - 1, generator=g) * torch.exp(-3 * math.log(10) * t / rt60)  # amplitude 10^-3 at rt60
    tail = tail * math.sqrt(10 ** (-drr_db / 10) / float(tail.double().square().sum()))
    return torch.cat([torch.ones(1), tail])


def fft_convolve(x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """Linear convolution (x * h)[: len(x)] through one FFT of a power-of-two size (no circular wrap)."""
    n = x.shape[-1] + h.shape[-1] - 1
    size = 1 << (n - 1).bit_length()
    return torch.fft.irfft(torch.fft.rfft(x, size) * torch.fft.rfft(h, size), size)[: x.shape[-1]]


def reverb(wave: torch.Tensor, g: torch.Generator, rt60=(0.2, 0.8), drr_db=(0.0, 10.0)) -> torch.Tensor:
    """The clip in a synthetic room (RT60 ~ U[rt60] s, DRR ~ U[drr_db] dB): same length, same power as the input."""
    h = room_impulse_response(g, uniform(g, *rt60), uniform(g, *drr_db))
    wet = fft_convolve(wave, h)
    p_wave, p_wet = power(wave), power(wet)
    return wet * math.sqrt(p_wave / p_wet) if p_wet > 0 else wet


# ---------------------------------------------------------------------------------------------------------------
# the composition

def augment(wave: torch.Tensor, g: torch.Generator, cfg: AugmentConfig, pool=(),
            max_len: int | None = None) -> torch.Tensor:
    """(n,) -> (n,), or longer with silence: silence, reverb, noise, telephone, gain, each with its probability in
    cfg; `pool` holds other utterances' waves for babble; max_len: the most samples silence may grow a clip to. An op
    with probability 0 draws nothing from `g`."""
    ops = [(cfg.p_silence, lambda w: pad_silence(w, g, cfg.silence_s, max_len)),
           (cfg.p_reverb, lambda w: reverb(w, g, cfg.rt60, cfg.drr_db)),
           (cfg.p_noise, lambda w: add_noise(w, g, cfg.snr_db, cfg.p_babble, pool)),
           (cfg.p_telephone, lambda w: telephone(w, g)),
           (cfg.p_gain, lambda w: gain(w, g, cfg.gain_db))]
    for p, op in ops:
        if p > 0 and uniform(g, 0, 1) < p:
            wave = op(wave)
    return wave.float()
