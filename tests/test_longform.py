"""longform.py: windows, streamed reading, and splicing hand-made word lists at the seams."""
import numpy as np
import pytest
import soundfile as sf
import torch

import mel
from longform import (PAUSE_HOP, AudioWindows, file_loudness, frame_power, join_chunk_texts, loudness, merge_words,
                      pause_spans, reference_chunks, window_starts)
from mel import SAMPLE_RATE, AudioError

TRUTH = [f"сөз{i}" for i in range(30)]  # word i is spoken over [i, i + 0.8) seconds


def heard(lo, hi, garble_edges=True, shift=0.0):
    """What a window over [lo, hi) s hears: whole words inside it, a cut word at each edge mangled."""
    words = []
    for i, w in enumerate(TRUTH):
        s, e = i + shift, i + 0.8 + shift
        if lo <= s and e <= hi:
            words.append({"word": w, "start": s, "end": e})
        elif garble_edges and s < hi < e:
            words.append({"word": w[:2], "start": s, "end": hi})  # cut at the window's end
        elif garble_edges and s < lo < e:
            words.append({"word": w[-2:], "start": lo, "end": e})  # cut at the window's start
    return words


def test_window_starts():
    assert window_starts(10, 15, 5) == [0]
    assert window_starts(15, 15, 5) == [0]
    assert window_starts(30, 15, 5) == [0, 10, 15]  # the last window ends with the file
    assert window_starts(35, 15, 5) == [0, 10, 20]


@pytest.mark.parametrize("bounds", [[(0, 15), (10, 25), (15, 30)], [(0, 15), (10.5, 25.5), (20.4, 30)]])
def test_merge_keeps_every_word_once(bounds):
    windows = [(lo, hi, heard(lo, hi)) for lo, hi in bounds]
    assert [w["word"] for w in merge_words(windows)] == TRUTH


def test_merge_with_timing_jitter_between_windows():
    """The second window times every word 0.3 s late: words still match, none lost, none doubled."""
    windows = [(0, 15, heard(0, 15)), (10, 25, heard(10, 25, shift=0.3)), (15, 30, heard(15, 30))]
    windows[1] = (10, 25, [w for w in windows[1][2] if w["end"] <= 25])
    merged = [w["word"] for w in merge_words(windows)]
    assert merged[:25] == TRUTH[:25] and len(merged) == len(set(merged))


@pytest.mark.parametrize("where, fixed", [(11.2, "left"), (13.0, "right")])
def test_merge_takes_a_disputed_word_from_the_window_it_lies_deeper_in(where, fixed):
    """Word 11 (or 13) is misheard by the window in which it sits nearer the edge: the other one's is kept."""
    k = int(where)
    left, right = heard(0, 15), heard(10, 25)
    wrong = right if fixed == "left" else left
    for w in wrong:
        if w["word"] == TRUTH[k]:
            w["word"] = "қате"
    assert [w["word"] for w in merge_words([(0, 15, left), (10, 25, right)])] == TRUTH[:25]


def test_merge_without_agreement_cuts_in_the_middle():
    """Two windows that hear the overlap differently: each keeps its own half, nothing twice."""
    left = [{"word": f"a{i}", "start": i, "end": i + 0.5} for i in range(15)]
    right = [{"word": f"b{i}", "start": i, "end": i + 0.5} for i in range(10, 25)]
    merged = [w["word"] for w in merge_words([(0, 15, left), (10, 25, right)])]
    assert merged == [f"a{i}" for i in range(13)] + [f"b{i}" for i in range(13, 25)]  # cut at 12.5 s


def test_windows_read_from_disk_equal_the_whole_file(tmp_path):
    for sr in (16000, 44100):
        x = (np.random.RandomState(sr).randn(int(31.7 * sr), 2) * 0.1).astype(np.float32)  # stereo
        path = tmp_path / f"x{sr}.wav"
        sf.write(path, x, sr, subtype="FLOAT")
        whole = mel.load_audio(path)
        windows = AudioWindows(path)
        assert windows.n_samples == whole.shape[0] and len(windows) == 3
        for start, wav in windows:
            torch.testing.assert_close(wav, whole[start: start + 15 * SAMPLE_RATE], atol=1e-6, rtol=0)
        assert start + wav.shape[0] == whole.shape[0]


def test_truncated_long_file_is_an_audio_error(tmp_path):
    sf.write(tmp_path / "full.wav", np.zeros(40 * SAMPLE_RATE, dtype=np.int16), SAMPLE_RATE, subtype="PCM_16")
    (tmp_path / "cut.wav").write_bytes((tmp_path / "full.wav").read_bytes()[: 30 * SAMPLE_RATE * 2])
    with pytest.raises(AudioError, match="cut.wav: truncated"):
        list(AudioWindows(tmp_path / "cut.wav"))


def test_reference_chunks_and_join():
    starts = lambda seconds: [s / SAMPLE_RATE for s, _ in reference_chunks(torch.zeros(int(seconds * SAMPLE_RATE)))]
    assert starts(10) == [0]
    assert starts(36.5) == [0, 12, 24]  # the 0.5 s from 36 s is dropped
    assert starts(37.5) == [0, 12, 24, 36]
    assert [c.shape[0] for _, c in reference_chunks(torch.zeros(30 * SAMPLE_RATE))] == [240000, 240000, 96000]
    assert join_chunk_texts(["а б", "а б", "в", "а б"]) == "а б в а б"


def talk(seconds, pauses, seed=0):
    """Noise at speech level with digital-silence pauses [(start s, length s)], as a long file joins clips."""
    x = torch.from_numpy(np.random.RandomState(seed).randn(int(seconds * SAMPLE_RATE)).astype(np.float32)) * 0.1
    for s, n in pauses:
        x[int(s * SAMPLE_RATE): int((s + n) * SAMPLE_RATE)] = 0
    return x


def test_pause_spans_cut_in_the_pauses_and_cover_the_file():
    pauses = [(5.0, 0.3), (7.0, 0.3), (13.0, 0.3), (17.5, 2.0)]
    x = talk(31.0, pauses)
    w = 8 * SAMPLE_RATE
    spans = pause_spans(loudness(frame_power(x)), x.shape[0], w)
    assert spans[0][0] == 0 and spans[-1][1] == x.shape[0]
    assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))  # end to end: no gap, no overlap
    assert all(w // 2 <= e - s <= w for s, e in spans)  # none longer than a window, no sliver
    cuts = [e / SAMPLE_RATE for _, e in spans[:-1]]
    # each cut inside a pause: the latest of the window's second half [4, 8) s (7 s, not 5 s), then the one of [11.15,
    # 15.15) s, in their middles ...
    assert abs(cuts[0] - 7.15) < 0.06 and abs(cuts[1] - 13.15) < 0.06
    assert 19.1 <= cuts[2] <= 19.4  # ... and in a long pause 0.2 s before its end, so the next window starts near speech
    assert pause_spans(loudness(frame_power(x[:w])), w, w) == [(0, w)]  # one window: one span


def test_pause_spans_without_a_pause_still_bound_every_window():
    x = talk(20.0, [])
    for n in (8 * SAMPLE_RATE + 1, 8 * SAMPLE_RATE + 3000, x.shape[0]):
        spans = pause_spans(loudness(frame_power(x[:n])), n, 8 * SAMPLE_RATE)
        assert spans[-1][1] == n and all(0 < e - s <= 8 * SAMPLE_RATE for s, e in spans)
        assert min(e - s for s, e in spans) >= 4 * SAMPLE_RATE - PAUSE_HOP  # just over a window: two halves
    assert pause_spans(torch.zeros(0), 5, 2) == [(0, 2), (2, 3), (3, 5)]  # under a frame: by length, the end shared


def test_file_loudness_read_in_blocks_equals_the_whole_file(tmp_path):
    x = talk(31.0, [(7.0, 0.5)], seed=2)
    for sr in (16000, 44100):
        path = tmp_path / f"t{sr}.wav"
        sf.write(path, mel.resample(x, SAMPLE_RATE, sr).numpy(), sr, subtype="FLOAT")
        whole = loudness(frame_power(mel.load_audio(path)))
        torch.testing.assert_close(file_loudness(path, block_s=6.0), whole, atol=1e-3, rtol=0)
        spans = pause_spans(whole, mel.load_audio(path).shape[0], 8 * SAMPLE_RATE)
        windows = AudioWindows(path, 8.0, spans=spans)
        assert [(s, s + wav.shape[0]) for s, wav in windows] == spans
