"""train.py on a tiny model and a few utterances: it learns, accumulates, resumes, scales out, survives bad data."""
import json
import math
from dataclasses import replace

import numpy as np
import pytest
import soundfile as sf
import torch

import train as T
from dataset import collate, open_dataset
from helpers import noise_utterances
from decoder import Llama, LlamaConfig, load_llama, save_llama
from model import load_model
from tokenizer import Tokenizer, train_sentencepiece
from train_lm import (MAX_SILENCE, blur, copy_blocks, copy_exercise, lm_loss, load_lines, max_silence, misspeak,
                      text_blocks)

TEXTS = ["сәлеметсіз бе", "бүгін ауа райы жақсы", "қазақ тілі өте әдемі", "мен кітап оқығанды жақсы көремін"]
MORE = ["ол мектепке барады", "біз үйде отырмыз", "менің атым айгүл", "сен қайдан келдің", "ертең жаңбыр жауады",
        "бұл үлкен қала", "олар әнді жақсы айтады", "ағаш жасыл", "күн жылы", "өзен ұзын"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Four random-noise 'utterances' of unequal length, a tiny tokenizer and a tiny frozen Llama."""
    root = tmp_path_factory.mktemp("train")
    noise_utterances(root, [t.upper() + "!" for t in TEXTS])  # normalisation must undo the case and the "!"
    (root / "text.txt").write_text("\n".join((TEXTS + MORE) * 3) + "\n")
    tok = train_sentencepiece(str(root / "text.txt"), str(root / "tok"), vocab_size=330)
    torch.manual_seed(0)
    # 300 base rows < 330 tokenizer ids: the vocabulary extension is exercised, as in the release (50257 < 100000)
    llm = Llama(LlamaConfig(vocab_size=300, dim=32, n_layers=2, n_heads=2, n_kv_heads=1, ffn_dim=64))
    # a frozen decoder is only useful pretrained: a few steps on the texts, as train_lm.py does at scale
    lines, _ = load_lines(root / "text.txt", Tokenizer.load(tok), valid_fraction=0.05, seed=0)
    blocks = text_blocks(lines, seq_len=32, eos_id=0).clamp(max=299)  # ids past the base vocabulary are unknown to it, like 50257+ in the release
    opt = torch.optim.AdamW(llm.parameters(), lr=1e-2)
    for _ in range(60):
        lm_loss(llm, blocks[:, :-1], blocks[:, 1:]).backward()
        opt.step()
        opt.zero_grad()
    save_llama(llm, root / "llama")
    return root, tok


def config(setup, out, **kw):
    root, tok = setup
    base = dict(T.PRESETS["teach"], encoder="tiny", train=str(root / "train.jsonl"), tokenizer=tok,
                decoder=str(root / "llama"), out=str(out), batch_size=4, grad_accum=1, lr=3e-3, warmup=0.1,
                max_steps=40, dropout=0.0, spec_augment=False, speed_perturb=False, num_workers=0, eval_wer=0,
                save_every=1000, log_every=1, label_smoothing=0.0)
    return replace(T.TrainConfig(), **{**base, **kw})


def losses(out, key):
    return [r[key] for r in map(json.loads, open(out / "log.jsonl")) if key in r and "valid_loss" not in r]


def test_ctc_then_e2e_overfit_and_the_decoder_stays_frozen(setup, tmp_path):
    root = setup[0]
    T.train(config(setup, tmp_path / "ctc", stage="ctc"))
    ctc = losses(tmp_path / "ctc", "ctc")
    assert ctc[-1] < ctc[0] / 2, ctc
    model = T.train(config(setup, tmp_path / "e2e", stage="e2e", init=str(tmp_path / "ctc" / "checkpoint-40"),
                           lr=1e-2, max_steps=50))
    ce = losses(tmp_path / "e2e", "ce")
    assert ce[-1] < ce[0] / 2, ce
    base = load_llama(root / "llama")
    for name, p in base.state_dict().items():  # bit-identical: not a single base weight moved
        assert torch.equal(model.llm.state_dict()[name], p), name
    # the vocabulary fix: the rows the base lacks did train, and only they
    assert not torch.equal(model.llm.new_rows, base.tok_embeddings.weight.mean(0).expand(30, -1))


def test_projector_fit_starts_e2e_from_the_alignment_and_resumes_exactly(setup, tmp_path, capsys):
    T.train(config(setup, tmp_path / "ctc", stage="ctc", max_steps=20, save_every=20))
    init = load_model(tmp_path / "ctc" / "checkpoint-20")
    kw = dict(stage="e2e", init=str(tmp_path / "ctc" / "checkpoint-20"), projector_fit=True, max_steps=4,
              batch_size=2, save_every=2, lr=1e-9)  # ~no steps: what e2e starts from is the fit
    fitted = T.train(config(setup, tmp_path / "a", **kw))
    assert "projector fit on" in capsys.readouterr().out
    assert (fitted.projector.linear.weight - init.projector.linear.weight).abs().max() > 1e-2  # lr 1e-9 moves ~1e-9
    torch.testing.assert_close(fitted.encoder.state_dict(), init.encoder.state_dict())  # only the projector moved
    # the fit, then a stop and a resume: the resumed run neither refits nor differs
    T.train(config(setup, tmp_path / "b", stop_at=2, **{**kw, "lr": 3e-3}))
    resumed = T.train(config(setup, tmp_path / "b", resume=True, **{**kw, "lr": 3e-3}))
    assert "projector fit on" not in capsys.readouterr().out.split("checkpoint-2")[-1]
    straight = T.train(config(setup, tmp_path / "c", **{**kw, "lr": 3e-3}))
    for (n, p), q in zip(straight.own_state_dict().items(), resumed.own_state_dict().values()):
        assert torch.equal(p, q), n
    with pytest.raises(ValueError, match="needs --init"):
        T.check_config(config(setup, tmp_path / "d", stage="e2e", projector_fit=True))


def test_row_ctc_in_e2e_is_logged_falls_and_leaves_the_decoder_frozen(setup, tmp_path):
    root = setup[0]
    T.train(config(setup, tmp_path / "ctc", stage="ctc", max_steps=20, save_every=20))
    kw = dict(stage="e2e", init=str(tmp_path / "ctc" / "checkpoint-20"), max_steps=30, lr=1e-2)
    model = T.train(config(setup, tmp_path / "e2e", row_ctc_weight=1.0, **kw))
    row = losses(tmp_path / "e2e", "row_ctc")
    assert len(row) == 30 and row[-1] < row[0] / 2, row
    base = load_llama(root / "llama")
    for name, p in base.state_dict().items():
        assert torch.equal(model.llm.state_dict()[name], p), name
    # off (the release's 0), the loss is not computed, and the first step's gradients differ when it is on
    T.train(config(setup, tmp_path / "plain", max_steps=2, **{k: v for k, v in kw.items() if k != "max_steps"}))
    assert not losses(tmp_path / "plain", "row_ctc")
    on = first_step_grads(config(setup, tmp_path / "g1", row_ctc_weight=1.0, **kw))
    off = first_step_grads(config(setup, tmp_path / "g0", **kw))
    assert not torch.allclose(on["projector.linear.weight"], off["projector.linear.weight"])


def first_step_grads(cfg):
    """The gradients train() hands its optimiser at the first step (clipping off): the real loop, accumulation and
    all. A plain function, not monkeypatch: DDP workers use it too."""
    grads, real = {}, T.make_optimizer

    def recording(model, c):
        opt = real(model, c)
        step = opt.step

        def record(*a, **k):
            if not grads:
                grads.update({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
            return step(*a, **k)
        opt.step = record
        return opt
    T.make_optimizer = recording
    try:
        T.train(replace(cfg, max_steps=1, clip=1e9))
    finally:
        T.make_optimizer = real
    return grads


def test_accumulation_2x2_equals_batch_4(setup, tmp_path):
    one = first_step_grads(config(setup, tmp_path / "one", stage="e2e", batch_size=4, grad_accum=1))
    two = first_step_grads(config(setup, tmp_path / "two", stage="e2e", batch_size=2, grad_accum=2))
    assert set(one) == set(two) and "llm.new_rows" in one
    for n in one:
        torch.testing.assert_close(one[n], two[n], atol=1e-6, rtol=1e-4, msg=n)
    # a loss summed without the window's normalisation would be twice as large: the check can tell
    assert (one["ctc_head.bias"] - 2 * two["ctc_head.bias"]).abs().max() > 1e-4


def test_resume_is_exact(setup, tmp_path):
    kw = dict(stage="e2e", max_steps=6, batch_size=2, dropout=0.1, spec_augment=True, save_every=3)
    straight = T.train(config(setup, tmp_path / "a", **kw))
    T.train(config(setup, tmp_path / "b", stop_at=3, **kw))
    assert (tmp_path / "b" / "checkpoint-3" / "trainer.pt").exists()
    assert not (tmp_path / "b" / "checkpoint-6").exists()
    resumed = T.train(config(setup, tmp_path / "b", resume=True, **kw))
    for (n, p), q in zip(straight.own_state_dict().items(), resumed.own_state_dict().values()):
        assert torch.equal(p, q), n


def _ddp_worker(rank, world, setup, port, out, grads_file):
    """One process of a torchrun-like launch: train() reads RANK/WORLD_SIZE and joins the gloo group itself."""
    import os
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    grads = first_step_grads(config(setup, out, stage="e2e", batch_size=2, grad_accum=1))  # each: half the data
    if rank == 0:
        torch.save(grads, grads_file)


def test_ddp_two_processes_equal_one_process_with_twice_the_batch(setup, tmp_path):
    import socket
    single = first_step_grads(config(setup, tmp_path / "one", stage="e2e", batch_size=4, grad_accum=1))
    with socket.socket() as sock:  # a free port for the process group
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    torch.multiprocessing.spawn(_ddp_worker, args=(2, setup, port, tmp_path / "ddp", tmp_path / "g.pt"), nprocs=2)
    ddp = torch.load(tmp_path / "g.pt", weights_only=True)
    assert set(ddp) == set(single)
    for n in single:
        torch.testing.assert_close(ddp[n], single[n], atol=1e-6, rtol=1e-4, msg=n)


def test_bad_rows_are_skipped_and_counted(setup, tmp_path, capsys):
    root = setup[0]
    (tmp_path / "junk.wav").write_text("not audio")
    nan = np.full(16000, np.nan, dtype=np.float32)  # a good header over bad samples: found only when read
    sf.write(tmp_path / "nan.wav", nan, 16000, subtype="FLOAT")
    rows = [json.loads(l) for l in open(root / "train.jsonl")]
    for r in rows:
        r["audio_filepath"] = str(root / r["audio_filepath"])
    rows += [dict(audio_filepath=str(tmp_path / "missing.wav"), text="жоқ файл", duration=1.0),
             dict(audio_filepath=str(tmp_path / "junk.wav"), text="бұзық файл", duration=1.0),
             dict(audio_filepath=str(tmp_path / "nan.wav"), text="бос файл", duration=1.0),
             dict(audio_filepath=rows[0]["audio_filepath"], text=" !!! ", duration=1.0),  # empty once normalised
             dict(audio_filepath=rows[0]["audio_filepath"], text="өте ұзын", duration=99.0)]
    manifest = tmp_path / "bad.jsonl"
    manifest.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    # 5 utterances, batch 2: 3 batches an epoch, so 3 steps read nan.wav exactly once
    T.train(config(setup, tmp_path / "out", train=str(manifest), stage="ctc", max_steps=3, batch_size=2,
                   max_bad_fraction=0.5))
    printed = capsys.readouterr().out
    assert "5 utterances (2 skipped, 2 unreadable)" in printed
    assert "1 bad rows skipped" in printed


def test_non_finite_step_is_skipped(setup, tmp_path, monkeypatch, capsys):
    calls = {"n": 0}
    real = T.ctc_loss

    def sometimes_nan(*a):
        calls["n"] += 1
        loss = real(*a)
        return loss * float("nan") if calls["n"] == 2 else loss

    monkeypatch.setattr(T, "ctc_loss", sometimes_nan)
    model = T.train(config(setup, tmp_path / "nan", stage="ctc", max_steps=3))
    assert "step 1: non-finite loss or gradient, update skipped" in capsys.readouterr().out
    assert all(torch.isfinite(p).all() for p in model.parameters())
    with pytest.raises(SystemExit, match="3 non-finite steps in a row"):
        monkeypatch.setattr(T, "ctc_loss", lambda *a: real(*a) * float("nan"))
        T.train(config(setup, tmp_path / "nan2", stage="ctc", max_steps=5, max_bad_steps=3))


def test_parquet_mel_dataset_reads_the_release_layout(setup, tmp_path):
    """recipe §7: `mel` holds np.save bytes of a float16 (80, T) log-mel, beside `text` and `duration`."""
    pa = pytest.importorskip("pyarrow")
    import io
    import pyarrow.parquet as pq
    mels = [np.random.default_rng(i).standard_normal((80, 50 + 10 * i)).astype(np.float16) for i in range(3)]
    blobs = []
    for m in mels:
        buf = io.BytesIO()
        np.save(buf, m)
        blobs.append(buf.getvalue())
    table = pa.table(dict(mel=blobs, text=["Сәлем!", "", "қазақ тілі"], duration=[0.5, 0.6, 99.0]))
    pq.write_table(table, tmp_path / "train-00000.parquet")
    ds = open_dataset(tmp_path, Tokenizer.load(setup[1]), max_seconds=15.0)
    assert len(ds) == 1 and ds.skipped == 2  # empty text and over-long rows are skipped, not fatal
    item = ds[0]
    torch.testing.assert_close(item["mel"], torch.from_numpy(mels[0].astype(np.float32)))
    assert Tokenizer.load(setup[1]).decode(item["tokens"].tolist()) == "сәлем"


def test_copy_exercise_targets_only_the_written_line():
    import random

    rng = random.Random(3)
    for _ in range(50):
        ids = [4 + rng.randrange(40) for _ in range(rng.randint(1, 6))]
        x, y = copy_exercise(ids, rng, pad_id=1, eos_id=0)
        n = len(x) - len(ids) - 1  # prompt length
        assert len(x) == len(y) and x[n:] == ids + [0]
        # the prompt holds every token once, in order, with only silence between
        assert [t for t in x[:n] if t != 1] == ids
        assert x[n - 1] == 1  # the prompt ends in silence, as an utterance does
        # targets: the last prompt position predicts the first token, then each written token the next, then EOS
        assert y[: n - 1] == [-100] * (n - 1) and y[n - 1:] == ids + [0, -100]


def test_copy_blocks_mark_the_spoken_part_and_blur_changes_it_alone():
    import random

    x, y, spoken = copy_blocks([[5, 9], [7]], 3, 12, random.Random(0), pad_id=1, eos_id=0, max_silence=2,
                               spoken=True)
    assert x.shape == y.shape == spoken.shape == (3, 12) and spoken.dtype == torch.bool
    for row_x, row_s in zip(x.tolist(), spoken.tolist()):
        assert row_s[0]  # a block starts with an exercise's spoken part
        starts = [j for j in range(12) if row_s[j] and (j == 0 or not row_s[j - 1])]
        for a, b in zip(starts, starts[1:] + [None]):
            end = next((j for j in range(a, 12) if not row_s[j]), 12)  # the spoken run [a, end)
            written = [t for t in row_x[a:end] if t != 1] + [0]  # what follows it: the line once more, and EOS
            assert row_x[end: end + len(written)] == written[: 12 - end]
            assert b is None or b == end + len(written)  # and only that: the next exercise starts right after
    torch.manual_seed(0)
    llm = Llama(LlamaConfig(vocab_size=12, dim=16, n_layers=1, n_heads=2, n_kv_heads=2, ffn_dim=32))
    e = llm.embed(x)
    torch.testing.assert_close(lm_loss(llm, x, y, e), lm_loss(llm, x, y))  # the rows themselves: the same loss
    b = blur(e, spoken, 2.0, torch.Generator().manual_seed(1))
    assert torch.equal(b[~spoken], e[~spoken])  # the written part is never touched
    moved = (b - e)[spoken].norm(dim=-1) / e[spoken].norm(dim=-1)
    assert 0 < moved.max() < 6 and moved.mean() > 0.3  # up to ~2x the row's size, a uniform draw per block
    assert torch.equal(b, blur(e, spoken, 2.0, torch.Generator().manual_seed(1)))  # seeded: a rerun is the same
    assert torch.equal(blur(e, spoken, 0.0, torch.Generator().manual_seed(1)), e)


@pytest.mark.parametrize("flag", ["--copy-noise", "--copy-slips", "--copy-pauses"])
def test_train_lm_refuses_copy_changes_without_copy_exercises(flag, capsys):
    from train_lm import main as lm_main

    with pytest.raises(SystemExit) as e:
        lm_main(["--text", "t.txt", "--tokenizer", "t.model", "--out", "o", flag, "0.5", "--copy-fraction", "0"])
    assert e.value.code == 2 and "--copy-fraction 0 makes none" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:  # a share that rounds to no exercise in the batch: none either
        lm_main(["--text", "t.txt", "--tokenizer", "t.model", "--out", "o", flag, "0.5", "--copy-fraction", "0.1",
                 "--batch-size", "4"])
    assert e.value.code == 2 and "--copy-fraction 0.1 makes none in a --batch-size 4 batch" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        lm_main(["--text", "t.txt", "--tokenizer", "t.model", "--out", "o", "--copy-slips", "1.5"])
    assert e.value.code == 2 and "--copy-slips 1.5: must be in [0, 1]" in capsys.readouterr().err


def test_misspoken_exercises_slip_at_the_rate_asked_and_still_write_the_true_line():
    import random

    lines = [[10 + i for i in range(j, j + 5)] for j in range(0, 200, 5)]  # 40 lines, 200 distinct ids >= 10
    said = [misspeak(line, random.Random(k), 0.3, lines) for k, line in enumerate(lines * 25)]
    total = 5 * len(said)
    kept = sum(sum(a == b for a, b in zip(s, l)) for s, l in zip(said, lines * 25) if len(s) == 5)
    dropped = total - sum(map(len, said))
    assert 0.08 < dropped / total < 0.12  # 1 in 3 slips drops the token: 0.1
    assert all(t in range(10, 210) for s in said for t in s)  # a swap takes another line's token, never a special id
    assert kept / sum(5 for s in said if len(s) == 5) < 0.9  # lines that kept their length still have swaps in them
    assert misspeak(lines[0], random.Random(0), 0.0, lines) == lines[0]
    assert misspeak(lines[0], random.Random(0), 1.0, lines) != lines[0]
    rng_a, rng_b = random.Random(4), random.Random(4)
    assert copy_exercise(lines[3], rng_a, 1, 0) == copy_exercise(lines[3], rng_b, 1, 0, slips=0.0, lines=lines)
    x, y = copy_exercise(lines[3], random.Random(5), 1, 0, slips=1.0, lines=lines)  # every spoken token slips
    n = len(x) - len(lines[3]) - 1
    assert x[n:] == lines[3] + [0] and y[n - 1:] == lines[3] + [0, -100]  # the written line and targets stay true
    assert [t for t in x[:n] if t != 1] != lines[3]


def test_exercises_timed_as_speech_pause_at_the_rate_asked_and_still_write_the_true_line():
    import random

    def layout(x, n):  # a prompt's silences: before the first token, between tokens, after the last
        pos = [j for j in range(n) if x[j] != 1]
        return pos[0], [b - a - 1 for a, b in zip(pos, pos[1:])], n - 1 - pos[-1]

    rng, gaps, leads, tails = random.Random(7), [], [], []
    for _ in range(400):
        ids = [4 + rng.randrange(40) for _ in range(rng.randint(2, 8))]
        x, y = copy_exercise(ids, rng, pad_id=1, eos_id=0, max_silence=8, pauses=0.3)
        n = len(x) - len(ids) - 1
        assert x[n:] == ids + [0] and y[: n - 1] == [-100] * (n - 1) and y[n - 1:] == ids + [0, -100]
        assert [t for t in x[:n] if t != 1] == ids  # every token once, in order
        lead, between, tail = layout(x, n)
        leads.append(lead), gaps.extend(between), tails.append(tail)
    long = [g for g in gaps if g > 8]
    assert 0.25 < len(long) / len(gaps) < 0.35 and max(gaps) == 24 and min(long) == 9  # pauses of 9..24 slots
    # longer silence before and after: the last token's gap, then 1..32 slots more
    assert max(leads) == 16 and 1 <= min(tails) and 32 < max(tails) <= 24 + 32
    assert sum(tails) / len(tails) > 12  # a clip of the teaching data ends in ~12 frames of silence
    for k in range(20):  # pauses=0 is the old layout, draw for draw (the script's earlier stages are unchanged)
        assert copy_exercise([5, 9, 7], random.Random(k), 1, 0) == copy_exercise([5, 9, 7], random.Random(k), 1, 0,
                                                                                pauses=0.0)
    x, _ = copy_exercise([5, 9, 7], random.Random(0), 1, 0, max_silence=0, pauses=1.0)  # no silence: no pauses
    assert x[:4] == [5, 9, 7, 1]


def test_copy_exercises_start_without_silence_and_reach_the_full_silence_by_the_ramp():
    import random
    from types import SimpleNamespace

    args = SimpleNamespace(steps=1000, silence_ramp=0.4)
    assert max_silence(0, args) == 0 and max_silence(399, args) == MAX_SILENCE - 1
    assert max_silence(400, args) == max_silence(999, args) == MAX_SILENCE
    assert [max_silence(s, args) for s in range(0, 400, 50)] == sorted(max_silence(s, args) for s in range(0, 400, 50))
    assert max_silence(0, SimpleNamespace(steps=10, silence_ramp=0.0)) == MAX_SILENCE  # no ramp: full from step 0
    rng = random.Random(0)
    x, _ = copy_exercise([5, 9, 7], rng, pad_id=1, eos_id=0, max_silence=0)
    assert x == [5, 9, 7, 1, 5, 9, 7, 0]  # plain copying: the tokens, one slot of silence, the line
    longest = 0
    for _ in range(200):
        x, _ = copy_exercise([5, 9, 7], rng, pad_id=1, eos_id=0, max_silence=3)
        runs = "".join("p" if t == 1 else "t" for t in x[:-4]).split("t")[1:-1]  # the silences between tokens
        longest = max(longest, max(map(len, runs)))
    assert longest == 3


def test_listen_pairs_each_text_with_another_utterances_audio(setup):
    from listen import listen
    from dataset import SpeechDataset, collate, read_manifest

    root, tok = setup
    tokenizer = Tokenizer.load(tok)
    model = T.build_model(config(setup, root / "unused", stage="e2e"), tokenizer).eval()
    rows = read_manifest(root / "train.jsonl")
    data = SpeechDataset(rows, tokenizer, n_mels=model.encoder.cfg.n_mels)  # the model's features
    r = listen(model, torch.utils.data.DataLoader(data, batch_size=3, collate_fn=collate), 0)
    assert r["utterances"] == len(rows) == 4  # a lone last item is joined to the batch before it, not dropped
    assert all(math.isfinite(r[k]) for k in ("own", "shuffled", "none")) and r["gap"] == r["shuffled"] - r["own"]
    assert abs(r["shuffled"] - r["own"]) > 1e-4  # different audio, different CE
    same = SpeechDataset([dict(r, audio_filepath=rows[0]["audio_filepath"]) for r in rows], tokenizer,
                         n_mels=model.encoder.cfg.n_mels)
    r = listen(model, torch.utils.data.DataLoader(same, batch_size=4, collate_fn=collate), 0)
    assert abs(r["shuffled"] - r["own"]) < 1e-5  # every item's audio the same: shuffling changes nothing


def test_a_run_says_its_plan_shows_no_ce_in_the_ctc_stage_and_always_leaves_best(setup, tmp_path, capsys):
    capsys.readouterr()
    T.train(config(setup, tmp_path / "ctc", stage="ctc", max_steps=3, eval_every=0))  # no --valid: no validation
    out = capsys.readouterr().out
    plan = out.splitlines()[0]
    assert plan.startswith("ctc: ") and "3 steps of 4 on cpu float32 into" in plan and "steps to go" in plan
    assert "ctc=" in out and "ce=" not in out.replace("ctc=", "")  # the bar: no CE column without a decoder
    best = json.loads((tmp_path / "ctc" / "best" / "config.json").read_text())
    assert (best["step"], best["best"]) == (3, "the last step (no validation)")
    assert load_model(tmp_path / "ctc" / "best").vocab_size > 0


def test_listen_batches_never_yield_a_lone_item():
    from listen import listen_batches

    def batch(n):
        return collate([dict(mel=torch.full((80, 5 + i), float(n)), tokens=torch.tensor([4 + i])) for i in range(n)])

    out = list(listen_batches([batch(1), batch(3), batch(0), batch(1), batch(2), batch(1)]))
    assert [b["size"] for b in out] == [5, 3]  # 1+3 (+1 lone), then 2+1 lone: every item kept, none alone
    # the items survive the merge whole: their own lengths and first token
    assert [int(n) for b in out for n in b["mel_lengths"]] == [5, 5, 6, 7, 5, 5, 6, 5]
    assert [int(t) for b in out for t in b["tokens"][:, 0]] == [4, 4, 5, 6, 4, 4, 5, 4]
