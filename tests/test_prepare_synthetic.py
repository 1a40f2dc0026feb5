"""data/prepare_synthetic.py: Kazakh numbers, the UI-string cleaner, the .mo/.ftl/.deb readers, the splits, espeak-ng.

Hermetic: the .mo and .deb files are built inside the tests; nothing is downloaded. The synthesis test runs only
where espeak-ng (with its Kazakh voice) and sox are installed.
"""
import importlib.util
import json
import os
import re
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import soundfile as sf

SCRIPT = Path(__file__).resolve().parents[1] / "data" / "prepare_synthetic.py"
spec = importlib.util.spec_from_file_location("prepare_synthetic", SCRIPT)
ps = importlib.util.module_from_spec(spec)
sys.modules["prepare_synthetic"] = ps  # dataclasses look their module up here
spec.loader.exec_module(ps)


@pytest.mark.parametrize("message, segments", [
    ("_Файлды ашу", ["файлды ашу"]),  # GTK accelerator
    ("Фа~йлды &сақтау", ["файлды сақтау"]),  # LibreOffice / KDE accelerators inside words
    ("Жаңа терезе (_N)", ["жаңа терезе"]),  # accelerator after the label
    ("<b>Бетті жаңарту</b>", ["бетті жаңарту"]),  # markup kept out, words kept
    ("Сәлем, әлем!", ["сәлем әлем"]),  # FLEURS: punctuation -> space, lowercase
    ("Файлды ашу.\nҚайта көріңіз!", ["файлды ашу", "қайта көріңіз"]),  # sentences split
    ("Файл табылмады. {name} жоқ.", ["файл табылмады"]),  # the sentence with a placeholder is dropped
    ("%s файлын ашу мүмкін емес", []),  # printf placeholder
    ("%1$S арқылы жіберілді", []),  # Mozilla placeholder
    ("$(ARG1) процедура сыртында рұқсат етілмеген.", []),  # LibreOffice placeholder
    ("%PRODUCTNAME іске қосылды", []),
    ("Open file", []),  # Latin
    ("Файлды Save ету", []),  # mixed script
    ("Їжак їсть яблуко", []),  # Ukrainian letters are not Kazakh
    ("Мүмкiн емес", ["мүмкін емес"]),  # Latin i typed for Kazakh і
    ("21 файл көшірілді", ["жиырма бір файл көшірілді"]),
    ("1990 жылы шыққан", ["бір мың тоғыз жүз тоқсан жылы шыққан"]),
    ("50% масштаб", ["елу пайыз масштаб"]),
    ("Нұсқа 1.5 орнатылды", []),  # decimal
    ("1-ші бет", []),  # ordinal
    ("10 000 жол", []),  # thousands separator
    ("Сақтау", []),  # one word
    (" ".join(["сөз"] * 13), []),  # too long
    ("Файлдар;Бумалар;Ашу;", []),  # .desktop keyword lists split into single words
])
def test_clean_message(message, segments):
    assert ps.clean_message(message) == segments


def test_kazakh_alphabet():
    assert len(ps.KAZAKH_LETTERS) == 42  # 33 Russian letters + ә ғ қ ң ө ұ ү һ і
    assert set("әғқңөұүһі") <= ps.KAZAKH_LETTERS


def test_normalize_keeps_combining_marks():
    assert ps.normalize("Сәлем,  ӘЛЕМ! «тест»") == "сәлем әлем тест"
    assert ps.normalize("И\u0306") == "й"  # never strip combining marks: NFC joins a decomposed й


def write_mo(path: Path, entries: dict[bytes, bytes]) -> None:
    """A little-endian GNU .mo file (the layout of CPython's Tools/i18n/msgfmt.py), no hash table."""
    keys = sorted(entries)
    ids = strs = b""
    offsets = []
    for k in keys:
        offsets.append((len(ids), len(k), len(strs), len(entries[k])))
        ids += k + b"\0"
        strs += entries[k] + b"\0"
    key_start = 7 * 4 + 16 * len(keys)
    value_start = key_start + len(ids)
    table = [x for o1, l1, _, _ in offsets for x in (l1, o1 + key_start)]
    table += [x for _, _, o2, l2 in offsets for x in (l2, o2 + value_start)]
    header = struct.pack("<Iiiiiii", 0x950412DE, 0, len(keys), 28, 28 + 8 * len(keys), 0, 0)
    path.write_bytes(header + struct.pack(f"<{len(table)}i", *table) + ids + strs)


MO_ENTRIES = {
    b"": b"Content-Type: text/plain; charset=UTF-8\nPlural-Forms: nplurals=1; plural=0;\n",
    b"Open the file": "Файлды ашу".encode(),
    b"menu\x04Close": "Жабу".encode(),  # msgctxt
    b"%d file\x00%d files": "%d файл".encode(),  # plural
}


def test_read_mo(tmp_path):
    write_mo(tmp_path / "x.mo", MO_ENTRIES)
    assert sorted(ps.read_mo((tmp_path / "x.mo").read_bytes(), "x.mo")) == ["%d файл", "Жабу", "Файлды ашу"]
    with pytest.raises(ps.SourceError, match=r"^bad\.mo: "):
        ps.read_mo(b"not a catalogue at all", "bad.mo")
    data = (tmp_path / "x.mo").read_bytes()
    with pytest.raises(ps.SourceError, match=r"^cut\.mo: .*past the end"):
        ps.read_mo(data[:60], "cut.mo")


def test_read_mo_with_plural_forms_gettext_refuses(tmp_path):
    """gettext.GNUTranslations raises on this header (three ayatana-indicator packages ship one like it)."""
    entries = dict(MO_ENTRIES)
    entries[b""] = b"Content-Type: text/plain; charset=UTF-8\nPlural-Forms: nplurals=2; plural=EXPRESSION;\n"
    entries[b"%d day\x00%d days"] = "%d күн\x00%d күндер".encode()
    write_mo(tmp_path / "p.mo", entries)
    assert sorted(ps.read_mo((tmp_path / "p.mo").read_bytes(), "p.mo")) == [
        "%d күн", "%d күндер", "%d файл", "Жабу", "Файлды ашу"]


def test_is_kk_catalogue():
    assert ps.is_kk_catalogue("usr/share/locale/kk/LC_MESSAGES/app.mo")
    assert ps.is_kk_catalogue("usr/share/locale/kk_KZ/LC_MESSAGES/app.mo")
    assert ps.is_kk_catalogue("usr/lib/firefox-esr/browser/extensions/langpack-kk@firefox-esr.mozilla.org.xpi")
    assert not ps.is_kk_catalogue("usr/share/locale/kkj/LC_MESSAGES/app.mo")
    assert not ps.is_kk_catalogue("usr/share/locale/kk/LC_MESSAGES/app.po")


def test_package_list_covers_the_debian_kk_catalogues():
    packages = ps.read_package_list()
    assert len(packages) == len(set(packages)) >= 600
    assert {"libreoffice-l10n-kk", "firefox-esr-l10n-kk", "iso-codes", "kstars-data", "xfce4-panel"} <= set(packages)
    assert all(re.fullmatch(r"[a-z0-9][a-z0-9.+-]+", p) for p in packages)


def test_interleave_spreads_the_number_sentences():
    assert ps.interleave(list("abcdef"), ["X", "Y"], 0.5) == ["a", "X", "b", "Y", "c", "d", "e", "f"]
    mixed = ps.interleave([f"u{i}" for i in range(1000)], [f"n{i}" for i in range(300)], 0.2)
    assert sorted(mixed) == sorted([f"u{i}" for i in range(1000)] + [f"n{i}" for i in range(300)])
    assert [sum(v[0] == "n" for v in mixed[:k]) for k in (100, 500)] == [20, 100]  # the share, from the start


def test_cldr_names_and_template_names():
    xml = """<ldml><localeDisplayNames><languages><language type="de">неміс тілі</language>
<language type="zh" alt="menu">қытай тілі (мандарин)</language><language type="x">эсперанто</language></languages>
<territories><territory type="JP">Жапония</territory><territory type="001">әлем</territory></territories>
</localeDisplayNames><dates><timeZoneNames><zone type="Asia/Almaty"><exemplarCity>Алматы</exemplarCity></zone>
<zone type="Etc/Unknown"><exemplarCity>Белгісіз қала</exemplarCity></zone>
<zone type="America/La_Paz"><exemplarCity>Ла-Пас</exemplarCity></zone>
<zone type="Europe/Paris"><exemplarCity>Paris</exemplarCity></zone></timeZoneNames></dates></ldml>"""
    cldr = ps.cldr_names(xml.encode(), "kk.xml")
    assert cldr == {"city": ["Алматы", "Белгісіз қала", "Ла-Пас", "Paris"], "country": ["Жапония"],
                    "language": ["неміс тілі", "эсперанто"]}
    names = ps.template_names(["Германия", "Шығыс Самоа (АҚШ)"], cldr)
    assert "Ла-Пас" in names["city"] and "Алматы" in names["city"]
    assert "Белгісіз қала" not in names["city"] and "Paris" not in names["city"]  # not a name; not Kazakh letters
    assert names["country"] == ["Германия", "Жапония"] and names["lang_acc"] == ["неміс тілін"]
    with pytest.raises(ps.SourceError, match=r"^bad\.xml: "):
        ps.cldr_names(b"<ldml", "bad.xml")


def test_read_ftl_and_properties():
    ftl = """# comment
title = Құлау хабарламалары
    .label = Жіберу
brand = { -brand-short-name } құлады
multi = Бірінші жол
    екінші жол
count =
    { $n ->
        [one] Бір бет
       *[other] { $n } бет
    }
"""
    assert ps.read_ftl(ftl) == ["Құлау хабарламалары", "Жіберу", "{ -brand-short-name } құлады",
                                "Бірінші жол\nекінші жол", "Бір бет", "{ $n } бет"]
    props = "# c\nsource.label = %1$S арқылы\nfiles = %S файл;%S файлдар\n"
    assert ps.read_properties(props) == ["%1$S арқылы", "%S файл", "%S файлдар"]


@pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="needs dpkg-deb")
def test_read_deb(tmp_path):
    root = tmp_path / "pkg"
    (root / "DEBIAN").mkdir(parents=True)
    (root / "DEBIAN" / "control").write_text(
        "Package: kk-test\nVersion: 1.0\nArchitecture: all\nMaintainer: t <t@t>\nDescription: t\n")
    for lang in ("kk", "ru"):
        (root / f"usr/share/locale/{lang}/LC_MESSAGES").mkdir(parents=True)
        write_mo(root / f"usr/share/locale/{lang}/LC_MESSAGES/app.mo", MO_ENTRIES)
    (root / "usr/share/extra.xml").write_bytes(b"<x/>")
    (root / "usr/share/doc/kk-test").mkdir(parents=True)
    (root / "usr/share/doc/kk-test/copyright").write_text(
        "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n\n"
        "Files: debian/*\nLicense: GPL-3+\n\nFiles: *\nCopyright: 2020 x\nLicense: LGPL-2.1+\n")
    subprocess.run(["dpkg-deb", "--build", "--root-owner-group", str(root), str(tmp_path / "kk.deb")],
                   check=True, capture_output=True)
    got = ps.read_deb(tmp_path / "kk.deb", extra=("usr/share/extra.xml",))
    assert list(got.catalogues) == ["usr/share/locale/kk/LC_MESSAGES/app.mo"]  # the ru catalogue is not read
    assert sorted(got.strings) == ["%d файл", "Жабу", "Файлды ашу"]
    assert got.extra == {"usr/share/extra.xml": b"<x/>"}
    assert ps.licence_of(got.copyright) == "LGPL-2.1+"  # the Files: * paragraph, not the first one
    assert ps.licence_of("This is under the GNU Lesser General Public License.") == "free-form: LGPL"


def build_deb(tmp_path: Path, package: str, files: dict[str, bytes], out: Path) -> Path:
    """A minimal .deb of package holding files (path -> bytes), built by dpkg-deb into out."""
    root = tmp_path / f"root-{package}"
    (root / "DEBIAN").mkdir(parents=True)
    (root / "DEBIAN" / "control").write_text(
        f"Package: {package}\nVersion: 1.0\nArchitecture: all\nMaintainer: t <t@t>\nDescription: t\n")
    for path, data in files.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_bytes(data)
    deb = out / f"{package}_1.0_all.deb"
    subprocess.run(["dpkg-deb", "--build", "--root-owner-group", str(root), str(deb)], check=True, capture_output=True)
    return deb


@pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="needs dpkg-deb")
def test_text_stage_end_to_end(tmp_path, capsys):
    """Cached .debs only (nothing downloaded): a broken one is named on stderr, the rest still make the text."""
    debs = tmp_path / "synth" / "debs"
    debs.mkdir(parents=True)
    words = ["бірінші", "екінші", "үшінші", "соңғы", "жаңа", "ескі"]
    entries = {b"": MO_ENTRIES[b""], **{f"m{i}".encode(): f"Файл {w} ашылды".encode() for i, w in enumerate(words)}}
    write_mo(tmp_path / "app.mo", entries)
    write_mo(tmp_path / "iso.mo", {b"": MO_ENTRIES[b""], b"Japan": "Жапония".encode(), b"Peru": "Перу".encode()})
    build_deb(tmp_path, "kk-good", {"usr/share/locale/kk/LC_MESSAGES/app.mo": (tmp_path / "app.mo").read_bytes(),
                                    ps.ISO_COUNTRIES_KK: (tmp_path / "iso.mo").read_bytes()}, debs)
    cldr = ("<ldml><dates><timeZoneNames><zone type='Asia/Almaty'><exemplarCity>Алматы</exemplarCity></zone>"
            "<zone type='Europe/Oslo'><exemplarCity>Осло</exemplarCity></zone></timeZoneNames></dates></ldml>")
    build_deb(tmp_path, ps.CLDR_PACKAGE, {ps.CLDR_KK: cldr.encode()}, debs)
    (debs / "kk-bad_1.0_all.deb").write_bytes(b"!<arch>\nnot really a deb")

    out = tmp_path / "synth"
    rc = ps.main(["text", "--out", str(out), "--packages", "kk-good", "kk-bad", "--n-valid", "3", "--n-test", "3",
                  "--n-numbers", "40", "--number-share", "0.5"])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if "kk-bad" in line]
    assert rc == 1 and len(errors) == 1 and errors[0].startswith(f"error: {debs / 'kk-bad_1.0_all.deb'}: ")
    assert "Traceback" not in err
    sources = [line.split("\t") for line in (out / "SOURCES.tsv").read_text().splitlines()]
    assert [r[0] for r in sources] == ["package", "kk-good", ps.CLDR_PACKAGE, "data/kk_templates.py"]
    assert sources[1][4] == "6" and sources[3][4] == "40"
    names = json.loads((out / "text" / "names.json").read_text())
    assert names["country"] == ["Жапония", "Перу"] and {"Алматы", "Осло", "Астана"} <= set(names["city"])
    test, valid, lm = ((out / "text" / f"{n}.txt").read_text().splitlines() for n in ("test", "valid", "lm"))
    assert (len(test), len(valid), len(lm)) == (3, 3, 40)
    assert not set(test) & set(valid) and not (set(test) | set(valid)) & set(lm)
    assert sum(bool(re.search(r"\d", s)) for s in test + valid) >= 2  # number sentences reach the held-out splits
    assert "файл бірінші ашылды" in test + valid + lm


def test_splits_hold_out_sentences_and_voice():
    sentences = ps.split_sentences([f"сөз {ps.kk_numbers.cardinal(i)}" for i in range(200)], n_valid=20, n_test=30)
    assert [len(sentences[k]) for k in ("test", "valid", "lm")] == [30, 20, 150]
    plans = ps.plan_splits(sentences, n_train=100, held_out="f3", seed=0)
    train, valid, test = plans["train"], plans["valid"], plans["test"]
    assert len(train) == 100 and {u.voice for u in test} == {"f3"}
    assert "f3" not in {u.voice for u in train + valid} and len({u.voice for u in train}) >= 8
    assert not {u.text for u in test} & {u.text for u in train + valid}
    assert not {u.text for u in valid} & {u.text for u in train}
    assert all(130 <= u.speed <= 190 and 30 <= u.pitch <= 70 for u in train + valid + test)
    again = ps.plan_splits(sentences, n_train=100, held_out="f3", seed=0)
    assert again == plans and ps.plan_splits(sentences, n_train=100, held_out="f3", seed=1) != plans
    with pytest.raises(ValueError):
        ps.split_sentences(["а б"] * 10, n_valid=5, n_test=5)


def has_espeak_kk() -> bool:
    if shutil.which("espeak-ng") is None or shutil.which("sox") is None:
        return False
    voices = subprocess.run(["espeak-ng", "--voices=kk"], capture_output=True, text=True).stdout
    return "trk/kk" in voices


@pytest.mark.skipif(not has_espeak_kk(), reason="needs espeak-ng with its kk voice, and sox")
def test_synthesize_three_utterances(tmp_path):
    assert {"m1", "f3"} <= ps.available_voices()
    utts = [ps.Utterance("test", i, text, "f3", 170, 50)
            for i, text in enumerate(["файлды ашу", "сәлем әлем", "жиырма бір бет"])]
    rows = ps.synthesize_split(utts, tmp_path / "synth", root=tmp_path, jobs=2)
    assert [r["text"] for r in rows] == ["файлды ашу", "сәлем әлем", "жиырма бір бет"]
    for row in rows:
        assert not Path(row["audio_filepath"]).is_absolute()  # relative to root
        info = sf.info(str(tmp_path / row["audio_filepath"]))
        assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
        assert row["duration"] == pytest.approx(info.frames / 16000, abs=1e-3) and 0.3 < row["duration"] < 5
        assert (row["voice"], row["speed"], row["pitch"]) == ("f3", 170, 50)
    ps.write_jsonl(tmp_path / "test.jsonl", rows)
    assert [json.loads(line) for line in (tmp_path / "test.jsonl").read_text().splitlines()] == rows
    assert not list((tmp_path / "synth").rglob("*.tmp"))  # temp files cleaned up

    mtime = (tmp_path / rows[0]["audio_filepath"]).stat().st_mtime_ns
    assert ps.synthesize_split(utts, tmp_path / "synth", root=tmp_path) == rows  # rerun: same rows...
    assert (tmp_path / rows[0]["audio_filepath"]).stat().st_mtime_ns == mtime  # ...from the existing wav

    assert ps.synthesize(utts[0], tmp_path / "long.wav", max_seconds=0.1) is None  # too long: skipped
    assert not (tmp_path / "long.wav").exists()

    # a target just over the first two utterances: one file of two, the third (too short alone) left out
    target = rows[0]["duration"] + rows[1]["duration"] + 0.1
    (long,) = ps.make_longform(rows, tmp_path / "synth", tmp_path, n_files=5, seconds=target)
    assert long["n_utterances"] == 2 and long["text"] == "файлды ашу сәлем әлем"
    expected = rows[0]["duration"] + ps.LONG_GAP_SECONDS + rows[1]["duration"]
    assert long["duration"] == pytest.approx(expected, abs=1e-3)


@pytest.mark.skipif(not has_espeak_kk(), reason="needs espeak-ng with its kk voice, and sox")
def test_synthesis_is_deterministic_and_speaks_numbers_as_our_words(tmp_path):
    digits = ps.Utterance("train", 0, "сабақ сағат 14 30 басталады", "m2", 160, 40)
    words = ps.Utterance("train", 0, "сабақ сағат он төрт отыз басталады", "m2", 160, 40)
    assert digits.spoken == words.text and digits.name == words.name  # the wav's name hashes what is spoken
    ps.synthesize(digits, tmp_path / "a.wav")
    ps.synthesize(digits, tmp_path / "b.wav")
    ps.synthesize(words, tmp_path / "c.wav")
    a = (tmp_path / "a.wav").read_bytes()
    assert a == (tmp_path / "b.wav").read_bytes()  # a rebuild gives the same bytes (no dither, no randomness)
    assert a == (tmp_path / "c.wav").read_bytes()  # espeak-ng was given our words, not the digits
    (row,) = ps.synthesize_split([digits], tmp_path / "synth", root=tmp_path)
    assert row["text"] == "сабақ сағат 14 30 басталады" and row["spoken"] == words.text


def test_fetch_debs_batches_the_download_and_skips_what_apt_lacks(tmp_path, monkeypatch, capsys):
    """A stand-in apt-get on PATH (nothing is downloaded): one call for all missing packages, then one a package
    only if that call failed (apt refuses the whole list for one unknown name)."""
    bin_dir, log = tmp_path / "bin", tmp_path / "calls.log"
    bin_dir.mkdir()
    (bin_dir / "apt-get").write_text(f"""#!/bin/sh
echo "$@" >> {log}
shift
for p in "$@"; do [ "$p" = nosuch ] && {{ echo "E: Unable to locate package nosuch" >&2; exit 100; }}; done
for p in "$@"; do echo deb > "${{p}}_1.0_all.deb"; done
""")
    (bin_dir / "apt-get").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    cache = tmp_path / "debs"
    cache.mkdir()
    (cache / "cached_2.0_all.deb").write_text("deb")

    debs = ps.fetch_debs(["cached", "a", "b"], cache)
    assert debs == {p: cache / f"{p}_{'2.0' if p == 'cached' else '1.0'}_all.deb" for p in ("cached", "a", "b")}
    assert log.read_text().splitlines() == ["download a b"]  # one call, and none for the cached package
    log.unlink()
    debs = ps.fetch_debs(["a", "c", "nosuch", "d"], cache)
    assert list(debs) == ["a", "c", "d"] and all(p.exists() for p in debs.values())
    assert log.read_text().splitlines() == ["download c nosuch d", "download c", "download nosuch", "download d"]
    assert "skip nosuch: apt-get download failed: E: Unable to locate package nosuch" in capsys.readouterr().err
    assert not list(cache.glob(".*"))  # no temp folders left


@pytest.mark.skipif(not has_espeak_kk(), reason="needs espeak-ng with its kk voice, and sox")
def test_speech_stage_names_a_line_it_cannot_speak(tmp_path, capsys):
    text = tmp_path / "text"
    text.mkdir()
    (text / "lm.txt").write_text("файлды ашу\n", encoding="utf-8")
    (text / "valid.txt").write_text("сәлем әлем\nбіз 5мин күттік\n", encoding="utf-8")
    (text / "test.txt").write_text("жаңа терезе\n", encoding="utf-8")
    assert ps.main(["speech", "--out", str(tmp_path), "--n-long", "0"]) == 1
    assert capsys.readouterr().err.strip() == f"error: {text / 'valid.txt'}:2: verbalize: cannot read '5мин' " \
                                              "(digits glued to letters)"
    assert not (tmp_path / "wavs").exists()  # checked before any speech
