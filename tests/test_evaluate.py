"""evaluate.py: scoring files, the FLEURS reader on a folder built here, the bootstrap, decoding runs of a tiny
random model (conftest's `tiny`) over a manifest and a FLEURS-shaped folder, and --compare."""
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

import decode
from evaluate import EvalInputError, bootstrap_ci, main, paired_bootstrap, read_fleurs, read_pair
from helpers import KAZAKH, wave
from tokenizer import normalize
from wer import ErrorStats, char_stats, corpus_stats, word_stats

ROOT = Path(__file__).resolve().parents[1]
REFS = ["Сәлем, әлем!", "бүгін ауа райы жақсы", "мектепте 6,5 сағат оқимыз", "ұлы дала елі"]
HYPS = ["сәлем элем", "бүгін ауа райы жақсы", "мектепте 6 5 сағат", "ұлы дала елі мен"]


def _run(*args):
    """A real process: exit status and stderr as a user sees them (2 s of imports, so only where that matters)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(ROOT / "evaluate.py"), *map(str, args)], capture_output=True,
                          text=True, cwd=ROOT, timeout=120, env=env)


def _main(capsys, *args):
    """main(argv) in this process -> (exit status, stdout, stderr)."""
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def _write(path: Path, lines):
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(path)


def test_cli_json_matches_jiwer(tmp_path, capsys):
    jiwer = pytest.importorskip("jiwer")  # dev-only reference (requirements-dev.txt)
    ref, hyp = _write(tmp_path / "ref.txt", REFS), _write(tmp_path / "hyp.txt", HYPS)
    code, stdout, err = _main(capsys, "--ref", ref, "--hyp", hyp, "--json")
    assert code == 0, err
    out = json.loads(stdout)
    norm_refs = ["сәлем әлем", "бүгін ауа райы жақсы", "мектепте 6 5 сағат оқимыз", "ұлы дала елі"]
    w, c = jiwer.process_words(norm_refs, HYPS), jiwer.process_characters(norm_refs, HYPS)
    assert out["n"] == 4
    assert out["wer"] == pytest.approx(w.wer) and out["cer"] == pytest.approx(c.cer)
    assert (out["substitutions"], out["deletions"], out["insertions"]) == (w.substitutions, w.deletions, w.insertions)
    assert out["ref_words"] == 14 and out["ref_chars"] == sum(len(s) for s in norm_refs)
    assert out["wer_ci"][0] <= out["wer"] <= out["wer_ci"][1]


def test_cli_no_normalize_and_text_report(tmp_path, capsys):
    ref, hyp = _write(tmp_path / "ref.txt", REFS), _write(tmp_path / "hyp.txt", HYPS)
    raw = json.loads(_main(capsys, "--ref", ref, "--hyp", hyp, "--json", "--no-normalize")[1])
    try:
        import jiwer  # dev-only reference (requirements-dev.txt); without it, the report below is still tested
        assert raw["wer"] == pytest.approx(jiwer.wer(REFS, HYPS))        # "Сәлем," != "сәлем"
    except ImportError:
        pass
    code, out, _ = _main(capsys, "--ref", ref, "--hyp", hyp, "--worst", "2")
    assert code == 0 and "WER" in out and "CER" in out and "95% CI" in out
    assert "REF: сәлем ӘЛЕМ" in out and "HYP: сәлем ЭЛЕМ" in out


def test_cli_ids_matched_in_any_order(tmp_path, capsys):
    ref = _write(tmp_path / "ref.tsv", [f"u{k}\t{t}" for k, t in enumerate(REFS)])
    hyp = _write(tmp_path / "hyp.tsv", [f"u{k}\t{HYPS[k]}" for k in (3, 1, 0, 2)])
    plain_ref, plain_hyp = _write(tmp_path / "r.txt", REFS), _write(tmp_path / "h.txt", HYPS)
    by_id = json.loads(_main(capsys, "--ref", ref, "--hyp", hyp, "--json")[1])
    by_line = json.loads(_main(capsys, "--ref", plain_ref, "--hyp", plain_hyp, "--json")[1])
    assert by_id == by_line
    ids, refs, hyps = read_pair(ref, hyp)
    assert ids == ["u0", "u1", "u2", "u3"] and hyps == HYPS


def test_paths_are_matched_to_file_names_when_unambiguous(tmp_path, capsys):
    """decode.py samples/*.wav prints samples/sample1.wav<TAB>text; samples.tsv is keyed sample1.wav."""
    ref = _write(tmp_path / "ref.tsv", [f"s{k}.wav\t{t}" for k, t in enumerate(REFS)])
    hyp = _write(tmp_path / "hyp.tsv", [f"samples/s{k}.wav\t{HYPS[k]}" for k in (2, 0, 3, 1)])
    plain_ref, plain_hyp = _write(tmp_path / "r.txt", REFS), _write(tmp_path / "h.txt", HYPS)
    code, out, err = _main(capsys, "--ref", ref, "--hyp", hyp, "--json")
    assert code == 0, err
    assert json.loads(out) == json.loads(_main(capsys, "--ref", plain_ref, "--hyp", plain_hyp, "--json")[1])
    # two paths with one file name: no guessing, the mismatch is reported
    hyp = _write(tmp_path / "hyp2.tsv", [f"a/s{k}.wav\t{h}" for k, h in enumerate(HYPS)] + [f"b/s0.wav\tx"])
    code, _, err = _main(capsys, "--ref", ref, "--hyp", hyp)
    assert code == 2 and "reference ids missing (first: 's0.wav')" in err


@pytest.mark.slow  # decodes the ~60 s long1.wav too
def test_scoring_the_shipped_samples_from_the_repo_root(tmp_path):
    wavs = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "samples").glob("*.wav"))
    hyp = subprocess.run([sys.executable, "decode.py", *wavs], capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert hyp.returncode == 0 and hyp.stdout.startswith("samples/"), hyp.stderr
    (tmp_path / "hyp.tsv").write_text(hyp.stdout, encoding="utf-8")
    out = _run("--ref", ROOT / "samples" / "samples.tsv", "--hyp", tmp_path / "hyp.tsv", "--json")
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["n"] == len(wavs) == 4 and result["cer"] < 0.1  # the teaching model on its own voice


@pytest.mark.parametrize("case, problem", [
    ("missing", "no such file"), ("count", "3 lines but"), ("ids", "reference ids missing"),
    ("extra", "ids not in"), ("dup", "appears twice"),
])
def test_cli_bad_input_one_line_exit_2(tmp_path, capsys, case, problem):
    ref = _write(tmp_path / "ref.txt", REFS)
    hyp = tmp_path / "hyp.txt"
    if case == "count":
        _write(hyp, HYPS[:3])
    elif case in ("ids", "extra", "dup"):
        ref = _write(tmp_path / "ref.tsv", [f"u{k}\t{t}" for k, t in enumerate(REFS)])
        keys = {"ids": ["u0", "u1"], "extra": ["u0", "u1", "u2", "u3", "u9"], "dup": ["u0", "u0"]}[case]
        _write(hyp, [f"{k}\tx" for k in keys])
    if case == "missing":      # one case through a real process: exit status 2, no traceback
        r = _run("--ref", ref, "--hyp", str(hyp))
        code, out, err = r.returncode, r.stdout, r.stderr.strip()
    else:
        code = main(["--ref", ref, "--hyp", str(hyp)])
        out, err = capsys.readouterr()
        err = err.strip()
    assert code == 2 and out == ""
    assert "\n" not in err and "Traceback" not in err
    assert problem in err and str(hyp) in err


def test_empty_hypothesis_lines_are_kept(tmp_path, capsys):
    ref = _write(tmp_path / "ref.txt", ["бір екі", "үш"])
    hyp = tmp_path / "hyp.txt"
    hyp.write_text("\nүш\n", encoding="utf-8")           # first hypothesis is empty
    out = json.loads(_main(capsys, "--ref", ref, "--hyp", hyp, "--json")[1])
    assert (out["deletions"], out["wer"]) == (2, pytest.approx(2 / 3))


# --- FLEURS reader ------------------------------------------------------------------------

# (id, file, raw, normalised, chars, samples, gender); rows 2 and 4 have no audio
FLEURS = [
    ("1001", "a.wav", "Сәлем, әлем!", "сәлем әлем", "x", "1600", "FEMALE"),
    ("1002", "b.wav", "Жоқ файл.", "жоқ файл", "x", "1600", "MALE"),
    ("1001", "c.wav", "Сәлем, әлем!", "сәлем әлем", "x", "1600", "MALE"),
    ("1003", "d.wav", "Тағы жоқ.", "тағы жоқ", "x", "1600", "MALE"),
    ("1004", "e.wav", "Ұлы дала.", "ұлы дала «елі»", "x", "1600", "FEMALE"),
]
HAVE = ["a.wav", "c.wav", "e.wav"]


def _fleurs_folder(root: Path, layout: str) -> Path:
    folder = root / "kk_kz"
    (folder / "audio").mkdir(parents=True)
    (folder / "test.tsv").write_text("\n".join("\t".join(r) for r in FLEURS) + "\n", encoding="utf-8")
    wav_dir = root / "wavs" / "test"
    wav_dir.mkdir(parents=True)
    for k, name in enumerate(HAVE):
        sf.write(wav_dir / name, np.full(1600, 0.1 * (k + 1), dtype=np.float32), 16000)
    if layout == "folder":
        os.rename(wav_dir, folder / "audio" / "test")
    else:
        with tarfile.open(folder / "audio" / "test.tar.gz", "w:gz") as tar:
            tar.add(wav_dir, arcname="test")               # members test/a.wav, ... as in FLEURS
    return folder


@pytest.mark.parametrize("layout", ["folder", "tar"])
def test_read_fleurs_layouts(tmp_path, layout):
    folder = _fleurs_folder(tmp_path, layout)
    rows = read_fleurs(str(folder), extract_dir=str(tmp_path / "x") if layout == "tar" else None)
    assert [r.file for r in rows] == HAVE                           # file order, missing audio skipped
    assert [r.id for r in rows] == ["1001", "1001", "1004"]
    assert rows[2].reference == "ұлы дала елі"                      # the 4th column, normalised again
    assert rows[0].raw == "Сәлем, әлем!"
    for k, r in enumerate(rows):
        audio, sr = sf.read(r.audio, dtype="float32")
        assert sr == 16000 and audio.shape == (1600,) and audio[0] == pytest.approx(0.1 * (k + 1), abs=1e-3)


@pytest.mark.parametrize("layout", ["folder", "tar"])
def test_read_fleurs_max_samples_first_rows_with_audio(tmp_path, layout):
    folder = _fleurs_folder(tmp_path, layout)
    rows = read_fleurs(str(folder), max_samples=2)
    assert [r.file for r in rows] == ["a.wav", "c.wav"]
    if layout == "tar":     # only the kept rows were extracted
        assert sorted(os.listdir(os.path.dirname(rows[0].audio))) == ["a.wav", "c.wav"]


def test_read_fleurs_errors(tmp_path):
    with pytest.raises(EvalInputError, match="test.tsv: no such file"):
        read_fleurs(str(tmp_path))
    (tmp_path / "test.tsv").write_text("1\ta.wav\tx\tx\n", encoding="utf-8")
    with pytest.raises(EvalInputError, match="no audio"):
        read_fleurs(str(tmp_path))
    (tmp_path / "test.tsv").write_text("1\ta.wav\n", encoding="utf-8")
    (tmp_path / "audio" / "test").mkdir(parents=True)
    with pytest.raises(EvalInputError, match=r"test.tsv:1: 2 tab-separated columns"):
        read_fleurs(str(tmp_path))


# --- bootstrap ----------------------------------------------------------------------------

def _stats(seed: int, n: int = 60, p: float = 0.2) -> list[ErrorStats]:
    rng = np.random.default_rng(seed)
    refs = [" ".join(rng.choice(list("абвгд"), size=rng.integers(3, 15))) for _ in range(n)]
    hyps = [" ".join(w if rng.random() > p else "ж" for w in r.split()) for r in refs]
    return corpus_stats(refs, hyps)


def test_bootstrap_deterministic_and_contains_estimate():
    stats = _stats(0)
    point = sum(stats).rate
    lo, hi = bootstrap_ci(stats, n=500, seed=3)
    assert (lo, hi) == bootstrap_ci(stats, n=500, seed=3)
    assert lo < point < hi and hi - lo < 0.2
    assert bootstrap_ci(stats, n=500, seed=4) != (lo, hi)
    # one perfect utterance repeated: no spread
    assert bootstrap_ci([ErrorStats(3, 0, 0, 0, 3)] * 5) == (0.0, 0.0)


def test_paired_bootstrap():
    good, bad = _stats(1, p=0.05), _stats(1, p=0.5)            # same references, B much worse
    assert sum(good).ref_len == sum(bad).ref_len
    assert paired_bootstrap(good, bad, n=300) > 0.99
    assert paired_bootstrap(bad, good, n=300) < 0.01
    assert paired_bootstrap(good, good, n=300) == 0.0            # a tie is never a win
    with pytest.raises(ValueError):
        paired_bootstrap(good, good[:-1])


# --- decoding runs ------------------------------------------------------------------------

GREEDY = ["--mode", "greedy", "--max-tokens", "6", "--batch-size", "2"]   # a tiny random model: few tokens


def _direct(tiny, paths):
    """The same files through decode.Transcriber, as the evaluation must have decoded them."""
    t = decode.Transcriber(tiny.model, tiny.tok, decode.DecodeOptions(mode="greedy", max_tokens=6))
    return [r["text"] for r in t.transcribe([str(p) for p in paths])]


def test_manifest_run_end_to_end(tiny, tmp_path, capsys):
    d = tmp_path / "set"
    (d / "wav").mkdir(parents=True)
    seconds = [1.4, 0.6, 1.0]                          # the first is the longest: batches sort by length
    for i, s in enumerate(seconds):
        sf.write(d / "wav" / f"u{i}.wav", wave(s, i).numpy(), 16000)
    rows = [{"audio_filepath": "wav/u0.wav", "text": "Қазақстан, астана!"},
            {"audio_filepath": "wav/missing.wav", "text": "Жоқ файл."},               # counted failed, scored empty
            {"audio_filepath": "wav/u1.wav", "text": KAZAKH[1]},
            {"audio_filepath": str(d / "wav" / "u2.wav"), "text": KAZAKH[2], "id": "abs"}]   # an absolute path
    manifest = _write(d / "test.jsonl", [json.dumps(r, ensure_ascii=False) for r in rows])
    out = tmp_path / "res" / "results.jsonl"
    code, stdout, err = _main(capsys, "--manifest", manifest, "--model", tiny.folder, *GREEDY, "--out", out,
                              "--name", "tiny", "--json", "--bootstrap", 200, "--allow-failures")
    assert code == 0, err
    assert len(err.strip().splitlines()) == 1 and "missing.wav" in err and "scored as an empty hypothesis" in err
    summary = json.loads(stdout)
    for key in ("n", "wer", "cer", "wer_ci", "cer_ci", "substitutions", "deletions", "insertions", "failed",
                "rtf", "device", "audio_seconds", "decode_seconds", "table"):
        assert key in summary, key
    assert summary["n"] == 4 and summary["failed"] == 1

    res = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [r["id"] for r in res] == ["wav/u0.wav", "wav/missing.wav", "wav/u1.wav", "abs"]   # manifest order
    assert [r["ref"] for r in res] == [normalize(r["text"]) for r in rows]
    bad = res[1]
    assert "error" in bad and bad["hyp"] == "" and (bad["dels"], bad["word_errors"], bad["ref_words"]) == (2, 2, 2)
    good = [res[0], res[2], res[3]]
    assert all("error" not in r for r in good)
    assert [r["hyp"] for r in good] == _direct(tiny, [d / "wav" / f"u{i}.wav" for i in range(3)])
    assert [r["duration"] for r in good] == pytest.approx(seconds, abs=1e-3)

    # the summary is wer.py's scoring of what the file holds
    refs, hyps = [r["ref"] for r in res], [r["hyp"] for r in res]
    w, c = sum(corpus_stats(refs, hyps, "word")), sum(corpus_stats(refs, hyps, "char"))
    assert summary["wer"] == pytest.approx(w.rate) and summary["cer"] == pytest.approx(c.rate)
    assert (summary["substitutions"], summary["deletions"], summary["insertions"]) == (w.subs, w.dels, w.ins)
    for r in res:
        ws, cs = word_stats(r["ref"], r["hyp"]), char_stats(r["ref"], r["hyp"])
        assert (r["subs"], r["dels"], r["ins"], r["ref_words"]) == (ws.subs, ws.dels, ws.ins, ws.ref_len)
        assert (r["char_errors"], r["ref_chars"]) == (cs.errors, cs.ref_len)
    assert summary["wer_ci"][0] <= summary["wer"] <= summary["wer_ci"][1]
    assert summary["audio_seconds"] == pytest.approx(sum(seconds), abs=1e-3)
    assert summary["rtf"] == pytest.approx(summary["decode_seconds"] / summary["audio_seconds"])
    assert summary["table"].splitlines()[0] == "| system | n | WER % [95 % CI] | CER % [95 % CI] | RTF |"
    assert summary["table"].splitlines()[2].startswith(f"| tiny | 4 (1 failed) | {100 * w.rate:.2f} [")
    assert not [p for p in out.parent.iterdir() if p.name != "results.jsonl"]      # no temporary file left

    code, text, err = _main(capsys, "--manifest", manifest, "--model", tiny.folder, *GREEDY, "--bootstrap", 0)
    assert code == 1 and "| system |" in text and "RTF" in text and "1 failed" in text   # the report, then exit 1
    assert "1 of 4 utterances failed" in err
    assert "REF: ЖОҚ ФАЙЛ" in text                                  # the worst utterance, all deleted


def test_fleurs_run_first_rows_with_audio_in_file_order(tiny, tmp_path, capsys):
    folder = tmp_path / "kk_kz"
    (folder / "audio" / "test").mkdir(parents=True)
    tsv = [("7", "long.wav", "Бірінші сөйлем.", "бірінші сөйлем"),
           ("8", "gone.wav", "Жоқ.", "жоқ"),                          # no audio: skipped, not failed
           ("7", "short.wav", "Бірінші сөйлем.", "бірінші сөйлем"),   # same sentence id, another speaker
           ("9", "third.wav", "Үшінші!", "үшінші")]
    (folder / "test.tsv").write_text("".join("\t".join(r + ("x", "1", "MALE")) + "\n" for r in tsv), encoding="utf-8")
    for i, (name, s) in enumerate([("long.wav", 1.5), ("short.wav", 0.7), ("third.wav", 1.0)]):
        sf.write(folder / "audio" / "test" / name, wave(s, i).numpy(), 16000)
    out = tmp_path / "fleurs.jsonl"
    code, stdout, err = _main(capsys, "--fleurs", folder, "--max-samples", 2, "--model", tiny.folder, *GREEDY,
                              "--out", out, "--json", "--bootstrap", 0)
    assert code == 0, err
    summary = json.loads(stdout)
    assert (summary["n"], summary["failed"]) == (2, 0)
    res = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [r["id"] for r in res] == ["long.wav", "short.wav"]
    assert [r["ref"] for r in res] == ["бірінші сөйлем"] * 2
    audio = folder / "audio" / "test"
    assert [r["hyp"] for r in res] == _direct(tiny, [audio / "long.wav", audio / "short.wav"])


def test_decoding_run_bad_input_one_line_exit_2(tiny, tmp_path, capsys):
    r = _run("--manifest", tmp_path / "none.jsonl", "--model", tiny.folder)     # a real process: no traceback
    assert r.returncode == 2 and r.stdout == "" and "Traceback" not in r.stderr
    assert r.stderr.strip() == f"evaluate.py: error: {tmp_path / 'none.jsonl'}: manifest not found"
    row = '{"audio_filepath": "a.wav", "text": "x"}'
    empty, ok = _write(tmp_path / "empty.jsonl", [""]), _write(tmp_path / "ok.jsonl", [row])
    notjson = _write(tmp_path / "bad.jsonl", [row, "not json"])
    cases = [(["--manifest", empty, "--model", tiny.folder], "no utterances"),
             (["--manifest", notjson, "--model", tiny.folder], "bad.jsonl:2: not JSON"),
             (["--fleurs", tmp_path / "nowhere", "--model", tiny.folder], "no such folder"),
             (["--manifest", ok, "--model", tmp_path], "not a model folder")]
    for args, problem in cases:
        code, out, err = _main(capsys, *args)
        assert code == 2 and out == "" and len(err.strip().splitlines()) == 1 and problem in err, err


# --- --compare ----------------------------------------------------------------------------

def _results(path: Path, rows):
    _write(path, [json.dumps({"id": k, "ref": ref, "hyp": hyp}, ensure_ascii=False) for k, ref, hyp in rows])
    return str(path)


def test_compare_paired(tmp_path, capsys):
    refs = {"a": "бір екі үш төрт", "b": "бес алты жеті", "c": "сегіз тоғыз он бір", "d": "жиырма отыз"}
    # A drops the last word of each utterance, B the last two: A is strictly better on every one
    better = {k: " ".join(r.split()[:-1]) for k, r in refs.items()}
    worse = {k: " ".join(r.split()[:-2]) for k, r in refs.items()}
    a = _results(tmp_path / "a.jsonl", [(k, refs[k], better[k]) for k in refs])
    b = _results(tmp_path / "b.jsonl", [(k, refs[k], worse[k]) for k in reversed(list(refs))]   # any order
                 + [("extra", "тек осында", "")])                                                  # only in B
    code, out, err = _main(capsys, "--compare", a, b, "--json", "--bootstrap", 300)
    assert code == 0, err
    c = json.loads(out)
    assert (c["n"], c["only_a"], c["only_b"]) == (4, 0, 1)
    assert c["wer_a"] == pytest.approx(4 / 13) and c["wer_b"] == pytest.approx(8 / 13)
    assert c["a_better_wer"] == 1.0 and c["a_better_cer"] == 1.0
    reverse = json.loads(_main(capsys, "--compare", b, a, "--json", "--bootstrap", 300)[1])
    assert reverse["a_better_wer"] == 0.0 and reverse["a_better_cer"] == 0.0
    same = json.loads(_main(capsys, "--compare", a, a, "--json", "--bootstrap", 300)[1])
    assert same["a_better_wer"] == 0.0 and same["a_better_cer"] == 0.0             # ties are not wins
    code, text, _ = _main(capsys, "--compare", a, b, "--bootstrap", 300)
    assert "A better in 100.0% of 300" in text
    other = _results(tmp_path / "o.jsonl", [("a", "басқа мәтін", "")])
    code, out, err = _main(capsys, "--compare", a, other)
    assert code == 2 and "another reference" in err and len(err.strip().splitlines()) == 1
