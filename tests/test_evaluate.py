"""evaluate.py: the CLI on small files, the FLEURS reader on a folder built here, the bootstrap."""
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import jiwer
import numpy as np
import pytest
import soundfile as sf

from evaluate import EvalInputError, bootstrap_ci, main, paired_bootstrap, read_fleurs, read_pair
from wer import ErrorStats, corpus_stats

ROOT = Path(__file__).resolve().parents[1]
REFS = ["Сәлем, әлем!", "бүгін ауа райы жақсы", "мектепте 6,5 сағат оқимыз", "ұлы дала елі"]
HYPS = ["сәлем элем", "бүгін ауа райы жақсы", "мектепте 6 5 сағат", "ұлы дала елі мен"]


def _run(*args):
    return subprocess.run([sys.executable, str(ROOT / "evaluate.py"), *args], capture_output=True,
                          text=True, cwd=ROOT, timeout=60)


def _write(path: Path, lines):
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(path)


def test_cli_json_matches_jiwer(tmp_path):
    ref, hyp = _write(tmp_path / "ref.txt", REFS), _write(tmp_path / "hyp.txt", HYPS)
    r = _run("--ref", ref, "--hyp", hyp, "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    norm_refs = ["сәлем әлем", "бүгін ауа райы жақсы", "мектепте 6 5 сағат оқимыз", "ұлы дала елі"]
    w, c = jiwer.process_words(norm_refs, HYPS), jiwer.process_characters(norm_refs, HYPS)
    assert out["n"] == 4
    assert out["wer"] == pytest.approx(w.wer) and out["cer"] == pytest.approx(c.cer)
    assert (out["substitutions"], out["deletions"], out["insertions"]) == (w.substitutions, w.deletions, w.insertions)
    assert out["ref_words"] == 14 and out["ref_chars"] == sum(len(s) for s in norm_refs)
    assert out["wer_ci"][0] <= out["wer"] <= out["wer_ci"][1]


def test_cli_no_normalize_and_text_report(tmp_path):
    ref, hyp = _write(tmp_path / "ref.txt", REFS), _write(tmp_path / "hyp.txt", HYPS)
    raw = json.loads(_run("--ref", ref, "--hyp", hyp, "--json", "--no-normalize").stdout)
    assert raw["wer"] == pytest.approx(jiwer.wer(REFS, HYPS))        # "Сәлем," != "сәлем"
    r = _run("--ref", ref, "--hyp", hyp, "--worst", "2")
    assert r.returncode == 0 and "WER" in r.stdout and "CER" in r.stdout and "95% CI" in r.stdout
    assert "REF: сәлем ӘЛЕМ" in r.stdout and "HYP: сәлем ЭЛЕМ" in r.stdout


def test_cli_ids_matched_in_any_order(tmp_path):
    ref = _write(tmp_path / "ref.tsv", [f"u{k}\t{t}" for k, t in enumerate(REFS)])
    hyp = _write(tmp_path / "hyp.tsv", [f"u{k}\t{HYPS[k]}" for k in (3, 1, 0, 2)])
    plain_ref, plain_hyp = _write(tmp_path / "r.txt", REFS), _write(tmp_path / "h.txt", HYPS)
    by_id = json.loads(_run("--ref", ref, "--hyp", hyp, "--json").stdout)
    by_line = json.loads(_run("--ref", plain_ref, "--hyp", plain_hyp, "--json").stdout)
    assert by_id == by_line
    ids, refs, hyps = read_pair(ref, hyp)
    assert ids == ["u0", "u1", "u2", "u3"] and hyps == HYPS


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


def test_empty_hypothesis_lines_are_kept(tmp_path):
    ref = _write(tmp_path / "ref.txt", ["бір екі", "үш"])
    hyp = tmp_path / "hyp.txt"
    hyp.write_text("\nүш\n", encoding="utf-8")           # first hypothesis is empty
    out = json.loads(_run("--ref", ref, "--hyp", str(hyp), "--json").stdout)
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
    with pytest.raises(EvalInputError, match="line 1 has 2"):
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
