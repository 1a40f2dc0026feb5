"""plot.py: the numbers behind its figures (not pixels), its one-line errors, and the decoder's attention weights."""
import argparse
import json
import math

import numpy as np
import pytest
import soundfile as sf
import torch

import plot
import train as T
from decode import DEFAULT_MODEL, add_decoding_args, load
from decoder import load_llama
from helpers import wave
from mel import SAMPLE_RATE

SAMPLE = "samples/sample1.wav"


def transcriber(*flags):
    return load(add_decoding_args(argparse.ArgumentParser()).parse_args(list(flags)))


@pytest.fixture(scope="module")
def teach():
    return transcriber()


@pytest.fixture(scope="module")
def sample(teach):
    return plot.utterance_data(teach, SAMPLE)


def hf_attentions(folder, x, **kw):
    """transformers' eager Llama on inputs_embeds x: its per-layer attention probabilities (the reference)."""
    transformers = pytest.importorskip("transformers")
    hf = transformers.LlamaForCausalLM.from_pretrained(folder, attn_implementation="eager").eval()
    with torch.no_grad():
        return hf(inputs_embeds=x, output_attentions=True, **kw).attentions


# -- decoder.py: attention probabilities on request ---------------------------------------------------------------

def test_attention_probs_match_transformers_and_leave_the_output_unchanged():
    folder = DEFAULT_MODEL / "decoder"
    llm = load_llama(folder)
    torch.manual_seed(0)
    x = torch.randn(2, 23, llm.config.dim)
    key_mask = torch.ones(2, 23, dtype=torch.bool)
    key_mask[1, 17:] = False  # a padded row: the explicit softmax must mask as SDPA does
    ref = hf_attentions(folder, x)  # transformers' eager path, written out independently
    for mask in (None, key_mask):
        probs = []
        with torch.no_grad():
            fast = llm(x, key_mask=mask)
            slow = llm(x, key_mask=mask, attn_probs=probs)
        torch.testing.assert_close(slow, fast, atol=1e-5, rtol=1e-5)
        assert len(probs) == llm.config.n_layers and probs[0].shape == (2, llm.config.n_heads, 23, 23)
        if mask is None:
            for ours, want in zip(probs, ref):
                torch.testing.assert_close(ours, want, atol=1e-5, rtol=1e-4)
        else:  # a padded query sees the real keys and its own slot, no other padded one
            for q in range(18, 23):
                assert probs[0][1, :, q, 17:q].abs().max() == 0 and probs[0][1, :, q, q].min() > 0
    # with a KV cache: one step's probabilities are the last query row of the full pass
    caches, step = llm.new_caches(2, 23), []
    with torch.no_grad():
        llm(x[:, :22], 0, caches)
        llm(x[:, 22:], 22, caches, attn_probs=step)
    for ours, want in zip(step, ref):
        torch.testing.assert_close(ours, want[:, :, -1:], atol=1e-5, rtol=1e-4)


# -- one utterance -------------------------------------------------------------------------------------------------

def test_the_figure_has_its_four_panels(sample):
    assert sample["panels"] == ["spectrogram", "ctc", "attention", "caption"]
    fig = plot.draw_utterance(sample)
    assert len(fig.axes) == 5  # the four panels + the attention panel's right axis (mass on audio)
    plot.plt.close(fig)


def test_words_lie_in_the_audio_in_order_and_are_decode_pys_timestamps(teach, sample):
    words = sample["words"]
    assert " ".join(w["word"] for w in words) == sample["text"] and len(words) >= 2
    assert all(0 <= w["start"] < w["end"] <= sample["duration"] + 1e-6 for w in words)
    assert all(a["end"] <= b["start"] for a, b in zip(words, words[1:]))
    assert math.isclose(sample["duration"], sf.info(SAMPLE).duration, abs_tol=1e-3)
    teach.opt.timestamps = True
    try:
        ref = teach.transcribe([SAMPLE])[0]
    finally:
        teach.opt.timestamps = False
    assert ref["text"] == sample["text"] and ref["words"] == words


def test_the_ctc_panel_is_the_best_path(teach, sample):
    _, _, log_probs = teach._encode([plot._load(SAMPLE)], ctc=True)
    best = log_probs[0].argmax(-1).tolist()
    assert [r["token"] for r in sample["path"]] == [v for i, v in enumerate(best) if v and (i == 0 or v != best[i - 1])]
    spans = [(r["start"], r["end"]) for r in sample["path"]]
    assert spans == sorted(spans) and all(0 <= s < e <= sample["duration"] + 1e-6 for s, e in spans)
    assert len(sample["blank"]) == log_probs.shape[1] and (sample["blank"] + sample["nonblank"] <= 1 + 1e-5).all()


def test_attention_rows_are_the_decoders_mass_on_the_audio(teach, sample):
    """Row k of the panel: transformers' attention (heads and layers averaged) of the slot predicting token k."""
    att, text_mass, tokens = sample["attention"], sample["text_mass"], sample["tokens"]
    n_frames = len(sample["blank"])
    assert att.shape == (len(tokens) + 1, n_frames) and len(sample["token_labels"]) == len(tokens) + 1
    assert (att >= 0).all() and text_mass[0] == 0  # the last audio frame sees no text yet
    np.testing.assert_allclose(att.sum(1) + text_mass, 1, atol=1e-5)
    audio, _, _ = teach._encode([plot._load(SAMPLE)], ctc=False)  # (1, T', d)
    x = torch.cat([audio, teach.model.llm.embed(torch.tensor([tokens]))], 1)
    ref = torch.stack(hf_attentions(DEFAULT_MODEL / "decoder", x))[:, 0].mean(1)  # (layers, S, S)
    rows = ref.mean(0)[n_frames - 1:]
    np.testing.assert_allclose(att, rows[:, :n_frames].numpy(), atol=1e-5)
    np.testing.assert_allclose(1 - text_mass, rows[:, :n_frames].sum(1).numpy(), atol=1e-5)
    one = plot.utterance_data(teach, SAMPLE, layer=2)["attention"]
    np.testing.assert_allclose(one, ref[2, n_frames - 1:, :n_frames].numpy(), atol=1e-5)
    assert not np.allclose(one, att, atol=1e-3)


def test_token_labels_spell_the_text(sample):
    labels = sample["token_labels"]
    assert labels[-1] == "EOS" and labels[0].startswith("▁")
    assert "".join(labels[:-1]).replace("▁", " ").split() == sample["text"].split()


def test_a_long_file_is_drawn_one_window_at_a_time(teach, tmp_path, capsys):
    d = plot.utterance_data(teach, "samples/long1.wav", start=20.0)
    assert d["offset"] == 20.0 and d["duration"] == teach.opt.window and d["file_duration"] > 59
    assert d["words"] and all(20.0 <= w["start"] < w["end"] <= 20.0 + d["duration"] + 1e-6 for w in d["words"])
    assert plot.main(["samples/long1.wav", "--out", str(tmp_path / "a.png"), "--mode", "greedy"]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"long1.wav: {sf.info('samples/long1.wav').duration:.1f} s, drawn 0.0-8.0 s" in err[0]


def test_the_cli_writes_a_png(tmp_path):
    out = tmp_path / "s.png"
    assert plot.main([SAMPLE, "--out", str(out), "--mode", "ctc", "--layer", "3"]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir()] == ["s.png"]  # no temporary file left behind


@pytest.mark.parametrize("argv,rc,message", [
    (["nosuch.wav"], 1, "plot.py: nosuch.wav: no such file"),
    (["tests"], 1, "plot.py: tests: is a directory"),
    ([SAMPLE, "--start", "9"], 1, "--start 9 is outside the audio (0 to 3.21 s)"),
    ([SAMPLE, "--layer", "4"], 2, "plot.py: error: --layer 4: the decoder has layers 0 to 3"),
    ([SAMPLE, "--model", "tests"], 2, "plot.py: error: tests: not a model folder"),
    (["--log", "nosuch.jsonl"], 1, "plot.py: nosuch.jsonl: cannot read"),
])
def test_bad_input_is_one_line(tmp_path, capsys, argv, rc, message):
    out = tmp_path / "x.png"
    assert plot.main(argv + ["--out", str(out)]) == rc
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not out.exists()


def test_argument_errors_exit_2(tmp_path):
    for argv in ([SAMPLE, "--log", "x", "--out", "x.png"], ["--out", "x.png"],
                 [SAMPLE, "--out", str(tmp_path / "no" / "x.png")]):
        try:
            assert plot.main(argv) == 2
        except SystemExit as e:  # argparse's own errors
            assert e.code == 2


# -- training curves -----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def run_log(tiny, tmp_path_factory):
    """A real log.jsonl: four steps of train.py on the tiny model, validated every two."""
    root = tmp_path_factory.mktemp("run")
    rows = []
    for i, text in enumerate(["қазақ тілі", "ауа райы жақсы", "мен кітап оқимын"]):
        sf.write(root / f"u{i}.wav", wave(0.6 + 0.3 * i, seed=i).numpy(), SAMPLE_RATE)
        rows.append(dict(audio_filepath=f"u{i}.wav", text=text, duration=0.6 + 0.3 * i))
    (root / "m.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    cfg = T.TrainConfig(**dict(T.PRESETS["teach"], encoder="tiny", train=str(root / "m.jsonl"),
                               valid=str(root / "m.jsonl"), tokenizer=tiny.tok.path, decoder=str(tiny.root / "llm"),
                               out=str(root / "out"), batch_size=2, max_steps=4, eval_every=2, eval_wer=2,
                               log_every=1, num_workers=0, save_every=1000, spec_augment=False,
                               speed_perturb=False, dropout=0.0))
    T.train(cfg)
    return root / "out" / "log.jsonl"


def test_one_curve_per_logged_series(run_log):
    records = plot.read_log(run_log)
    d = plot.curve_data(records)
    drawn = {k: v for p in d["panels"] for k, v in p["series"].items()}
    logged = {k for r in records for k in r if k in {k for *_, ks in plot.CURVE_PANELS for k in ks}}
    assert set(drawn) == logged >= {"loss", "ce", "ctc", "lr", "grad_norm", "valid_loss", "valid_wer",
                                    "valid_listen_gap", "valid_ce_own", "valid_ce_shuffled"}
    steps, values = drawn["loss"]
    assert steps.tolist() == [1, 2, 3, 4] and values.tolist() == [r["loss"] for r in records if "loss" in r]
    assert drawn["valid_loss"][0].tolist() == [2, 4]
    fig = plot.draw_curves(d)
    curves = [[line.get_label() for line in ax.get_lines() if not line.get_label().startswith("_")] for ax in fig.axes]
    assert curves == [list(p["series"]) for p in d["panels"]]  # the 0 line of the listen gap is unlabelled
    plot.plt.close(fig)


def test_listen_gap_resumed_steps_and_zero_series(run_log, tmp_path):
    records = plot.read_log(run_log)
    titles = [p["title"] for p in plot.curve_data(records)["panels"]]
    assert len(titles) == 6 and titles[-1].startswith("does the decoder listen")
    no_gap = [{k: v for k, v in r.items() if "listen" not in k and "valid_ce" not in k} for r in records]
    assert len(plot.curve_data(no_gap)["panels"]) == 4  # a log without it (a CTC run): no panels for it
    more = [dict(step=2, loss=9.0), dict(step=4, valid_listen_gap=0.25), dict(step=2, valid_listen_gap=-0.5)]
    d = plot.curve_data(records + more)
    drawn = {k: v for p in d["panels"] for k, v in p["series"].items()}
    assert drawn["loss"][1][1] == 9.0  # a step logged again after --resume: the later value
    assert drawn["valid_listen_gap"][0].tolist() == [2, 4] and drawn["valid_listen_gap"][1].tolist() == [-0.5, 0.25]
    fig = plot.draw_curves(d)
    assert len(fig.axes) == len(d["panels"]) == 6
    plot.plt.close(fig)
    ctc_stage = [dict(r, ce=0.0) for r in records if "loss" in r]
    assert plot.curve_data(ctc_stage)["left_out"] == ["ce"]


def test_a_broken_log_is_one_line(run_log, tmp_path, capsys):
    bad = tmp_path / "log.jsonl"
    lines = run_log.read_text().splitlines()
    bad.write_text(lines[0] + "\n{not json\n" + lines[1] + "\n")
    assert plot.main(["--log", str(bad), "--out", str(tmp_path / "c.png")]) == 1
    assert capsys.readouterr().err.strip() == f"plot.py: {bad}:2: not a JSON line"
    bad.write_text(lines[0] + "\n" + lines[1][:10])  # a run still writing its last line: that line waits
    assert len(plot.read_log(bad)) == 1
    bad.write_text('{"loss": 1.0}\n')
    with pytest.raises(plot.LogError, match="no integer step"):
        plot.read_log(bad)
    bad.write_text('{"step": 1, "epoch": 0}\n')
    assert plot.main(["--log", str(bad), "--out", str(tmp_path / "c.png")]) == 1
    assert capsys.readouterr().err.startswith(f"plot.py: {bad}: no series to draw")
    assert plot.main(["--log", str(run_log), "--out", str(tmp_path / "c.png")]) == 0
