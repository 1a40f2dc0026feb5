"""train.py on bad input: every problem is one line naming the file, exit 2, and nothing loaded runs code."""
import io
import json
import pickle
import subprocess
import sys
import zipfile
from dataclasses import fields, replace
from pathlib import Path

import numpy as np
import pytest
import torch

import run_folder
import train as T
from helpers import noise_utterances

ROOT = Path(__file__).resolve().parent.parent
TEXTS = ["сәлеметсіз бе", "бүгін ауа райы жақсы", "қазақ тілі өте әдемі", "мен кітап оқығанды жақсы көремін"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Four noise 'utterances' (0.6 .. 1.5 s) and their manifest."""
    root = tmp_path_factory.mktemp("data")
    noise_utterances(root, TEXTS)
    return root


def write_manifest(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def config(tiny, data, out, **kw):
    """A tiny ctc run on the fixture data: a few steps take well under a second."""
    base = dict(stage="ctc", encoder="tiny", train=str(data / "train.jsonl"), tokenizer=str(tiny.tok.path),
                decoder=str(tiny.root / "llm"), out=str(out), batch_size=2, grad_accum=1, lr=1e-3, max_steps=2,
                dropout=0.0, spec_augment=False, speed_perturb=False, num_workers=0, eval_wer=0, save_every=1,
                log_every=1)
    return replace(T.TrainConfig(), **{**base, **kw})


def cli(cfg):
    """The train.py flags that give `cfg` (the release preset: it sets nothing these flags do not)."""
    args = ["--preset", "300m"]
    for f in fields(T.TrainConfig):
        value, flag = getattr(cfg, f.name), "--" + f.name.replace("_", "-")
        if isinstance(value, bool):
            args.append(flag if value else "--no-" + flag[2:])
        elif value != "":
            args += [flag, str(value)]
    return args


def run_train(args):
    """train.py in a subprocess: exit codes and tracebacks are what is tested."""
    return subprocess.run([sys.executable, str(ROOT / "train.py"), *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)


def one_line_error(proc, *says):
    """Exit 2, stderr one line without a traceback, naming each of `says`."""
    err = proc.stderr.strip()
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    for s in says:
        assert str(s) in err, (s, err)
    return err


class Payload:
    """Unpickling this object runs code: it creates the marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').close()",)


def plant(path, marker, **tensors):
    """Save a dict holding a payload (beside real tensors) where the project expects a .pt, and check it is live."""
    torch.save({"payload": Payload(marker), **tensors}, path)  # first: unpickled before any tensor
    with zipfile.ZipFile(path) as z:  # a plain unpickling of the file's data.pkl does run it: the tests can fail
        pkl = z.read(next(n for n in z.namelist() if n.endswith("data.pkl")))
    unpickler = pickle.Unpickler(io.BytesIO(pkl))
    unpickler.persistent_load = lambda pid: None  # no storages: tensors after the payload may fail to rebuild
    try:
        unpickler.load()
    except Exception:
        pass  # the payload, first in the file, has run by then (the marker shows it)
    assert marker.exists()
    marker.unlink()


# ---------------------------------------------------------------------------------------------------------------
# nothing loaded runs code

def test_trainer_state_loads_with_weights_only_and_restores_every_rng(tiny, data, tmp_path):
    T.train(config(tiny, data, tmp_path / "run", max_steps=1))
    state = torch.load(tmp_path / "run" / "checkpoint-1" / "trainer.pt", weights_only=True)
    assert state["step"] == 1 and state["optimizer"]["state"]
    saved = T.rng_state()
    want = (T.random.random(), np.random.rand(), torch.rand(1))
    T.set_rng_state(saved)
    assert (T.random.random(), np.random.rand(), torch.rand(1)) == want


def test_resume_refuses_a_trainer_state_that_would_run_code(tiny, data, tmp_path):
    cfg = config(tiny, data, tmp_path / "run", max_steps=1)
    T.train(cfg)
    trainer = tmp_path / "run" / "checkpoint-1" / "trainer.pt"
    marker = tmp_path / "ran"
    plant(trainer, marker, step=1)
    proc = run_train(cli(replace(cfg, resume=True, max_steps=2)))
    one_line_error(proc, trainer, "refused", "exec")
    assert not marker.exists()
    assert not (tmp_path / "run" / "checkpoint-2").exists()  # and it did not train on regardless


def test_release_loader_refuses_a_model_pt_that_would_run_code(tiny, tmp_path):
    sd = {k: v for k, v in tiny.model.state_dict().items() if not k.startswith("llm.")}
    marker = tmp_path / "ran"
    plant(tmp_path / "model.pt", marker, **sd)
    proc = subprocess.run([sys.executable, str(ROOT / "decode.py"), "--checkpoint", str(tmp_path / "model.pt"),
                           "--decoder", str(tiny.root / "llm"), "--tokenizer", str(tiny.tok.path), "x.wav"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    one_line_error(proc, "model.pt")
    assert not marker.exists()


# ---------------------------------------------------------------------------------------------------------------
# nothing to train on

def main_error(capsys, cfg, *says):
    """train.main on `cfg` in this process: exit 2 and one line on stderr naming each of `says`."""
    capsys.readouterr()  # what earlier runs printed
    with pytest.raises(SystemExit) as e:
        T.main(cli(cfg))
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2, (e.value.code, err)
    assert len(err.splitlines()) == 1 and err.startswith("error: "), err
    for s in says:
        assert str(s) in err, (s, err)
    return err


def test_an_empty_manifest_stops_at_once_even_with_max_steps(tiny, data, tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    # before: --max-steps made the loop wait for a batch that never came, at 100 % CPU; the timeout catches a hang
    proc = run_train(cli(config(tiny, data, tmp_path / "out", train=str(empty), max_steps=5)))
    one_line_error(proc, empty, "no rows")


def test_a_manifest_empty_after_filtering_names_why(tiny, data, tmp_path, capsys):
    cfg = config(tiny, data, tmp_path / "out", max_seconds=0.5, max_steps=5)  # every utterance is >= 0.6 s
    main_error(capsys, cfg, data / "train.jsonl", "all 4 rows skipped", "4 longer than 0.5 s")
    rows = [dict(audio_filepath="u0.wav", text=" !!! ", duration=0.6)] * 2  # nothing left once normalised
    manifest = write_manifest(tmp_path / "blank.jsonl", rows)
    main_error(capsys, replace(cfg, train=str(manifest), max_seconds=15.0), manifest, "2 empty text")
    main_error(capsys, replace(cfg, valid=str(manifest), max_seconds=15.0), manifest, "nothing to validate")


@pytest.mark.parametrize("kw, says", [
    (dict(batch_size=1, grad_accum=5), "4 utterances make 4 batch(es) of --batch-size 1"),  # 4 batches < 5 a step
    (dict(max_steps=0, epochs=0), "not one optimiser step"),
])
def test_a_run_of_zero_optimiser_steps_is_an_error(tiny, data, tmp_path, capsys, kw, says):
    main_error(capsys, config(tiny, data, tmp_path / "out", **kw), says)
    assert not list((tmp_path / "out").glob("checkpoint-*"))


# ---------------------------------------------------------------------------------------------------------------
# mistyped manifests

GOOD = '{"audio_filepath": "u0.wav", "text": "сәлем", "duration": 0.6}\n'


@pytest.mark.parametrize("line, says", [
    (b'{"audio_filepath": "u0.wav", "text": 5, "duration": 0.6}', "text is int, not a string"),
    (b'{"audio_filepath": "u0.wav", "duration": 0.6}', "no text"),
    (b'{"text": "bar", "duration": 0.6}', "no audio_filepath"),
    (b'{"audio_filepath": ["u0.wav"], "text": "bar"}', "audio_filepath is list, not a string"),
    (b'{"audio_filepath": "u0.wav", "text": "bar", "duration": "0.6"}', 'duration "0.6" is not a number'),
    (b'{"audio_filepath": "u0.wav", "text": "bar", "duration": NaN}', "duration NaN is not a number"),
    (b'{"audio_filepath": "u0.wav", "text": "bar", "duration": -1}', "duration -1 is not a number"),
    (b'{"audio_filepath": "u0.wav", "text": "bar", "duration": true}', "duration true is not a number"),
    (b'{"audio_filepath": "u0.wav", "text": ', "not JSON"),
    (b'["u0.wav", "bar"]', "not a JSON object"),
    ('{"audio_filepath": "u0.wav", "text": "сәлем"}'.encode("utf-16"), "not UTF-8"),
    (b'{"audio_filepath": "u0.wav", "text": "\xd2\x9b\xd2"}', "not UTF-8 (byte 0xd2 at column 41)"),
])
def test_a_mistyped_manifest_line_is_named_by_file_and_line(tmp_path, line, says):
    from dataset import read_manifest
    manifest = tmp_path / "m.jsonl"
    manifest.write_bytes(GOOD.encode() + b"\n" + GOOD.encode() + line + b"\n" + GOOD.encode())
    with pytest.raises(ValueError) as e:
        read_manifest(manifest)
    msg = str(e.value)
    assert msg.startswith(f"{manifest}:4: ") and says in msg and "\n" not in msg, msg


def test_a_mistyped_manifest_stops_train_py_with_exit_2(tiny, data, tmp_path, capsys):
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(GOOD.replace("u0.wav", str(data / "u0.wav")) + '{"audio_filepath": 1, "text": "x"}\n')
    main_error(capsys, config(tiny, data, tmp_path / "out", train=str(manifest)), f"{manifest}:2:", "audio_filepath")


# ---------------------------------------------------------------------------------------------------------------
# unreadable audio

def manifest_with_bad_rows(data, tmp_path, n_bad):
    """The four good rows, then n_bad rows whose audio is missing, garbage or cut short, in turn."""
    (tmp_path / "junk.wav").write_bytes(b"RIFF not really a wav")
    good = (data / "u0.wav").read_bytes()
    (tmp_path / "cut.wav").write_bytes(good[: len(good) // 2])
    rows = [dict(audio_filepath=str(data / f"u{i}.wav"), text=t, duration=0.6 + 0.3 * i) for i, t in enumerate(TEXTS)]
    kinds = ["missing.wav", "junk.wav", "cut.wav"]
    rows += [dict(audio_filepath=str(tmp_path / kinds[i % 3]), text="бұзық", duration=0.6) for i in range(n_bad)]
    return write_manifest(tmp_path / "bad.jsonl", rows)


def bad_rows(out):
    lines = (out / "bad_rows.tsv").read_text(encoding="utf-8").splitlines()
    assert lines[0] == "source\tline\taudio\tproblem"
    return [line.split("\t") for line in lines[1:]]


def test_unreadable_rows_are_named_and_listed_and_training_goes_on_below_the_limit(tiny, data, tmp_path, capsys):
    manifest = manifest_with_bad_rows(data, tmp_path, 7)  # 7 of 11 rows
    T.train(config(tiny, data, tmp_path / "out", train=str(manifest), max_bad_fraction=0.7, max_steps=1))
    log = capsys.readouterr().out
    named = [line for line in log.splitlines() if line.startswith(f"warning: {manifest}:") and "skipped" in line]
    assert len(named) == T.SHOW_BAD_ROWS and f"{manifest}:5: {tmp_path / 'missing.wav'}: no such file" in named[0]
    assert "not readable as audio" in named[1] and "truncated" in named[2]
    assert "2 more unreadable rows" in log and "4 utterances (0 skipped, 7 unreadable)" in log
    listed = bad_rows(tmp_path / "out")
    assert [r[1] for r in listed] == [str(n) for n in range(5, 12)] and all(r[0] == str(manifest) for r in listed)
    assert (tmp_path / "out" / "checkpoint-1").is_dir()
    # resumed on a clean manifest: no stale list left behind
    T.train(config(tiny, data, tmp_path / "out", max_steps=2, resume=True, allow_changes=True))
    assert not (tmp_path / "out" / "bad_rows.tsv").exists()


def test_more_unreadable_rows_than_the_limit_stop_before_training(tiny, data, tmp_path, capsys):
    manifest = manifest_with_bad_rows(data, tmp_path, 1)  # 1 of 5: 20 % > the default 1 %
    main_error(capsys, config(tiny, data, tmp_path / "out", train=str(manifest)),
               manifest, "1 of 5 rows have unreadable audio (20.0 % > --max-bad-fraction 0.01)", "bad_rows.tsv")
    assert len(bad_rows(tmp_path / "out")) == 1
    assert not list((tmp_path / "out").glob("checkpoint-*"))


def test_a_manifest_of_only_unreadable_rows_always_stops(tiny, data, tmp_path):
    manifest = manifest_with_bad_rows(data, tmp_path, 3)
    only_bad = write_manifest(tmp_path / "only_bad.jsonl", [json.loads(l) for l in manifest.open()][4:])
    # before: loss=0.000 for every step and exit 0; even a limit of 100 % does not let it train
    proc = run_train(cli(config(tiny, data, tmp_path / "out", train=str(only_bad), max_bad_fraction=1.0)))
    one_line_error(proc, only_bad, "3 of 3 rows have unreadable audio (all of them)")
    assert len(bad_rows(tmp_path / "out")) == 3


def test_a_row_without_duration_gets_the_files_and_the_length_filter(tiny, data, tmp_path):
    from dataset import open_dataset
    rows = [dict(audio_filepath=str(data / f"u{i}.wav"), text=t) for i, t in enumerate(TEXTS)]
    ds = open_dataset(write_manifest(tmp_path / "m.jsonl", rows), tiny.tok, max_seconds=1.0)
    assert ds.drop_unreadable() == []
    assert ds.durations() == [0.6, 0.9] and ds.why_skipped == {"longer than 1 s": 2}


# ---------------------------------------------------------------------------------------------------------------
# one run per output folder

def test_a_second_run_on_the_same_out_is_refused(tiny, data, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    run_folder.lock_out(out)  # this process is "the first run"
    try:
        assert (out / "train.lock").read_text().strip() == str(T.os.getpid())
        proc = run_train(cli(config(tiny, data, out)))
        one_line_error(proc, out / "train.lock", f"pid {T.os.getpid()}")
        assert not list(out.glob("checkpoint-*"))
    finally:
        run_folder.release_out(out)


def test_the_lock_of_a_dead_run_is_taken_over(tiny, data, tmp_path, capsys):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    out = tmp_path / "out"
    out.mkdir()
    (out / "train.lock").write_text(f"{dead.pid}\n")  # what a killed run leaves behind
    T.train(config(tiny, data, out, stop_at=1))
    assert f"pid {dead.pid}) is gone; taking it over" in capsys.readouterr().out
    assert (out / "checkpoint-1").is_dir()
    assert (out / "train.lock").read_text() == ""  # released at the end
    T.train(config(tiny, data, out, resume=True))  # and the next run takes it without a word
    assert "taking it over" not in capsys.readouterr().out and (out / "checkpoint-2").is_dir()


# ---------------------------------------------------------------------------------------------------------------
# --resume: damaged checkpoints, stray folders, changed settings

def cut(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def nan_weights(path):
    from safetensors.torch import load_file, save_file
    sd = load_file(path)
    sd["ctc_head.bias"][3] = float("nan")
    save_file(sd, path)


@pytest.mark.parametrize("name, damage, says", [
    ("trainer.pt", cut, "damaged or not a torch file"),
    ("trainer.pt", lambda p: p.write_bytes(b"\x00garbage" * 100), "damaged or not a torch file"),
    ("model.safetensors", cut, "not a readable safetensors file"),
    ("model.safetensors", nan_weights, "tensor ctc_head.bias holds NaN or inf"),
])
def test_resume_falls_back_to_the_newest_intact_checkpoint(tiny, data, tmp_path, capsys, name, damage, says):
    straight = T.train(config(tiny, data, tmp_path / "a", max_steps=4))
    out = tmp_path / "b"
    T.train(config(tiny, data, out, max_steps=4, stop_at=3))
    damage(out / "checkpoint-3" / name)
    for stray in ("checkpoint-final", "checkpoint-abc", "checkpoint-9.tmp"):  # not checkpoints of this run
        (out / stray).mkdir()
    capsys.readouterr()
    resumed = T.train(config(tiny, data, out, max_steps=4, resume=True))
    log = capsys.readouterr().out
    warnings = [line for line in log.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and f"{out / 'checkpoint-3' / name}: {says}" in warnings[0], log
    assert f"resuming from {out / 'checkpoint-2'} (step 2)" in log
    for (n, p), q in zip(straight.own_state_dict().items(), resumed.own_state_dict().values()):
        assert torch.equal(p, q), n  # steps 3 and 4 redone from checkpoint-2: the same weights as a straight run
    assert (out / "checkpoint-final").is_dir()  # the strays are left alone, and pruning did not trip on them


def test_resume_with_every_checkpoint_damaged_is_an_error(tiny, data, tmp_path, capsys):
    cfg = config(tiny, data, tmp_path / "out", max_steps=3, stop_at=2)
    T.train(cfg)
    for ckpt in T.checkpoints(cfg.out):
        cut(ckpt / "trainer.pt")
    main_error(capsys, replace(cfg, resume=True), f"{cfg.out}: no intact checkpoint", "2 damaged")


def test_resume_with_changed_settings_lists_them_and_needs_allow_changes(tiny, data, tmp_path, capsys):
    cfg = config(tiny, data, tmp_path / "out", max_steps=3, stop_at=1)
    T.train(cfg)
    changed = replace(cfg, resume=True, lr=2e-3, batch_size=1, stop_at=2, log_every=5)  # the last two are free
    err = main_error(capsys, changed, tmp_path / "out" / "checkpoint-1", "--lr 0.001 -> 0.002",
                     "--batch-size 2 -> 1", "--allow-changes")
    assert "stop-at" not in err and "log-every" not in err
    assert not (tmp_path / "out" / "checkpoint-2").exists()
    T.train(replace(changed, allow_changes=True))
    assert "resuming with changed settings: --batch-size 2 -> 1, --lr 0.001 -> 0.002" in capsys.readouterr().out
    assert (tmp_path / "out" / "checkpoint-2").is_dir()


def test_resume_of_a_finished_run_is_an_error(tiny, data, tmp_path, capsys):
    cfg = config(tiny, data, tmp_path / "out", max_steps=1)
    T.train(cfg)
    main_error(capsys, replace(cfg, resume=True), "at step 1 already")


# ---------------------------------------------------------------------------------------------------------------
# a full disk

FULL_DISK = """
import errno, sys, torch, train
def full(obj, f, *a, **k):
    raise OSError(errno.ENOSPC, "No space left on device")
torch.save = full  # trainer.pt is the last file of a checkpoint: the model folder is already half written
train.main(sys.argv[1:])
"""


def test_a_full_disk_names_the_checkpoint_and_leaves_the_earlier_ones_intact(tiny, data, tmp_path):
    cfg = config(tiny, data, tmp_path / "out", max_steps=3, stop_at=1)
    T.train(cfg)
    before = {p.name: p.read_bytes() for p in (tmp_path / "out" / "checkpoint-1").iterdir()}
    proc = subprocess.run([sys.executable, "-c", FULL_DISK, *cli(replace(cfg, resume=True, stop_at=2))], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    one_line_error(proc, tmp_path / "out" / "checkpoint-2", "No space left on device", "earlier ones are intact")
    assert {p.name: p.read_bytes() for p in (tmp_path / "out" / "checkpoint-1").iterdir()} == before
    # best/ is the first session's (it had no validation: its last step)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["best", "checkpoint-1", "log.jsonl", "train.lock"]


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_a_full_disk_under_the_log_names_the_log(tiny, data, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "log.jsonl").symlink_to("/dev/full")  # every write: ENOSPC
    proc = run_train(cli(config(tiny, data, out)))
    one_line_error(proc, out / "log.jsonl", "No space left on device")


def test_temporaries_of_a_killed_run_are_removed_and_a_half_renamed_checkpoint_put_back(tiny, data, tmp_path):
    cfg = config(tiny, data, tmp_path / "out", max_steps=3, stop_at=1)
    T.train(cfg)
    out = tmp_path / "out"
    T.os.replace(out / "checkpoint-1", out / ".checkpoint-1.old")  # killed between atomic_folder's two renames
    for stale in (".checkpoint-2.tmp-k3j4", ".best.tmp-x8y9"):
        (out / stale).mkdir()
        (out / stale / "model.safetensors").write_bytes(b"half")
    (out / ".bad_rows.tsv.tmp-999").write_text("half")
    T.train(replace(cfg, resume=True, stop_at=2))
    assert sorted(p.name for p in out.iterdir()) == ["best", "checkpoint-1", "checkpoint-2", "log.jsonl",
                                                      "train.lock"]


# ---------------------------------------------------------------------------------------------------------------
# --init

def test_init_with_non_finite_weights_is_refused(tiny, data, tmp_path, capsys):
    T.train(config(tiny, data, tmp_path / "ctc", max_steps=1))
    init = tmp_path / "ctc" / "checkpoint-1"
    T.train(config(tiny, data, tmp_path / "ok", init=str(init), max_steps=1))  # the intact folder starts a run
    from safetensors.torch import load_file, save_file
    sd = load_file(init / "model.safetensors")
    sd["encoder.layers.0.k_proj.weight"][0, :3] = float("inf")
    save_file(sd, init / "model.safetensors")
    main_error(capsys, config(tiny, data, tmp_path / "e2e", init=str(init)), init / "model.safetensors",
               "encoder.layers.0.k_proj.weight holds NaN or inf")
    cut(init / "model.safetensors")
    main_error(capsys, config(tiny, data, tmp_path / "e2e", init=str(init)), init / "model.safetensors",
               "not a readable safetensors file")


def test_a_decoder_with_non_finite_weights_is_refused(tiny, data, tmp_path, capsys):
    from decoder import load_llama, save_llama
    llm = load_llama(tiny.root / "llm")
    with torch.no_grad():
        llm.tok_embeddings.weight[5, 0] = float("nan")
    save_llama(llm, tmp_path / "llm")
    main_error(capsys, config(tiny, data, tmp_path / "out", decoder=str(tmp_path / "llm")), tmp_path / "llm",
               "embed_tokens.weight holds NaN or inf")


# ---------------------------------------------------------------------------------------------------------------
# flags out of range

@pytest.mark.parametrize("kw, says", [
    (dict(batch_size=0), "--batch-size 0: must be >= 1"),
    (dict(lr=float("nan")), "--lr nan: must be > 0"),
    (dict(warmup=1.0), "--warmup 1.0: must be in [0, 1)"),
    (dict(ctc_loss_weight=-0.1), "--ctc-loss-weight -0.1: must be in [0, 1]"),
    (dict(max_seconds=float("inf")), "--max-seconds inf: must be > 0"),
    (dict(max_bad_fraction=2.0), "--max-bad-fraction 2.0: must be in [0, 1]"),
    (dict(dtype="float16"), "--dtype float16: must be one of auto, bfloat16, float32"),
    (dict(device="tpu"), "--device tpu: must be auto"),
    (dict(stage="lm"), "--stage lm: must be one of ctc, e2e"),
    (dict(aug_noise=1.5), "--aug-noise 1.5: must be a probability in [0, 1]"),
])
def test_a_flag_out_of_range_is_one_line(tiny, data, tmp_path, capsys, kw, says):
    main_error(capsys, config(tiny, data, tmp_path / "out", **kw), says)
    assert not (tmp_path / "out").exists()  # refused before anything is written


def test_without_flock_the_pid_in_the_lock_decides(tmp_path, monkeypatch):
    monkeypatch.setattr(run_folder, "fcntl", None)  # a file system (or OS) without flock
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / "train.lock").write_text(f"{alive.pid}\n")
        with pytest.raises(ValueError, match=f"another run \\(pid {alive.pid}\\)"):
            run_folder.lock_out(tmp_path)
    finally:
        alive.kill()
        alive.wait()
    run_folder.lock_out(tmp_path)  # now its pid is dead: taken over
    assert (tmp_path / "train.lock").read_text().strip() == str(T.os.getpid())
    run_folder.release_out(tmp_path)


def test_parquet_rows_with_bad_mels_are_named_by_file_and_row(tiny, tmp_path):
    pa = pytest.importorskip("pyarrow")
    import io
    import pyarrow.parquet as pq
    from dataset import open_dataset

    def blob(a):
        buf = io.BytesIO()
        np.save(buf, a)
        return buf.getvalue()

    good = blob(np.zeros((80, 60), np.float16))
    mels = [good, b"not npy", good[:-10], blob(np.zeros(80, np.int64)), good]
    pq.write_table(pa.table(dict(mel=mels, text=["сәлем"] * 5, duration=[0.6] * 5)), tmp_path / "a.parquet")
    ds = open_dataset(tmp_path / "a.parquet", tiny.tok)
    bad = [(row["_source"], row["_line"], problem) for row, problem in ds.drop_unreadable()]
    assert bad == [(str(tmp_path / "a.parquet"), 2, "mel is not np.save bytes"),
                   (str(tmp_path / "a.parquet"), 3, "mel is truncated"),
                   (str(tmp_path / "a.parquet"), 4, "mel is int64 (80,), not a float (80, T) array")]
    assert len(ds) == 2
    pq.write_table(pa.table(dict(mel=mels[:1], text=[5], duration=[0.6])), tmp_path / "b.parquet")
    with pytest.raises(ValueError, match="b.parquet: column text is int64, not strings"):
        open_dataset(tmp_path / "b.parquet", tiny.tok)
    pq.write_table(pa.table(dict(mel=mels[:1], duration=[0.6])), tmp_path / "c.parquet")
    with pytest.raises(ValueError, match="c.parquet: not a parquet mel file"):
        open_dataset(tmp_path / "c.parquet", tiny.tok)


def test_a_fresh_run_into_a_finished_runs_folder_is_refused_and_a_fresh_log_starts_anew(tiny, data, tmp_path):
    out = tmp_path / "out"
    T.train(config(tiny, data, out, stop_at=1))
    before = sorted(p.name for p in out.iterdir())
    with pytest.raises(ValueError, match="holds an earlier run's checkpoints; --resume"):
        T.train(config(tiny, data, out))  # without --resume: the two runs' checkpoints would mix
    assert sorted(p.name for p in out.iterdir()) == before
    T.train(config(tiny, data, out, resume=True))
    steps = [json.loads(line)["step"] for line in open(out / "log.jsonl")]
    assert steps == [1, 2]  # the resumed run adds to the log
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    (fresh / "log.jsonl").write_text('{"step": 99}\n')  # a run stopped before its first checkpoint
    T.train(config(tiny, data, fresh))
    assert [json.loads(line)["step"] for line in open(fresh / "log.jsonl")] == [1, 2]
    empty = tmp_path / "empty"  # --resume that finds no checkpoint starts at step 0: a new log too
    empty.mkdir()
    (empty / "log.jsonl").write_text('{"step": 99}\n')
    T.train(config(tiny, data, empty, resume=True))
    assert [json.loads(line)["step"] for line in open(empty / "log.jsonl")] == [1, 2]
    # the refusal comes before anything is loaded (here: a tokenizer that is not there), and adds nothing
    now = sorted(p.name for p in out.iterdir())
    with pytest.raises(ValueError, match="holds an earlier run's checkpoints"):
        T.start_run(config(tiny, data, out, tokenizer="/nonexistent.model"), None)
    assert sorted(p.name for p in out.iterdir()) == now
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="not a folder"):
        T.start_run(config(tiny, data, tmp_path / "file"), None)
