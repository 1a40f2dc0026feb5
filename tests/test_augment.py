"""augment.py's ops, their place in dataset.py, and the front end's level normalisation (mel.normalize_level)."""
import json
import math

import numpy as np
import pytest
import soundfile as sf
import torch

import augment as A
import train as T
from dataset import SpeechDataset, spec_augment
from decode import Transcriber
from helpers import wave
from mel import LEVEL_DBFS, SAMPLE_RATE, load_audio, log_mel_spectrogram, normalize_level, resample
from model import load_model, save_model, tokenizer_path
from tokenizer import Tokenizer, train_sentencepiece


def gen(seed):
    return torch.Generator().manual_seed(seed)


def db(x):
    return 10 * math.log10(A.power(x))


def band_power(x, lo, hi):
    """Share of x's power in [lo, hi) Hz."""
    p = torch.fft.rfft(x.double()).abs().square()
    f = torch.fft.rfftfreq(x.shape[-1], 1 / SAMPLE_RATE)
    return float(p[(f >= lo) & (f < hi)].sum() / p.sum())


def speech(seconds=2.0, seed=0):
    """Tones with silence around them: a pause as in speech, so the SNR and power maths see some zeros."""
    x = wave(seconds, seed)
    x[: SAMPLE_RATE // 4] = 0
    return x


POOL = [wave(1.0 + 0.3 * k, seed=k + 1) for k in range(5)]
OPS = {
    "gain": lambda x, g: A.gain(x, g),
    "noise": lambda x, g: A.add_noise(x, g, p_babble=0.0),
    "babble": lambda x, g: A.add_noise(x, g, p_babble=1.0, pool=POOL),
    "telephone": lambda x, g: A.telephone(x, g),
    "reverb": lambda x, g: A.reverb(x, g),
    "all": lambda x, g: A.augment(x, g, A.AugmentConfig(1.0, 1.0, 1.0, 1.0), POOL),
}


@pytest.mark.parametrize("name", OPS)
def test_each_op_is_a_function_of_the_generator_seed(name):
    x = speech()
    one, again, other = (OPS[name](x.clone(), gen(s)) for s in (7, 7, 8))
    assert one.shape == x.shape and one.dtype == torch.float32 and torch.isfinite(one).all()
    assert torch.equal(one, again)
    assert not torch.allclose(one, other)
    assert not torch.allclose(one, x)


def test_gain_moves_the_rms_by_the_drawn_db_and_is_not_clipped():
    x = speech()
    for seed in range(20):
        drawn = A.uniform(gen(seed), -20, 20)  # the op's first (and only) draw
        assert db(A.gain(x, gen(seed))) - db(x) == pytest.approx(drawn, abs=1e-4)
    drawn = [A.uniform(gen(s), -20, 20) for s in range(300)]
    assert -20 <= min(drawn) < -19 and 19 < max(drawn) <= 20  # the whole +-20 dB
    seed = next(s for s in range(300) if drawn[s] > 12)  # louder than x4
    peak = float(A.gain(0.9 * x / x.abs().max(), gen(seed)).abs().max())
    assert peak == pytest.approx(0.9 * 10 ** (drawn[seed] / 20), rel=1e-5) and peak > 3.5  # far past 1.0: not clipped


def test_mix_at_snr_hand_checked():
    x = torch.ones(1000)  # power 1
    n = torch.full((1000,), 3.0) * torch.tensor([1.0, -1.0]).repeat(500)  # power 9
    y = A.mix_at_snr(x, n, 20.0)  # noise must come out at power 0.01: amplitude 0.1
    torch.testing.assert_close(y - x, torch.tensor([0.1, -0.1]).repeat(500))
    assert torch.equal(A.mix_at_snr(torch.zeros(10), n[:10], 10.0), torch.zeros(10))  # silence stays silent


@pytest.mark.parametrize("babble", [0.0, 1.0])
def test_noise_is_at_the_drawn_snr(babble):
    x = speech(3.0)
    for seed in range(10):
        drawn = A.uniform(gen(seed), 5, 30)  # add_noise draws the SNR first
        y = A.add_noise(x, gen(seed), (5.0, 30.0), babble, POOL)
        assert db(x) - db(y - x) == pytest.approx(drawn, abs=0.1)


@pytest.mark.parametrize("colour", A.NOISE_COLOURS)
def test_coloured_noise_has_the_slope_of_its_colour(colour):
    beta = A.NOISE_COLOURS[colour]
    n = A.coloured_noise(2 ** 16, beta, gen(0))
    assert A.power(n) == pytest.approx(1.0) and abs(float(n.mean())) < 1e-6
    # power in octave bands: each octave holds 2^(1 - beta) times the one below (white x2, pink x1, brown x0.5)
    octaves = [band_power(n, f, 2 * f) for f in (250, 500, 1000, 2000)]
    ratios = [b / a for a, b in zip(octaves, octaves[1:])]
    assert ratios == pytest.approx([2 ** (1 - beta)] * 3, rel=0.15)


def test_babble_sums_three_to_five_different_talkers_at_unit_power():
    n = 256
    t = torch.arange(n)
    # talker k: a tone of k + 1 cycles per 256 samples at amplitude 10^k; looped from any start it stays that tone
    pool = [10.0 ** k * torch.sin(2 * math.pi * (k + 1) * t / n) for k in range(6)]
    counts = set()
    for seed in range(30):
        spectrum = torch.fft.rfft(A.babble(n, pool, gen(seed)).double()).abs()[1:7]  # bin k + 1 = talker k
        present = spectrum > 1
        counts.add(int(present.sum()))
        # each talker once, each scaled to unit power (amplitude sqrt 2, so |bin| = n / sqrt 2) whatever its loudness
        torch.testing.assert_close(spectrum[present], torch.full_like(spectrum[present], n / math.sqrt(2)), rtol=1e-5, atol=0)
    assert counts == {3, 4, 5}


def test_telephone_keeps_the_band_and_nothing_above_4_khz():
    x = torch.randn(3 * SAMPLE_RATE, generator=gen(0))  # white: every frequency equally
    y = A.telephone(x, gen(1))
    assert y.shape == x.shape
    assert band_power(y, 4000, 8001) < 1e-3
    assert band_power(y, 0, 150) < 1e-3
    assert band_power(y, 500, 3000) > 0.75  # the speech band survives
    assert A.power(y) / A.power(x) == pytest.approx(2900 / 8000, rel=0.15)  # ~3.1 of 8 kHz kept


def test_room_impulse_response_has_its_direct_path_drr_and_rt60():
    h = A.room_impulse_response(gen(0), rt60=0.5, drr_db=5.0)
    assert h.shape == (8000,) and h[0] == 1 and h[1:].abs().max() < 1  # the direct path is the strongest tap
    assert 10 * math.log10(1 / float(h[1:].double().square().sum())) == pytest.approx(5.0, abs=1e-3)
    # Schroeder's backward-integrated energy falls 60 dB per RT60: fit its -5..-25 dB span (the T20 method)
    edc = h[1:].double().square().flip(0).cumsum(0).flip(0)
    edc_db = 10 * torch.log10(edc / edc[0])
    t = torch.arange(1, 8000) / SAMPLE_RATE
    span = (edc_db < -5) & (edc_db > -25)
    slope = np.polyfit(t[span].numpy(), edc_db[span].numpy(), 1)[0]  # dB per second
    assert -60 / slope == pytest.approx(0.5, rel=0.1)


def test_reverb_keeps_length_power_and_the_direct_path():
    x = speech(2.0)
    y = A.reverb(x, gen(3))
    assert y.shape == x.shape and A.power(y) == pytest.approx(A.power(x), rel=1e-5)
    click = torch.zeros(SAMPLE_RATE)
    click[1000] = 1.0
    wet = A.reverb(click, gen(3))
    assert torch.all(wet[:1000].abs() < 1e-6)  # causal: nothing before the sound
    assert int(wet.abs().argmax()) == 1000  # the direct path is the loudest arrival
    assert float(wet[1200:].abs().max()) > 0  # and a tail follows it
    np.testing.assert_allclose(A.fft_convolve(x[:300], click[995:1010]).numpy(),
                               np.convolve(x[:300].numpy(), click[995:1010].numpy())[:300], atol=1e-6)


def test_silence_adds_a_lead_in_and_a_tail_of_zeros_drawn_apart():
    x = speech() + 0.01  # no zero sample of its own: every zero below was added
    leads, tails = [], []
    for seed in range(40):
        y = A.pad_silence(x, gen(seed), max_s=0.5)
        nz = (y != 0).nonzero()[:, 0]
        lead, tail = int(nz[0]), y.shape[0] - 1 - int(nz[-1])
        assert torch.equal(y[lead: lead + x.shape[0]], x) and lead + x.shape[0] + tail == y.shape[0]
        assert 0 <= lead <= SAMPLE_RATE // 2 and 0 <= tail <= SAMPLE_RATE // 2
        leads.append(lead), tails.append(tail)
    assert leads != tails and max(leads) > SAMPLE_RATE // 4 and min(leads) < SAMPLE_RATE // 8  # spread over [0, 0.5 s]
    assert torch.equal(A.pad_silence(x, gen(3)), A.pad_silence(x, gen(3)))  # seeded
    n = x.shape[0]  # near the longest clip training takes: the silence is trimmed to fit, the draws are the same
    for room in (n, n + 100, n + SAMPLE_RATE):
        y = A.pad_silence(x, gen(5), max_len=room)
        free = A.pad_silence(x, gen(5))
        assert y.shape[0] == min(room, free.shape[0]) and (y != 0).sum() == n
    y = A.augment(x, gen(1), A.AugmentConfig(p_silence=1.0))
    assert y.shape[0] > x.shape[0] and torch.equal(y, A.pad_silence(x, _drawn(1)))


def _drawn(seed):
    """The generator augment() hands pad_silence: one draw (the op's probability) already taken."""
    g = gen(seed)
    A.uniform(g, 0, 1)
    return g


def test_off_changes_nothing_and_draws_nothing():
    x, g = speech(), gen(0)
    state = g.get_state()
    assert torch.equal(A.augment(x, g, A.AugmentConfig(), POOL), x)
    assert torch.equal(g.get_state(), state)  # so SpecAugment's masks after it are today's


# ---------------------------------------------------------------------------------------------------------------
# in the dataset

@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    root = tmp_path_factory.mktemp("aug")
    texts = ["сәлем әлем", "бүгін күн жылы", "қазақ тілі", "кітап оқу", "ертең жаңбыр"]
    rows = []
    for i, text in enumerate(texts):
        sf.write(root / f"u{i}.wav", speech(0.8 + 0.2 * i, seed=i).numpy(), SAMPLE_RATE)
        rows.append(dict(audio_filepath=str(root / f"u{i}.wav"), text=text, duration=0.8 + 0.2 * i))
    (root / "text.txt").write_text("\n".join(texts * 10) + "\n")
    tok = Tokenizer.load(train_sentencepiece(str(root / "text.txt"), str(root / "tok"), vocab_size=330))
    return rows, tok


def dataset(manifest, **kw):
    rows, tok = manifest
    return SpeechDataset(rows, tok, augment=True, speed_perturb=True, seed=5, **kw)


def test_dataset_items_are_the_same_across_constructions_and_access_orders(manifest):
    cfg = A.AugmentConfig(1.0, 1.0, 1.0, 1.0, p_babble=1.0)
    first = dataset(manifest, wave_augment=cfg, babble_pool=4)
    first.epoch = 2
    seen = [first[i] for i in range(5)]
    again = dataset(manifest, wave_augment=cfg, babble_pool=4)  # a resumed run: a new object, straight to item 3
    again.epoch = 2
    assert torch.equal(again[3]["mel"], seen[3]["mel"])
    assert again.babble is not None and len(again.babble) == 4
    again.epoch = 3
    assert not torch.equal(again[3]["mel"], seen[3]["mel"])  # another epoch, another draw


def test_dataset_without_augmentation_is_todays_item_bit_for_bit(manifest):
    rows, tok = manifest
    plain = dataset(manifest)
    zeros = dataset(manifest, wave_augment=A.AugmentConfig())
    for ds in (plain, zeros):
        ds.epoch = 1
    for i in range(5):
        g = plain.generator(i)  # the item's randomness as dataset.py has always drawn it
        wav = load_audio(rows[i]["audio_filepath"])
        speed = [0.9, 1.0, 1.1][int(torch.randint(0, 3, (1,), generator=g))]
        if speed != 1.0:
            wav = resample(wav, int(SAMPLE_RATE * speed), SAMPLE_RATE)
        want = spec_augment(log_mel_spectrogram(wav)[:, :1500], g)
        assert torch.equal(plain[i]["mel"], want) and torch.equal(zeros[i]["mel"], want)
    assert plain.babble is None and zeros.babble is None  # no pool is ever read


def test_dataset_applies_the_waveform_ops(manifest):
    rows, tok = manifest
    plain = SpeechDataset(rows, tok)
    noisy = SpeechDataset(rows, tok, wave_augment=A.AugmentConfig(p_noise=1.0, snr_db=(5.0, 5.0)))
    # silence (the clips' first 0.25 s) is at the log floor without noise, and well above it with
    assert float(plain[1]["mel"][:, 5:20].max()) < -20 < float(noisy[1]["mel"][:, 5:20].mean())


# ---------------------------------------------------------------------------------------------------------------
# the front end's level normalisation

def test_normalize_level_undoes_any_gain():
    x = speech()
    for g in (1e-3, 0.1, 4.0, 10.0):
        torch.testing.assert_close(normalize_level(g * x), normalize_level(x), rtol=1e-5, atol=1e-7)
    assert db(normalize_level(x)) == pytest.approx(LEVEL_DBFS, abs=1e-4)
    assert torch.equal(normalize_level(torch.zeros(100)), torch.zeros(100))
    tiny = torch.full((100,), 1e-9)  # -180 dBFS: amplified by at most 60 dB, not to -20 dBFS
    assert float(normalize_level(tiny).abs().max()) == pytest.approx(1e-6, rel=1e-4)


def test_dataset_level_norm_makes_items_level_free(manifest, tmp_path):
    rows, tok = manifest
    quiet = [dict(r, audio_filepath=str(tmp_path / f"q{i}.wav")) for i, r in enumerate(rows)]
    for r, q in zip(rows, quiet):
        sf.write(q["audio_filepath"], 0.01 * load_audio(r["audio_filepath"]).numpy(), SAMPLE_RATE, subtype="FLOAT")
    loud, soft = (SpeechDataset(rs, tok, level_dbfs=LEVEL_DBFS) for rs in (rows, quiet))
    off = SpeechDataset(quiet, tok)
    torch.testing.assert_close(soft[2]["mel"], loud[2]["mel"], atol=1e-3, rtol=0)
    assert (off[2]["mel"] - loud[2]["mel"]).abs().max() > 5  # 34 dB below -20 dBFS: 7.8 nats lower

def test_level_norm_is_a_model_folder_option_used_by_decoding(tiny, tmp_path):
    assert "level_dbfs" not in json.loads((tiny.folder / "config.json").read_text())  # absent: off, as today
    assert load_model(tiny.folder).level_dbfs is None
    model = load_model(tiny.folder)
    model.level_dbfs = LEVEL_DBFS
    save_model(model, tmp_path / "m", tokenizer=tokenizer_path(tiny.folder), decoder=tiny.root / "llm")
    assert json.loads((tmp_path / "m" / "config.json").read_text())["level_dbfs"] == LEVEL_DBFS
    normed = load_model(tmp_path / "m")
    assert normed.level_dbfs == LEVEL_DBFS
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    for bad in ("loud", float("nan"), 3.0, True):
        (tmp_path / "m" / "config.json").write_text(json.dumps({**config, "level_dbfs": bad}))
        with pytest.raises(ValueError, match="level_dbfs"):
            load_model(tmp_path / "m")
    x = speech(1.5)
    enc = {}
    for name, m in [("off", load_model(tiny.folder)), ("on", normed)]:
        t = Transcriber(m, tiny.tok)
        enc[name] = [t._encode([g * x], ctc=False)[0] for g in (1.0, 0.05)]
    torch.testing.assert_close(enc["on"][0], enc["on"][1], atol=1e-4, rtol=1e-4)
    assert not torch.allclose(enc["off"][0], enc["off"][1], atol=1e-2)


# ---------------------------------------------------------------------------------------------------------------
# the presets

def test_release_preset_is_unaugmented_and_teaching_preset_is_augmented():
    release = T.parse_args(["--preset", "300m", "--train", "t.jsonl", "--tokenizer", "t.model"])
    assert (release.aug_reverb, release.aug_noise, release.aug_telephone, release.aug_gain, release.aug_silence) == \
        (0, 0, 0, 0, 0)
    assert not release.level_norm and release.spec_augment and release.speed_perturb  # recipe §1
    teach = T.parse_args(["--preset", "teach", "--train", "t.jsonl", "--tokenizer", "t.model"])
    assert teach.spec_augment and teach.level_norm
    assert min(teach.aug_reverb, teach.aug_noise, teach.aug_telephone, teach.aug_gain) > 0
    off = T.parse_args(["--preset", "teach", "--train", "t.jsonl", "--tokenizer", "t.model", "--aug-noise", "0",
                        "--no-level-norm"])
    assert off.aug_noise == 0 and not off.level_norm


def test_spec_augment_time_masks_respect_the_clip_fraction():
    from dataset import spec_augment

    mel = torch.ones(80, 240)  # a 2.4 s clip
    for seed in range(30):
        cut = spec_augment(mel, torch.Generator().manual_seed(seed), n_freq=0, max_time_fraction=0.1)
        assert (cut[0] == 0).sum() <= 2 * 24  # two masks of at most 10 % of 240 frames
    widest = max(int((spec_augment(mel, torch.Generator().manual_seed(s), n_freq=0)[0] == 0).sum())
                 for s in range(30))
    assert widest > 48  # uncapped (the release's 100 frames), the masks do cover more
