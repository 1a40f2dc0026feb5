"""Hostile input beyond test_robustness.py's cases: a FIFO or a device in a training manifest, model folders whose
config claims sizes its weights do not have, release checkpoints with tensors of the wrong rank, and others.

Where a hang, a traceback or an exit status is the point the program runs in a subprocess with a timeout; the rest
call the functions in this process. The model is conftest's `tiny`.
"""
import json
import os
import resource
import shutil
import stat
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

import decode
import evaluate
from atomic import atomic_file

ROOT = Path(__file__).resolve().parents[1]


def python(code: str, timeout=60):
    """`python -c code` in the repo root: (exit status, stdout, stderr); a hang fails the test at `timeout`."""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=timeout,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    return r.returncode, r.stdout, r.stderr


# --------------------------------------------------------------------------------------------------------------
# training's manifest check opens what decoding opens

def test_a_fifo_or_device_in_a_training_manifest_is_an_unreadable_row_not_a_hang(tmp_path):
    fifo = tmp_path / "pipe.wav"
    os.mkfifo(fifo)  # sf.info on it waits for a writer: forever
    sf.write(tmp_path / "ok.wav", np.zeros(8000, np.float32), 16000)
    bad_rate = tmp_path / "rate3.wav"  # a header the decoder refuses is refused here too, not at step N
    sf.write(bad_rate, np.zeros(8000, np.float32), 16000)
    b = bytearray(bad_rate.read_bytes())
    b[24:28] = (3).to_bytes(4, "little")
    bad_rate.write_bytes(bytes(b))
    code = ("import dataset; "
            f"print([dataset.audio_problem(p) for p in ({str(fifo)!r}, '/dev/zero', {str(bad_rate)!r}, "
            f"{str(tmp_path / 'ok.wav')!r})])")
    rc, out, err = python(code)
    assert rc == 0, err
    fifo_p, dev_p, rate_p, ok_p = eval(out)
    assert fifo_p == ("is a FIFO, not a regular file", None) and dev_p == ("is a device, not a regular file", None)
    assert "3 Hz is outside" in rate_p[0] and ok_p == (None, 0.5)


# --------------------------------------------------------------------------------------------------------------
# a model folder's config.json is checked against its weights before anything of the config's size is allocated

MEMORY_CAP = 3 << 30
CONFIG_LIES = [  # (edit of config.json, what the one line must say): each claims GBs the 0.2 MB weights lack
    (lambda c: c["encoder"].update(dim=1 << 16, n_heads=2), "ctc_head.weight (320, 64) != (320, 65536)"),
    (lambda c: c.update(vocab_size=1 << 24), "ctc_head.weight (320, 64) != (16777216, 64)"),
    (lambda c: c["encoder"].update(n_layers=10**6), "encoder.n_layers is 1000000, more than 1024"),
    (lambda c: c.update(vocab_size=10**12), "vocab_size 1000000000000 is not in 1..16777216"),
]
# decode.main on each folder, in one process under the cap: [(status, stderr)] as JSON
DECODE_EACH = """import contextlib, io, json, sys, decode
out = []
for folder in sys.argv[2:]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = decode.main(["--model", folder, "--mode", "ctc", sys.argv[1]])
    out.append((code, err.getvalue()))
print(json.dumps(out))
"""


def test_a_config_claiming_sizes_its_weights_lack_is_one_line_in_bounded_memory(tiny, tmp_path):
    folders = []
    for k, (edit, _) in enumerate(CONFIG_LIES):
        folders.append(shutil.copytree(tiny.folder, tmp_path / f"m{k}"))
        config = json.loads((folders[-1] / "config.json").read_text())
        edit(config)
        (folders[-1] / "config.json").write_text(json.dumps(config))
    sf.write(tmp_path / "a.wav", np.zeros(8000, np.float32), 16000)
    limit = lambda: resource.setrlimit(resource.RLIMIT_AS, (MEMORY_CAP, MEMORY_CAP))  # noqa: E731
    r = subprocess.run([sys.executable, "-c", DECODE_EACH, str(tmp_path / "a.wav"), *map(str, folders)],
                       capture_output=True, text=True, cwd=ROOT, timeout=120,
                       env={**os.environ, "OMP_NUM_THREADS": "1"}, preexec_fn=limit)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr[-2000:]
    for folder, (_, says), (code, err) in zip(folders, CONFIG_LIES, json.loads(r.stdout)):
        assert code == 2 and says in one_line(err) and str(folder) in err, err


def one_line(err: str) -> str:
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return err.strip()


# --------------------------------------------------------------------------------------------------------------
# the released checkpoint's sizes are read from tensors of the right rank, and checked as a folder's config is

RELEASE_DAMAGE = [  # (tensor, replacement, what the one line must say)
    ("ctc_head.weight", torch.zeros(()), "tensor ctc_head.weight has shape (), expected 2 dimensions"),
    ("encoder.conv_stack.0.weight", torch.zeros(64, 80), "has shape (64, 80), expected 3 dimensions"),
    ("projector.linear.weight", torch.zeros(64), "tensor projector.linear.weight has shape (64,)"),
    ("encoder.conv_stack.0.weight", torch.zeros(64, 0, 3), "encoder.n_mels is 0, not between 1 and 201"),
    ("encoder.conv_stack.0.weight", torch.zeros(64, 5000, 3), "encoder.n_mels is 5000"),  # decoded silence before
]


@pytest.mark.parametrize("name,value,says", RELEASE_DAMAGE, ids=["scalar-ctc", "2d-conv", "1d-proj", "0-mels",
                                                                  "5000-mels"])
def test_a_release_checkpoint_with_odd_tensor_shapes_is_one_line_naming_it(tiny, tmp_path, capsys, name, value, says):
    sd = {k: v.clone() for k, v in tiny.model.state_dict().items() if not k.startswith("llm.")}
    sd[name] = value
    torch.save(sd, tmp_path / "model.pt")
    args = ["--checkpoint", tmp_path / "model.pt", "--decoder", tiny.root / "llm", "--tokenizer", tiny.tok.path]
    assert decode.main([*map(str, args), "--mode", "ctc", "x.wav"]) == 2
    err = capsys.readouterr().err
    assert says in one_line(err) and f"{tmp_path / 'model.pt'}: " in err, err


# --------------------------------------------------------------------------------------------------------------
# an output path that is not a regular file is refused, not replaced by one

def test_an_output_that_is_a_fifo_is_refused_and_left_as_it_was(tmp_path):
    fifo = tmp_path / "out.png"
    os.mkfifo(fifo)  # as root a device would do the same: `--out /dev/null` replaced /dev/null by a file
    with pytest.raises(OSError, match="is a FIFO, not a regular file"):
        with atomic_file(fifo, "wb") as f:
            f.write(b"picture")
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode) and os.listdir(tmp_path) == ["out.png"]  # no temporary left


def test_evaluate_out_onto_a_fifo_is_exit_2_after_the_summary(tiny, tmp_path, capsys):
    sf.write(tmp_path / "a.wav", np.zeros(8000, np.float32), 16000)
    (tmp_path / "m.jsonl").write_text(json.dumps({"audio_filepath": "a.wav", "text": "бір"}) + "\n")
    os.mkfifo(tmp_path / "out.jsonl")
    code = evaluate.main(["--manifest", str(tmp_path / "m.jsonl"), "--model", str(tiny.folder), "--mode", "ctc",
                          "--bootstrap", "0", "--json", "--out", str(tmp_path / "out.jsonl")])
    out, err = capsys.readouterr()
    assert code == 2 and json.loads(out)["n"] == 1 and "is a FIFO, not a regular file" in one_line(err)
    assert stat.S_ISFIFO(os.lstat(tmp_path / "out.jsonl").st_mode)


def test_train_seed_is_range_checked_with_the_other_flags():
    import train
    for seed in (-5, 2**32):
        with pytest.raises(ValueError, match=rf"^--seed {seed}: must be in \[0, 2\*\*32 - 1\]"):
            train.check_config(replace(train.TrainConfig(), train="t.jsonl", tokenizer="t.model", seed=seed))
    train.check_config(replace(train.TrainConfig(), train="t.jsonl", tokenizer="t.model", seed=2**32 - 1))


# --------------------------------------------------------------------------------------------------------------
# train_lm.py's flags are range-checked before anything is read or allocated

LM_FLAGS = [("--dim=-32", "--dim -32: must be in [2, 65536]"), ("--n-heads=3", "--n-heads 3: must be a count"),
            ("--n-kv-heads=3", "divides --n-heads 2"), ("--seq-len=1000000000", "--seq-len 1000000000"),
            ("--steps=0", "--steps 0"), ("--warmup=0", "--warmup 0"), ("--lr=nan", "--lr nan"),
            ("--valid-fraction=1", "--valid-fraction 1.0"), ("--copy-fraction=-1", "--copy-fraction -1.0"),
            ("--batch-size=0", "--batch-size 0"), ("--n-layers=100000", "--n-layers 100000"),
            ("--seed=-1", "--seed -1"), ("--dim=65536", "make over 1e+09 parameters")]


@pytest.mark.parametrize("flag,says", LM_FLAGS, ids=[f for f, _ in LM_FLAGS])
def test_train_lm_flags_out_of_range_are_one_line(tiny, tmp_path, capsys, flag, says):
    import train_lm
    (tmp_path / "lm.txt").write_text("бір екі үш\nтөрт бес\n" * 20, encoding="utf-8")
    argv = ["--text", str(tmp_path / "lm.txt"), "--tokenizer", str(tiny.tok.path), "--out", str(tmp_path / "lm"),
            "--dim", "32", "--n-heads", "2", "--n-kv-heads", "1", "--ffn-dim", "64", "--seq-len", "16", "--steps", "1"]
    with pytest.raises(SystemExit) as e:
        train_lm.main(argv + [flag])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and err.startswith("error: ") and says in err  # exit 2: bad input, as train.py
    assert "\n" not in err and not (tmp_path / "lm").exists()


def test_train_lm_init_continues_a_saved_lm_and_refuses_another_vocabulary(tiny, tmp_path, capsys):
    import train_lm
    from decoder import Llama, LlamaConfig, load_llama, save_llama
    (tmp_path / "lm.txt").write_text("бір екі үш\nтөрт бес\n" * 20, encoding="utf-8")
    argv = ["--text", str(tmp_path / "lm.txt"), "--tokenizer", str(tiny.tok.path), "--seq-len", "64",
            "--batch-size", "2", "--warmup", "1", "--eval-every", "1000"]
    train_lm.main(argv + ["--out", str(tmp_path / "a"), "--dim", "32", "--n-heads", "2", "--n-kv-heads", "1",
                          "--ffn-dim", "64", "--n-layers", "1", "--steps", "3"])
    train_lm.main(argv + ["--out", str(tmp_path / "b"), "--init", str(tmp_path / "a"), "--steps", "2"])
    a, b = load_llama(tmp_path / "a"), load_llama(tmp_path / "b")
    assert a.config == b.config  # the shape of --init, not the default --dim 192
    assert any(not torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))
    # a Llama with fewer rows than the tokenizer has ids is refused in a line, before training
    small = Llama(LlamaConfig(vocab_size=tiny.tok.vocab_size - 10, dim=32, n_layers=1, n_heads=2, n_kv_heads=1,
                              ffn_dim=64))
    save_llama(small, tmp_path / "small")
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        train_lm.main(argv + ["--out", str(tmp_path / "c"), "--init", str(tmp_path / "small"), "--steps", "1"])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and "rows, but" in err and "\n" not in err and not (tmp_path / "c").exists()


def test_train_lm_blocks_too_short_for_a_copy_exercise_are_one_line(tiny, tmp_path, capsys):
    """At --seq-len 8 every exercise is cut inside its spoken part: nothing to learn, and a nan copy loss before."""
    import train_lm
    (tmp_path / "lm.txt").write_text("бір екі үш төрт бес алты жеті сегіз\nтоғыз он\n" * 20, encoding="utf-8")
    argv = ["--text", str(tmp_path / "lm.txt"), "--tokenizer", str(tiny.tok.path), "--out", str(tmp_path / "lm"),
            "--dim", "32", "--n-heads", "2", "--n-kv-heads", "1", "--ffn-dim", "64", "--steps", "1"]
    with pytest.raises(SystemExit) as e:
        train_lm.main(argv + ["--seq-len", "8"])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and "--seq-len 8: too short for a copy exercise" in err and "\n" not in err
    assert not (tmp_path / "lm").exists()
    train_lm.main(argv + ["--seq-len", "8", "--copy-fraction", "0"])  # plain text blocks need no exercise


def test_train_lm_text_shorter_than_one_block_still_trains(tiny, tmp_path):
    """A training split of fewer ids than half a block used to give text blocks shorter than the copy blocks joined
    to them (a traceback from torch.cat); it now wraps round to fill the block."""
    import train_lm
    (tmp_path / "lm.txt").write_text("бір екі\nүш\nтөрт бес\n", encoding="utf-8")
    train_lm.main(["--text", str(tmp_path / "lm.txt"), "--tokenizer", str(tiny.tok.path), "--out", str(tmp_path / "lm"),
                   "--dim", "32", "--n-heads", "2", "--n-kv-heads", "1", "--ffn-dim", "64", "--steps", "2",
                   "--seq-len", "128", "--batch-size", "4", "--valid-fraction", "0.34", "--copy-slips", "0.5"])
    assert (tmp_path / "lm" / "model.safetensors").exists()
    blocks = train_lm.text_blocks([[5, 6], [7]], seq_len=16, eos_id=0)
    assert blocks.shape == (1, 17) and blocks[0, :10].tolist() == [5, 6, 0, 7, 0, 5, 6, 0, 7, 0]
    assert (tmp_path / "lm" / "model.safetensors").exists()


def test_train_lm_with_no_training_lines_is_an_error(tiny, tmp_path):
    import train_lm
    (tmp_path / "lm.txt").write_text("бір екі үш\n", encoding="utf-8")  # its one line is held out to validate
    with pytest.raises(ValueError, match="0 training and 1 validation lines"):
        train_lm.load_lines(str(tmp_path / "lm.txt"), tiny.tok, 0.02, 0)


# --------------------------------------------------------------------------------------------------------------
# listen.py names a row it cannot read, as decode.py names a file, instead of measuring the rest in silence

def test_listen_names_each_unreadable_row_and_exits_1(tiny, tmp_path, capsys):
    import listen
    rows = []
    for i, text in enumerate(["бір екі", "үш төрт", "бес алты"]):
        sf.write(tmp_path / f"u{i}.wav", (0.1 * np.random.default_rng(i).standard_normal(12000)).astype(np.float32),
                 16000)
        rows.append({"audio_filepath": f"u{i}.wav", "text": text})
    os.mkfifo(tmp_path / "pipe.wav")
    rows[1:1] = [{"audio_filepath": "pipe.wav", "text": "жеті"},
                 {"audio_filepath": "/dev/zero", "text": "сегіз"}]
    (tmp_path / "m.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    assert listen.main(["--manifest", str(tmp_path / "m.jsonl"), "--model", str(tiny.folder)]) == 1
    out, err = capsys.readouterr()
    assert out.startswith("3 utterances, CE"), out
    assert err.splitlines() == [f"listen.py: {tmp_path / 'm.jsonl'}:2: {tmp_path / 'pipe.wav'}: is a FIFO, not a "
                                "regular file", f"listen.py: {tmp_path / 'm.jsonl'}:3: /dev/zero: is a device, not a "
                                "regular file"]


# --------------------------------------------------------------------------------------------------------------
# JSON that json.loads refuses with other errors than JSONDecodeError: nesting too deep, integers too long

DEEP, LONG_INT = "[" * 100_000 + "]" * 100_000, '{"vocab_size": 1' + "0" * 5000 + "}"


@pytest.mark.parametrize("text,says", [(DEEP, "nested too deeply"), (LONG_INT, "Exceeds the limit (4300 digits)")],
                         ids=["deep", "int"])
def test_json_that_python_cannot_hold_is_one_line_naming_the_file(tiny, tmp_path, capsys, text, says):
    folder = shutil.copytree(tiny.folder, tmp_path / "m")
    (folder / "config.json").write_text(text)
    assert decode.main(["--model", str(folder), "x.wav"]) == 2
    err = capsys.readouterr().err
    assert f"{folder / 'config.json'}: not JSON we read ({says}" in one_line(err)
    manifest = tmp_path / "m.jsonl"  # a manifest line, and a log line for plot.py, alike
    manifest.write_text(json.dumps({"audio_filepath": "a.wav", "text": "бір"}) + "\n" + text + "\n")
    assert evaluate.main(["--manifest", str(manifest), "--model", str(tiny.folder)]) == 2
    err = capsys.readouterr().err
    assert f"{manifest}:2: not JSON we read ({says}" in one_line(err)
    import plot
    assert plot.main(["--log", str(manifest), "--out", str(tmp_path / "c.png")]) == 1
    assert f"{manifest}:1: not a train.py log record" in one_line(capsys.readouterr().err)
    manifest.write_text(text + "\n")
    assert plot.main(["--log", str(manifest), "--out", str(tmp_path / "c.png")]) == 1
    assert f"{manifest}:1: not a JSON line" in one_line(capsys.readouterr().err)
    assert evaluate.main(["--compare", str(manifest), str(manifest)]) == 2
    assert f"{manifest}: line 1 is not a result line" in one_line(capsys.readouterr().err)


def test_plot_log_that_is_a_fifo_or_a_device_is_refused_before_it_is_read(tmp_path):
    fifo = tmp_path / "log.jsonl"
    os.mkfifo(fifo)  # read_text waited forever for a writer; /dev/zero filled the memory
    out = str(tmp_path / "c.png")
    rc, _, err = python(f"import plot; print([plot.main(['--log', p, '--out', {out!r}]) for p in ({str(fifo)!r}, "
                        "'/dev/zero')])")
    assert rc == 0 and err.strip().splitlines() == [f"plot.py: {fifo}: is a FIFO, not a regular file",
                                                    "plot.py: /dev/zero: is a device, not a regular file"], err


@pytest.mark.parametrize("row,says", [('{"id": 1, "ref": 5, "hyp": null}', "not int and NoneType"),
                                      ('{"id": "1", "ref": "бір", "hyp": ["x"]}', "not str and list"),
                                      ('{"id": 1, "ref": NaN, "hyp": "a"}', "not float and str")])
def test_compare_refuses_result_lines_whose_texts_are_not_strings(tmp_path, capsys, row, says):
    path = tmp_path / "a.jsonl"
    path.write_text('{"id": "0", "ref": "бір", "hyp": "бір"}\n' + row + "\n", encoding="utf-8")
    assert evaluate.main(["--compare", str(path), str(path), "--bootstrap", "0"]) == 2
    assert f"{path}: line 2: ref and hyp must be strings, {says}" in one_line(capsys.readouterr().err)


# --------------------------------------------------------------------------------------------------------------
# word times of a short file stop at the end of its audio, not of its last 40 ms frame (rounded up, padded)

def test_word_times_of_a_short_file_stay_inside_its_audio(tiny, tmp_path, capsys):
    for n in (640, 1000, 6561, 16001):  # 0.04 s: two encoder frames, 0.08 s, of which the second is mostly padding
        path = tmp_path / f"s{n}.wav"
        sf.write(path, (0.3 * np.random.default_rng(n).standard_normal(n)).astype(np.float32), 16000)
        # a CTC alignment; the release's decoding, whose 256 tokens no CTC path of a short file can carry, so its
        # words are spread; greedy, at most a token a frame, either
        for mode in ("ctc", "reference", "greedy"):
            assert decode.main(["--model", str(tiny.folder), "--mode", mode, "--timestamps", "--format", "jsonl",
                                str(path)]) == 0
            words = json.loads(capsys.readouterr().out)["words"]
            assert words or mode == "greedy", (n, mode)
            for w in words:
                assert 0 <= w["start"] <= w["end"] <= round(n / 16000, 3), (n, mode, w)


def test_train_lm_with_paused_exercises_trains_and_reports_their_loss(tiny, tmp_path, capsys):
    import train_lm
    (tmp_path / "lm.txt").write_text("бір екі үш\nтөрт бес\n" * 20, encoding="utf-8")
    train_lm.main(["--text", str(tmp_path / "lm.txt"), "--tokenizer", str(tiny.tok.path), "--out", str(tmp_path / "lm"),
                   "--dim", "32", "--n-heads", "2", "--n-kv-heads", "1", "--ffn-dim", "64", "--n-layers", "1",
                   "--seq-len", "128", "--batch-size", "2", "--warmup", "1", "--steps", "2", "--copy-pauses", "0.5",
                   "--silence-ramp", "0"])
    out = capsys.readouterr().out
    assert "with pauses" in out and (tmp_path / "lm" / "model.safetensors").exists()
