"""Every script's --device and --help, as a user meets them: whole processes, their exit codes and messages."""
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import soundfile as sf
import torch

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = str(ROOT / "samples" / "sample1.wav")
TOKENIZER = str(ROOT / "models" / "teach" / "tokenizer.model")


def run(*args, cwd=ROOT):
    return subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=300)


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    path = tmp_path_factory.mktemp("m") / "m.jsonl"
    rows = [dict(audio_filepath=SAMPLE, text="оқиғалар тыңдаушысына аялдатылған", duration=3.2),
            dict(audio_filepath=SAMPLE.replace("sample1", "sample3"),
                 text="белгіленсе қаламдағы батырма планшетке тиіп тұрғанда ғана істейді", duration=6.0)]
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def commands(manifest, tmp):
    """Each script with the least it needs to get as far as choosing its device."""
    return {
        "decode": ["decode.py", SAMPLE],
        "evaluate": ["evaluate.py", "--manifest", manifest],
        "plot": ["plot.py", SAMPLE, "--out", tmp / "p.png"],
        "listen": ["listen.py", "--manifest", manifest],
        "train_lm": ["train_lm.py", "--text", manifest, "--tokenizer", TOKENIZER, "--out", tmp / "lm"],
        "train": ["train.py", "--train", manifest, "--valid", "", "--tokenizer", TOKENIZER,
                  "--out", tmp / "run"],
    }


SCRIPTS = ["decode", "evaluate", "plot", "listen", "train_lm", "train"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("script", SCRIPTS)
def test_cuda_without_cuda_is_one_line_and_exit_2(script, manifest, tmp_path):
    out = run(*commands(manifest, tmp_path)[script], "--device", "cuda")
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert "--device cuda: " in out.stderr and "use --device cpu" in out.stderr, out.stderr
    assert not (tmp_path / "run" / "best").exists() and not (tmp_path / "lm").exists()


@pytest.mark.parametrize("script", [pytest.param(s, marks=[] if s == "train" else pytest.mark.slow) for s in SCRIPTS])
def test_an_unknown_device_is_refused_with_the_choices(script, manifest, tmp_path):
    out = run(*commands(manifest, tmp_path)[script], "--device", "gpu")
    assert out.returncode == 2 and "Traceback" not in out.stderr
    if script == "train":  # train.py also takes cuda:N, so its own check names the choices
        assert out.stderr.strip() == "error: --device gpu: must be auto, cpu, cuda or cuda:N", out.stderr
    else:
        assert "invalid choice: 'gpu'" in out.stderr and "'auto', 'cpu', 'cuda'" in out.stderr, out.stderr


def test_timestamps_need_jsonl():
    out = run("decode.py", "--timestamps", SAMPLE)
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.strip() == "decode.py: error: --timestamps needs --format jsonl (words are printed as JSON)"
    out = run("decode.py", "--timestamps", "--format", "jsonl", SAMPLE)
    assert out.returncode == 0, out.stderr
    words = json.loads(out.stdout)["words"]
    assert [w["word"] for w in words] == json.loads(out.stdout)["text"].split() and len(words) >= 2
    assert all(w["start"] < w["end"] for w in words)
    assert all(a["end"] <= b["start"] for a, b in zip(words, words[1:]))  # ends stop at the next word
    assert words[-1]["end"] <= sf.info(SAMPLE).duration + 0.04  # within the audio (one 40 ms frame of slack)


def test_train_help_shows_the_named_presets_values():
    release, teach = run("train.py", "--preset", "300m", "--help").stdout, run("train.py", "--help").stdout
    flat = lambda text: " ".join(text.split())  # noqa: E731 (argparse wraps lines)
    assert "--batch-size N utterances per micro-batch (per process) (default: 12)" in flat(release)
    # another preset's values come with the released recipe's beside them
    assert "--batch-size N utterances per micro-batch (per process) (default: 32; released recipe: 12)" in flat(teach)
    assert "(default: 0.002; released recipe: 0.0002)" in flat(teach) and "0.002" not in flat(release)
    assert "--clip X gradient-norm clipping (default: 1.0)" in flat(teach)  # the same in both: said once
    assert "--stage {ctc,e2e}" in teach and "--dtype {auto,bfloat16,float32}" in teach
    assert "--encoder {300m,150m,teach,tiny}" in teach and "auto (cuda when present, else cpu), cpu, cuda or cuda:N" in flat(teach)
    for text in (release, teach):
        entries = flat(text).split(" --")
        assert not [e for e in entries if e.count("(default:") > 1]


def test_plain_train_py_is_the_teaching_recipe(tmp_path):
    """No flags: the teach preset's ctc stage on data/synth with the shipped tokenizer and decoder; --stage e2e
    continues from its best/; any flag overrides; missing teaching data name the command that makes them."""
    import train as T
    cfg = T.parse_args([])
    assert (cfg.stage, cfg.encoder, cfg.out, cfg.init, cfg.epochs) == ("ctc", "teach", "runs/teach/ctc", "", 8)
    assert T.parse_args(["--stage", "ctc"]).epochs == 8 and T.parse_args(["--preset", "300m"]).epochs == 5
    assert Path(cfg.train).resolve() == ROOT / "data/synth/train.jsonl"
    assert Path(cfg.tokenizer).resolve() == ROOT / "models/teach/tokenizer.model"
    assert Path(cfg.decoder).resolve() == ROOT / "models/teach/decoder"
    e2e = T.parse_args(["--stage", "e2e"])
    assert (e2e.init, e2e.out, e2e.lr, e2e.epochs, e2e.stop_at) == ("runs/teach/ctc/best", "runs/teach/e2e", 1e-3, 4, 0)
    assert e2e.projector_fit and not T.TrainConfig().projector_fit  # the teaching e2e stage fits; the release did not
    assert e2e.row_ctc_weight == 0.3 and T.TrainConfig().row_ctc_weight == 0 == cfg.row_ctc_weight  # nor this
    assert T.parse_args(["--stage", "e2e", "--lr", "5e-4", "--out", "x"]).lr == 5e-4
    assert T.parse_args(["--batch-size", "4"]).batch_size == 4
    assert T.parse_args(["--preset", "300m", "--train", "t", "--tokenizer", "t"]).batch_size == 12
    if (ROOT / "data" / "synth" / "train.jsonl").exists():
        pytest.skip("the teaching data are made here")
    out = run("train.py", "--out", tmp_path / "run")
    assert out.returncode == 2 and "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1
    assert "python data/prepare_synthetic.py all" in out.stderr and "train.jsonl" in out.stderr
    assert not (tmp_path / "run").exists()


def test_teaching_pipeline_script_prints_help_instead_of_running(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "RUN": str(tmp_path / "run")}
    out = subprocess.run(["bash", str(ROOT / "scripts" / "train_teaching_model.sh"), "--help"], capture_output=True,
                         text=True, env=env, timeout=30)
    assert out.returncode == 0 and "Build the teaching model from nothing" in out.stdout
    assert "==" not in out.stdout and not (tmp_path / "run").exists()  # no stage started, nothing made
    out = subprocess.run(["bash", str(ROOT / "scripts" / "train_teaching_model.sh"), "--fast"], capture_output=True,
                         text=True, env=env, timeout=30)
    assert out.returncode == 2 and "takes no arguments" in out.stderr and not (tmp_path / "run").exists()


def test_train_lm_defaults_are_the_teaching_lm():
    flat = " ".join(run("train_lm.py", "--help").stdout.split())
    for flag, value in [("--dim", 192), ("--n-layers", 4), ("--n-heads", 4), ("--n-kv-heads", 4), ("--ffn-dim", 512),
                        ("--seq-len", 512), ("--batch-size", 8), ("--copy-fraction", 0.5), ("--lr", 0.003),
                        ("--steps", 1500), ("--silence-ramp", 0.4)]:
        shown = re.search(rf" {flag} [A-Z_]+ [^(]*(?:\([^d][^)]*\)[^(]*)*\(default: ([^)]*)\)", flat)
        assert shown and shown[1] == str(value), (flag, shown and shown[0])


@pytest.mark.parametrize("argv", [
    ["decode.py", "--beam-size", "1e9", "samples/sample1.wav"],
    ["evaluate.py", "--ref", "a.txt", "--hyp", "b.txt", "--bootstrap", "many"],
    ["listen.py", "--manifest", "m.jsonl", "--batch-size", "2.5"],
    ["plot.py", "samples/sample1.wav", "--out", "x.png", "--layer", "one"],
    ["train.py", "--stop-at", "nan"],
    ["train_lm.py", "--text", "t", "--tokenizer", "t", "--out", "o", "--steps", "1e3"],
    ["tokenizer.py", "--text", "t", "--out", "o", "--vocab-size", "big"],
    ["data/prepare_synthetic.py", "nonsense"],
])
def test_a_flag_argparse_cannot_read_is_one_line_exit_2(argv):
    """A value of the wrong type, an unknown choice: one line naming the flag, no usage block (cli.ArgumentParser)."""
    out = run(*argv)
    err = out.stderr.strip().splitlines()
    assert out.returncode == 2 and len(err) == 1 and "error: argument" in err[0] and "usage:" not in out.stderr, \
        out.stderr
