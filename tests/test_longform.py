"""longform.py: windows, streamed reading, and splicing hand-made word lists at the seams."""
import numpy as np
import pytest
import soundfile as sf
import torch

import mel
from longform import (AudioWindows, join_chunk_texts, merge_words, reference_chunks, window_starts)
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
