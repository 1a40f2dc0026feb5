"""Synthetic Kazakh speech for the small teaching model: text from Debian's Kazakh translations, audio from espeak-ng.

A staged data-prep CLI in the manner of llama2.c's tinystories.py:

    python data/prepare_synthetic.py text     # Debian kk translations -> data/synth/text/{all,lm,valid,test}.txt
    python data/prepare_synthetic.py speech   # espeak-ng kk voice -> data/synth/{train,valid,test}.jsonl (+ test_long)
    python data/prepare_synthetic.py all      # both
    python data/prepare_synthetic.py ood      # data/ood_sentences.txt, voice f3, unseen speeds/pitches -> ood.jsonl
    python data/prepare_synthetic.py degraded # test split -> test_{quiet,loud,tel8k,noise10}.jsonl

Stage `text` downloads (once, ~960 MB; cached in data/synth/debs) every Debian package that carries a Kazakh
translation catalogue (data/kk_packages.txt, made with apt-file: LibreOffice, Firefox, KDE, GNOME, Xfce, MATE,
iso-codes, ...), reads the msgstr values of their `kk` .mo catalogues (and the .ftl/.properties files inside the
Mozilla language-pack .xpi), cleans them into short Kazakh Cyrillic segments (accelerators and tags removed, sentences
with placeholders dropped, small numbers spelt out in Kazakh), normalises them as FLEURS does (recipe §5) and
de-duplicates and shuffles them with a seed. To these it adds --n-numbers sentences made from data/kk_templates.py:
numbers, years, dates, clock times and ordinals written with digits as FLEURS writes them ("2015 жылы", "сағат 14 30"),
filled with Kazakh place names read from iso-codes (countries) and CLDR (unicode-cldr-core: countries, languages,
and the Kazakh names of tzdata's time-zone cities). They are spread through the list (--number-share of it). The first
--n-test lines become the test sentences, the next --n-valid the validation sentences, and every other line goes to
lm.txt (text for language-model pretraining, never containing a valid/test sentence). Each package's version and
licence go to data/synth/SOURCES.tsv, the template names to data/synth/text/names.json.

Stage `speech` speaks the sentences with espeak-ng's Kazakh voice, a random voice variant, speed and pitch per
utterance (seeded), resampled by sox to 16 kHz mono int16 without dither, so a rebuild gives the same bytes. Digits
are never given to espeak-ng: kk_numbers.verbalize reads them as our words ("екі мың он бесінші жылы"), and the
manifest keeps both (`text` the target with digits, `spoken` the words). The test split uses sentences and one voice
variant (--held-out-voice) that training never sees; valid uses unseen sentences but training voices. Manifests are
NeMo style JSON lines: `audio_filepath` (relative to the manifest's folder, NeMo's convention; --root to change),
`text`, `duration` (s), `voice`, `speed`, `pitch`, `spoken`. `test_long.jsonl` joins test utterances into ~60 s files.

Stage `ood` speaks the sentences of data/ood_sentences.txt (written for this test: everyday and news-like Kazakh with
numbers, dates and names) with the held-out voice at speeds (95..120, 200..240 wpm) and pitches (5..25, 75..95) outside
the training ranges, into data/synth/ood/ and ood.jsonl. Stage `degraded` makes four copies of the test split:
test_quiet (-20 dB) and test_loud (+12 dB, unclipped), both float wavs; test_tel8k (300..3400 Hz, 8 kHz); test_noise10
(white noise at 10 dB SNR, seeded per file, float wav); wavs in data/synth/wavs/test_<name>/, rows as in test.jsonl plus
`degradation`.

Every file is written atomically (atomic.py); reruns skip the .debs and wavs already there (a wav's
name carries a hash of what is spoken and the voice settings, so a changed seed never reuses a stale file).

What it does not do: it is not natural speech (espeak is a formant synthesiser: the teaching model learns to
read espeak, not people); in UI strings it does not read numbers above 9999, decimals, dates or ordinals (such
sentences are dropped: the templates supply them); it does not read LibreOffice's help or .xcd registry files.
"""

import argparse
import hashlib
import html
import io
import json
import os
import random
import re
import shutil
import struct
import subprocess
import sys
import tarfile
import tempfile
import time
import unicodedata
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
from atomic import atomic_path, write_text  # noqa: E402
import cli  # noqa: E402
sys.path.insert(0, str(Path(__file__).resolve().parent))  # its sibling modules, however this file is loaded
import kk_numbers  # noqa: E402
import kk_templates  # noqa: E402
from tokenizer import normalize  # noqa: E402  the one normalisation of targets, references and hypotheses (recipe §5)
OUT_DIR = REPO_ROOT / "data" / "synth"

SAMPLE_RATE = 16000  # = mel.SAMPLE_RATE; espeak-ng speaks at 22050 Hz, sox resamples
MAX_SECONDS = 10.0  # longer utterances are skipped
LONG_SECONDS = 60.0  # target length of a long-form test file
LONG_GAP_SECONDS = 0.3  # silence between the utterances joined into a long-form file

PACKAGES_FILE = Path(__file__).with_name("kk_packages.txt")  # every Debian package with a kk catalogue (apt-file)
CLDR_PACKAGE = "unicode-cldr-core"  # CLDR's Kazakh names of countries, languages and time-zone cities
CLDR_KK = "usr/share/unicode/cldr/common/main/kk.xml"
ISO_COUNTRIES_KK = "usr/share/locale/kk/LC_MESSAGES/iso_3166-1.mo"  # iso-codes' only other kk files: 3166-3, a link


def read_package_list(path: Path = PACKAGES_FILE) -> list[str]:
    """Package names, one a line; '#' starts a comment."""
    return [line.split("#")[0].strip() for line in path.read_text(encoding="utf-8").splitlines()
            if line.split("#")[0].strip()]


# espeak-ng voice variants (`espeak-ng --voices=variant`, files !v/<name>); one is held out for the test split
VOICES = ["m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4", "f5"]
HELD_OUT_VOICE = "f3"

KAZAKH_LETTERS = set("аәбвгғдеёжзийкқлмнңоөпрстуұүфхһцчшщъыіьэюя")  # the 42 letters
CYRILLIC_RE = re.compile(r"[\u0400-\u04ff]")


class SourceError(ValueError):
    """A translation file that cannot be read; str(e) == '<path>: <problem>'."""


@dataclass
class Utterance:
    """One sentence to speak, with the voice settings chosen for it."""
    split: str  # train | valid | test
    index: int  # position in its split
    text: str  # normalised sentence
    voice: str  # espeak-ng variant, e.g. "f3"
    speed: int  # words per minute
    pitch: int  # 0..99

    @property
    def spoken(self) -> str:
        """What espeak-ng is given: the text with its digits in words ('2015 жылы' -> 'екі мың он бесінші жылы')."""
        return kk_numbers.verbalize(self.text)

    @property
    def name(self) -> str:
        """File stem: index + hash of what is spoken, so changed settings never reuse an old wav."""
        key = f"{self.spoken}|{self.voice}|{self.speed}|{self.pitch}|nodither".encode()  # wavs made with dither differ
        return f"{self.index:06d}_{hashlib.sha1(key).hexdigest()[:8]}"


# ---------------------------------------------------------------------------------------------- numbers

def spell_numbers(sentence: str) -> str | None:
    """Digits of a UI string -> Kazakh words; None when a number can't be read simply (decimal, date, ordinal,
    > 9999, '007')."""
    if re.search(r"\d[.,:/]\d|\d-?[^\W\d_]", sentence):  # 1.5, 10:30, 01/02, 1-ші, 5мин
        return None
    numbers = re.findall(r"\d+", sentence)
    if any(len(d) > 4 or (len(d) > 1 and d[0] == "0") for d in numbers):  # "10 000" splits into "000"
        return None
    return re.sub(r"\d+", lambda m: f" {kk_numbers.cardinal(int(m.group()))} ", sentence)


# ---------------------------------------------------------------------------------------------- cleaning

# a placeholder stands for a word (a file name, a count, the brand): a sentence that had one is missing that word,
# often mid-sentence and inflected around it ("%s файлын ашу"), so we mark it and drop the sentence (~6% of them)
PLACEHOLDER = "\ue000"  # private-use: survives normalize(), fails is_kazakh()
MARKUP_RES = [  # (pattern, replacement), applied in order
    (re.compile(r"\\[nt]"), "\n"),  # escaped newlines/tabs of .properties values
    (re.compile(r"<[^<>]{0,300}>"), " "),  # <b>, </a>, <a href="...">: markup around words, not words
    (re.compile(r"\{[^{}]*\}"), PLACEHOLDER),  # {name}, {0}, { -brand-short-name } (twice: one level of nesting)
    (re.compile(r"\{[^{}]*\}"), PLACEHOLDER),
    (re.compile(r"(\d)\s?%(?![A-Za-z0-9(])"), r"\1 пайыз"),  # 50% is "елу пайыз", not a placeholder
    (re.compile(r"%(?:\(\w+\))?[-+#0-9.$]*[A-Za-z_]*%?"), PLACEHOLDER),  # %s %d %1 %1$S %.2f %(name)s %PRODUCTNAME
    (re.compile(r"\$\([\w.]+\)|\$\{[^}]*\}|\$[A-Za-z_]\w*|\$\d+"), PLACEHOLDER),  # $(ARG1) ${var} $VAR $1
    (re.compile(r"\(\s*[_&~]?[A-Za-z0-9]\s*\)"), " "),  # "(_F)" accelerators after a translated label
    (re.compile(r"[_&~]"), ""),  # accelerators inside words: "_Файл", "Фа~йл", "&Ашу"
]
SENTENCE_SPLIT_RE = re.compile(r"(?<=[.!?…])\s+|[\n\r;|•]+")


def strip_markup(message: str) -> str:
    """Remove HTML tags and accelerators from one UI message and mark its placeholders with PLACEHOLDER."""
    text = html.unescape(message)
    for pattern, repl in MARKUP_RES:
        text = pattern.sub(repl, text)
    return text


def fix_latin_i(text: str) -> str:
    """Latin i/I inside a Cyrillic word -> Kazakh і/І (older kk translations typed і as Latin: 'мүмкiн')."""
    def fix(m: re.Match) -> str:
        word = m.group()
        return word.replace("i", "і").replace("I", "І") if CYRILLIC_RE.search(word) else word
    return re.sub(r"\w+", fix, text)


def is_kazakh(segment: str, min_words: int = 2, max_words: int = 12) -> bool:
    """A normalised segment of min..max words written only in the Kazakh Cyrillic alphabet."""
    words = segment.split()
    return min_words <= len(words) <= max_words and all(c in KAZAKH_LETTERS for w in words for c in w)


def clean_message(message: str, min_words: int = 2, max_words: int = 12) -> list[str]:
    """One translated UI message -> its clean normalised Kazakh sentences (maybe none)."""
    text = strip_markup(unicodedata.normalize("NFC", message))
    segments = []
    for sentence in SENTENCE_SPLIT_RE.split(text):
        sentence = spell_numbers(fix_latin_i(sentence))
        if sentence is None:
            continue
        segment = normalize(sentence)
        if is_kazakh(segment, min_words, max_words):
            segments.append(segment)
    return segments


# ---------------------------------------------------------------------------------------------- readers

def read_mo(data: bytes, path: str) -> list[str]:
    """The msgstr values (all plural forms) of a compiled gettext catalogue (GNU .mo: a header, then two tables of
    (length, offset) pairs). Read by hand: gettext.GNUTranslations refuses catalogues whose Plural-Forms it cannot
    parse, and we never evaluate plurals."""
    if len(data) < 20 or data[:4] not in (b"\xde\x12\x04\x95", b"\x95\x04\x12\xde"):
        raise SourceError(f"{path}: not a readable .mo catalogue (bad magic number)")
    order = "<" if data[:4] == b"\xde\x12\x04\x95" else ">"
    _, count, ids_at, strs_at = struct.unpack(f"{order}4I", data[4:20])
    if max(ids_at, strs_at) + 8 * count > len(data):
        raise SourceError(f"{path}: not a readable .mo catalogue (tables past the end of the file)")
    values = []
    for i in range(count):
        id_len, id_at = struct.unpack(f"{order}2I", data[ids_at + 8 * i: ids_at + 8 * i + 8])
        str_len, str_at = struct.unpack(f"{order}2I", data[strs_at + 8 * i: strs_at + 8 * i + 8])
        if id_at + id_len > len(data) or str_at + str_len > len(data):
            raise SourceError(f"{path}: not a readable .mo catalogue (entry {i} past the end of the file)")
        if id_len == 0:  # the "" entry is the header
            continue
        try:
            text = data[str_at:str_at + str_len].decode("utf-8")
        except UnicodeDecodeError as e:
            raise SourceError(f"{path}: not a readable .mo catalogue (entry {i} is not UTF-8: {e})") from None
        values += [v for v in text.split("\0") if v]  # plural forms are NUL-separated
    return values


def read_ftl(text: str) -> list[str]:
    """Message values, attributes and selector variants of a Fluent (.ftl) file, one string per value."""
    values, current = [], None
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            current = None
            continue
        m = re.match(r"\s*-?\.?[\w.-]+\s*=\s*(.*)$", line)  # key = value, -term = value, .attr = value
        v = re.match(r"\s*\*?\[[\w-]+\]\s*(.*)$", line)  # [one] variant text
        if m or v:
            values.append((m or v).group(1))
            current = len(values) - 1
        elif line[0].isspace() and current is not None and not line.strip().startswith("}"):
            values[current] += "\n" + line.strip()  # continuation line of a multi-line value
        else:
            current = None
    # selector openers ("{ $n ->") keep an unbalanced brace (their text is in the variants): drop them
    return [v for v in values if v.count("{") == v.count("}")]


def read_properties(text: str) -> list[str]:
    """Values of a Java-style .properties file; 'a;b' plural forms become separate values."""
    values = []
    for line in text.splitlines():
        if line.lstrip().startswith(("#", "!")) or "=" not in line:
            continue
        values += line.split("=", 1)[1].strip().split(";")
    return values


def read_xpi(data: bytes, path: str) -> list[str]:
    """Strings of a Mozilla language pack (.xpi, a zip of .ftl and .properties files)."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile:
        raise SourceError(f"{path}: not a zip archive") from None
    values = []
    for name in archive.namelist():
        if name.endswith(".ftl"):
            values += read_ftl(archive.read(name).decode("utf-8", "replace"))
        elif name.endswith(".properties"):
            values += read_properties(archive.read(name).decode("utf-8", "replace"))
    return values


def is_kk_catalogue(name: str) -> bool:
    """A Kazakh .mo (any folder named kk or kk_KZ, e.g. usr/share/locale/kk/LC_MESSAGES) or a kk Mozilla langpack."""
    parts = name.split("/")
    return ((name.endswith(".mo") and bool({"kk", "kk_KZ"} & set(parts)))
            or (name.endswith(".xpi") and "langpack-kk" in parts[-1]))


@dataclass
class DebText:
    """What we read of one .deb: the strings of each kk catalogue, its copyright file, and any extra files asked for."""
    catalogues: dict[str, list[str]]  # path inside the package -> msgstr values
    copyright: str
    extra: dict[str, bytes]  # path -> bytes, for the paths given to read_deb

    @property
    def strings(self) -> list[str]:
        return [s for values in self.catalogues.values() for s in values]


def read_deb(deb: Path, extra: tuple[str, ...] = ()) -> DebText:
    """The kk catalogues, copyright text and the `extra` files of a .deb, streamed (a .deb can hold 300 MB of data).

    A catalogue that cannot be read raises SourceError naming the .deb and the file."""
    catalogues, copyright_text, files = {}, "", {}
    proc = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        with tarfile.open(fileobj=proc.stdout, mode="r|") as tar:
            for member in tar:
                name = member.name.removeprefix("./")
                if not member.isfile():
                    continue
                if is_kk_catalogue(name):
                    data = tar.extractfile(member).read()
                    read = read_mo if name.endswith(".mo") else read_xpi
                    catalogues[name] = read(data, f"{deb.name}:{name}")
                elif re.fullmatch(r"usr/share/doc/[^/]+/copyright", name):
                    copyright_text = tar.extractfile(member).read().decode("utf-8", "replace")
                elif name in extra:
                    files[name] = tar.extractfile(member).read()
    except tarfile.TarError as e:
        raise SourceError(f"{deb}: not a readable .deb ({e})") from None
    finally:  # on an early exit dpkg-deb gets SIGPIPE; either way it must not be left running
        proc.stdout.close()
        stderr = proc.stderr.read().decode("utf-8", "replace").strip()
        proc.stderr.close()
        returncode = proc.wait()
    if returncode != 0:
        raise SourceError(f"{deb}: dpkg-deb failed ({stderr[-200:]})")
    return DebText(catalogues, copyright_text, files)


def licence_of(copyright_text: str) -> str:
    """The licence of a package: the `Files: *` paragraph of a DEP-5 copyright file, else the names it mentions."""
    if not copyright_text:
        return "unknown (no copyright file)"
    for para in re.split(r"\n\s*\n", copyright_text):
        files = re.search(r"^Files:(.*(?:\n[ \t].*)*)", para, re.M)
        licence = re.search(r"^License:\s*(.+)", para, re.M)
        if files and licence and "*" in files.group(1).split():
            return licence.group(1).strip()
    names = re.findall(r"\b(LGPL|GPL|MPL|BSD|MIT|Apache)\b|(Lesser|Library) General Public|General Public License",
                       copyright_text)
    found = []
    for short, lesser in names:
        name = short or ("LGPL" if lesser else "GPL")
        if name not in found:
            found.append(name)
    return "free-form: " + (" / ".join(found) if found else "see copyright")


# ---------------------------------------------------------------------------------------------- stage: text

def fetch_deb(package: str, cache: Path) -> Path:
    """The cached .deb of package, downloaded with `apt-get download` into a temp folder the first time."""
    cached = sorted(cache.glob(f"{package}_*.deb"))
    if cached:
        return cached[-1]
    cache.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=cache, prefix=f".{package}."))
    try:
        subprocess.run(["apt-get", "download", package], cwd=tmp, capture_output=True, check=True)
        (deb,) = tmp.glob("*.deb")
        os.replace(deb, cache / deb.name)
        return cache / deb.name
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def fetch_debs(packages: list[str], cache: Path) -> dict[str, Path]:
    """The cached .debs of packages; the missing ones fetched by one `apt-get download` (one a call if that fails).

    A package apt cannot fetch is left out, with a line on stderr."""
    missing = [p for p in packages if not sorted(cache.glob(f"{p}_*.deb"))]
    if len(missing) > 1:
        cache.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=cache, prefix=".batch."))
        try:
            print(f"apt-get download: {len(missing)} packages into {cache}", file=sys.stderr)
            # an unknown name fails the whole call: fetch_deb below then tries the ones still missing alone
            subprocess.run(["apt-get", "download", *missing], cwd=tmp, capture_output=True)
            for deb in tmp.glob("*.deb"):  # apt renames a download to .deb only once it is complete
                os.replace(deb, cache / deb.name)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    debs = {}
    for package in packages:
        try:
            debs[package] = fetch_deb(package, cache)
        except subprocess.CalledProcessError as e:
            print(f"skip {package}: apt-get download failed: {e.stderr.decode().strip()[-200:]}", file=sys.stderr)
    return debs


def deb_version(deb: Path) -> str:
    return subprocess.run(["dpkg-deb", "-f", str(deb), "Version"], capture_output=True, text=True).stdout.strip()


def interleave(main: list[str], extra: list[str], share: float) -> list[str]:
    """extra spread evenly through the start of main, one line in 1/share, until it runs out; then the rest of main.

    So test, valid and the first --n-train lines of lm (the training utterances) all hold that share of them:
    interleave(list("abcdef"), ["X", "Y"], 0.5) -> ['a', 'X', 'b', 'Y', 'c', 'd', 'e', 'f']."""
    out, j = [], 0
    for line in main:
        out.append(line)
        if j < len(extra) and int((len(out) + 1) * share) > j:
            out.append(extra[j])
            j += 1
    return out + extra[j:]


def split_sentences(segments: list[str], n_valid: int, n_test: int) -> dict[str, list[str]]:
    """Shuffled unique segments -> test (first n_test), valid (next n_valid), lm (the rest: train + LM text)."""
    if n_valid + n_test >= len(segments):
        raise ValueError(f"split_sentences: {len(segments)} segments are too few for {n_valid} valid + {n_test} test")
    return {"test": segments[:n_test], "valid": segments[n_test:n_test + n_valid], "lm": segments[n_test + n_valid:]}


def kazakh_names(values: list[str]) -> list[str]:
    """Place names fit for a template slot: one or two capitalised words in Kazakh letters, sorted, unique."""
    keep = set()
    for value in values:
        value = unicodedata.normalize("NFC", value.strip())
        letters = set(value.lower()) - {" ", "-"}
        if value and kk_templates.is_proper_name(value) and letters <= KAZAKH_LETTERS:
            keep.add(value)
    return sorted(keep)


def cldr_names(xml: bytes, path: str) -> dict[str, list[str]]:
    """CLDR kk.xml -> its Kazakh names: 'city' (time-zone exemplar cities, i.e. tzdata's), 'country', 'language'."""
    import xml.etree.ElementTree as ET  # expat refuses entity expansion bombs (Python >= 3.7.1 with expat 2.4)

    try:
        root = ET.fromstring(xml)
    except ET.ParseError as e:
        raise SourceError(f"{path}: not readable XML ({e})") from None
    cities = [e.text or "" for e in root.iter("exemplarCity")]
    countries = [e.text or "" for e in root.iter("territory") if len(e.get("type", "")) == 2 and "alt" not in e.attrib]
    languages = [e.text or "" for e in root.iter("language") if "alt" not in e.attrib]
    return {"city": cities, "country": countries, "language": languages}


def template_names(iso_countries: list[str], cldr: dict[str, list[str]]) -> dict[str, list[str]]:
    """The slot values of kk_templates: person names, cities, countries, languages in the accusative."""
    languages = sorted({n + "н" for n in cldr.get("language", []) if re.fullmatch(r"[а-яәғқңөұүһі]+ тілі", n)})
    return {
        "person": kk_templates.PERSON_NAMES,
        "city": sorted(set(kk_templates.KAZAKH_TOWNS) | set(kazakh_names(cldr.get("city", [])))),
        "country": kazakh_names(iso_countries + cldr.get("country", [])) or ["Қазақстан"],
        "lang_acc": languages or ["қазақ тілін", "орыс тілін", "ағылшын тілін"],  # "тілі" + н: its accusative
    }


def read_sources(args: argparse.Namespace, debs: dict[str, Path]) -> tuple[set[str], dict, list[list[str]], int]:
    """Every package's clean segments -> (segments, template names, SOURCES.tsv rows, number of unreadable files)."""
    rows, segments, errors = [], set(), 0
    iso_countries, cldr = [], {}
    for package, deb in debs.items():
        try:
            got = read_deb(deb, extra=(CLDR_KK,))
            if CLDR_KK in got.extra:
                cldr = cldr_names(got.extra[CLDR_KK], f"{deb.name}:{CLDR_KK}")
        except SourceError as e:
            print(f"error: {e}", file=sys.stderr)
            errors += 1
            continue
        iso_countries += got.catalogues.get(ISO_COUNTRIES_KK, [])
        strings = got.strings
        found = {s for m in strings for s in clean_message(m, args.min_words, args.max_words)}
        segments |= found
        n_names = sum(len(v) for v in cldr.values()) if CLDR_KK in got.extra else 0
        rows.append([package, deb_version(deb), licence_of(got.copyright), str(len(strings) + n_names),
                     str(len(found)), str(len(got.catalogues) + (CLDR_KK in got.extra))])
        print(f"{package:32s} {int(rows[-1][3]):6d} strings -> {len(found):6d} segments  ({rows[-1][2]})")
    return segments, template_names(iso_countries, cldr), rows, errors


def run_text(args: argparse.Namespace) -> int:
    """The text stage -> the number of unreadable source files (each already reported on stderr)."""
    out = Path(args.out)
    if not 0 <= args.number_share <= 1 or args.n_numbers < 0:
        raise ValueError(f"--number-share {args.number_share} must be in 0..1 and --n-numbers {args.n_numbers} >= 0")
    start = time.time()
    debs = fetch_debs(list(dict.fromkeys(args.packages + [CLDR_PACKAGE])), out / "debs")
    segments, names, rows, errors = read_sources(args, debs)
    numbers = kk_templates.number_sentences(names, args.n_numbers, args.seed, normalize)
    rows.append(["data/kk_templates.py", "-", "this project's licence", str(len(numbers)), str(len(numbers)), "0"])
    print(f"{'data/kk_templates.py':32s} {len(numbers):6d} sentences with numbers, dates, times and ordinals")
    header = ["package", "version", "licence", "strings", "segments", "catalogues"]
    write_text(out / "SOURCES.tsv", "\n".join("\t".join(r) for r in [header] + rows) + "\n")
    write_text(out / "text" / "names.json", json.dumps(names, ensure_ascii=False, indent=1) + "\n")

    ordered = sorted(segments - set(numbers))  # sorted first: set order is not reproducible across runs
    random.Random(args.seed).shuffle(ordered)
    ordered = interleave(ordered, numbers, args.number_share)
    splits = split_sentences(ordered, args.n_valid, args.n_test)
    write_text(out / "text" / "all.txt", "\n".join(ordered) + "\n")
    for name, lines in splits.items():
        write_text(out / "text" / f"{name}.txt", "\n".join(lines) + "\n")
    print(f"{len(ordered)} unique segments from {len(rows) - 1} packages and the templates: "
          f"{len(splits['test'])} test, {len(splits['valid'])} valid, {len(splits['lm'])} lm -> {out / 'text'} "
          f"({time.time() - start:.0f} s)")
    return errors


# ---------------------------------------------------------------------------------------------- stage: speech

def available_voices() -> set[str]:
    """espeak-ng's variant names ('!v/f3' -> 'f3'); espeak silently ignores an unknown one, so we check."""
    listing = subprocess.run(["espeak-ng", "--voices=variant"], capture_output=True, text=True, check=True).stdout
    return {line.split()[-1].removeprefix("!v/") for line in listing.splitlines()[1:] if line.strip()}


def plan_split(texts: list[str], split: str, voices: list[str], seed: int,
               speed_range: tuple[int, int], pitch_range: tuple[int, int]) -> list[Utterance]:
    """A voice, speed and pitch per sentence, from an RNG seeded by (seed, split) so splits don't shift each other."""
    rng = random.Random(f"{seed}:{split}")
    return [Utterance(split, i, text, rng.choice(voices), rng.randint(*speed_range), rng.randint(*pitch_range))
            for i, text in enumerate(texts)]


def plan_splits(sentences: dict[str, list[str]], n_train: int, held_out: str, seed: int,
                speed_range: tuple[int, int] = (130, 190), pitch_range: tuple[int, int] = (30, 70),
                voices: list[str] = VOICES) -> dict[str, list[Utterance]]:
    """train: first n_train lm sentences, training voices; valid: valid sentences, training voices;
    test: test sentences, the held-out voice only."""
    train_voices = [v for v in voices if v != held_out]
    return {
        "train": plan_split(sentences["lm"][:n_train], "train", train_voices, seed, speed_range, pitch_range),
        "valid": plan_split(sentences["valid"], "valid", train_voices, seed, speed_range, pitch_range),
        "test": plan_split(sentences["test"], "test", [held_out], seed, speed_range, pitch_range),
    }


def synthesize(utt: Utterance, wav: Path, max_seconds: float = MAX_SECONDS) -> float | None:
    """Speak utt into wav (16 kHz mono int16) -> its duration, None if over max_seconds. An existing wav is kept."""
    if wav.exists():
        return sf.info(str(wav)).frames / SAMPLE_RATE
    wav.parent.mkdir(parents=True, exist_ok=True)
    raw = wav.with_suffix(".22k.tmp")
    try:
        with atomic_path(wav) as tmp:
            # the text goes on stdin, so a sentence can never be read as an option
            subprocess.run(["espeak-ng", "-v", f"kk+{utt.voice}", "-s", str(utt.speed), "-p", str(utt.pitch),
                            "-w", str(raw)], input=utt.spoken.encode(), capture_output=True, check=True)
            # -D: no dither, whose noise would make every rebuild of the same utterance differ
            subprocess.run(["sox", "-D", "-t", "wav", str(raw), "-t", "wav", "-r", str(SAMPLE_RATE), "-c", "1", "-b", "16",
                            "-e", "signed-integer", str(tmp)], capture_output=True, check=True)
            duration = sf.info(str(tmp)).frames / SAMPLE_RATE
            if duration > max_seconds:
                raise TooLong  # leaves no wav behind
        return duration
    except TooLong:
        return None
    finally:
        raw.unlink(missing_ok=True)


class TooLong(Exception):
    """A synthesised utterance over the length limit: its wav is not kept."""


def audio_path(wav: Path, root: Path) -> str:
    """The manifest's audio_filepath: relative to root when wav is under it, else absolute."""
    wav = wav.resolve()
    return str(wav.relative_to(root.resolve())) if wav.is_relative_to(root.resolve()) else str(wav)


def write_jsonl(path: Path, rows: list[dict]) -> None:
    write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def synthesize_split(utts: list[Utterance], out: Path, root: Path, jobs: int = 2,
                     max_seconds: float = MAX_SECONDS, wav_dir: Path | None = None) -> list[dict]:
    """Speak a split in parallel (threads: the work is in espeak/sox subprocesses) -> its manifest rows, in order.
    The wavs go to wav_dir (default out/wavs/<split>)."""
    from tqdm import tqdm

    wavs = [(wav_dir or out / "wavs" / u.split) / f"{u.name}.wav" for u in utts]
    with ThreadPoolExecutor(jobs) as pool:
        durations = list(tqdm(pool.map(lambda uw: synthesize(*uw, max_seconds), zip(utts, wavs)),
                              total=len(utts), desc=utts[0].split if utts else "", unit="utt"))
    rows = []
    for utt, wav, duration in zip(utts, wavs, durations):
        if duration is not None:
            rows.append({"audio_filepath": audio_path(wav, root), "text": utt.text, "duration": round(duration, 3),
                         "voice": utt.voice, "speed": utt.speed, "pitch": utt.pitch, "spoken": utt.spoken})
    return rows


def make_longform(rows: list[dict], out: Path, root: Path, n_files: int,
                  seconds: float = LONG_SECONDS) -> list[dict]:
    """Join consecutive test utterances (with short silences) into up to n_files wavs of about `seconds` each."""
    groups, current, total = [], [], 0.0
    for row in rows:
        current.append(row)
        total += row["duration"] + LONG_GAP_SECONDS
        if total >= seconds:
            groups.append(current)
            current, total = [], 0.0
    long_rows = []
    gap = np.zeros(int(LONG_GAP_SECONDS * SAMPLE_RATE), dtype=np.int16)
    for i, group in enumerate(groups[:n_files]):
        wav = out / "wavs" / "test_long" / f"long_{i:03d}_{hashlib.sha1(str(group).encode()).hexdigest()[:8]}.wav"
        if not wav.exists():
            pieces = []
            for row in group:
                path = Path(row["audio_filepath"])
                pieces += [sf.read(str(path if path.is_absolute() else root / path), dtype="int16")[0], gap]
            with atomic_path(wav) as tmp:
                sf.write(str(tmp), np.concatenate(pieces[:-1]), SAMPLE_RATE, subtype="PCM_16", format="WAV")
        long_rows.append({"audio_filepath": audio_path(wav, root), "text": " ".join(r["text"] for r in group),
                          "duration": round(sf.info(str(wav)).frames / SAMPLE_RATE, 3),
                          "voice": group[0]["voice"], "n_utterances": len(group)})
    return long_rows


def read_lines(path: Path) -> list[str]:
    if not path.exists():
        raise FileNotFoundError(f"{path}: missing; run the `text` stage first")
    return [line for line in path.read_text(encoding="utf-8").splitlines() if line]


def run_speech(args: argparse.Namespace) -> None:
    out = Path(args.out)
    root = Path(args.root) if args.root else out  # NeMo's convention: relative to the manifest's folder
    missing = set(args.voices) - available_voices()
    if missing or args.held_out_voice not in args.voices:
        raise ValueError(f"espeak-ng: voices {sorted(missing)} missing, or held-out {args.held_out_voice!r} "
                         f"not in --voices")
    sentences = {name: read_lines(out / "text" / f"{name}.txt") for name in ("lm", "valid", "test")}
    for name, lines in sentences.items():  # a line espeak-ng would get digits of is an error naming it, up front
        for n, line in enumerate(lines[:args.n_train] if name == "lm" else lines, 1):
            try:
                kk_numbers.verbalize(line)
            except ValueError as e:
                raise ValueError(f"{out / 'text' / f'{name}.txt'}:{n}: {e}") from None
    plans = plan_splits(sentences, args.n_train, args.held_out_voice, args.seed,
                        tuple(args.speed_range), tuple(args.pitch_range), args.voices)
    start = time.time()
    manifests = {}
    for split, utts in plans.items():
        rows = synthesize_split(utts, out, root, args.jobs, args.max_seconds)
        write_jsonl(out / f"{split}.jsonl", rows)
        manifests[split] = rows
        hours = sum(r["duration"] for r in rows) / 3600
        print(f"{split}: {len(rows)} utterances ({len(utts) - len(rows)} over {args.max_seconds} s skipped), "
              f"{hours:.2f} h -> {out / f'{split}.jsonl'}")
    if args.n_long:
        long_rows = make_longform(manifests["test"], out, root, args.n_long)
        write_jsonl(out / "test_long.jsonl", long_rows)
        print(f"test_long: {len(long_rows)} files, {sum(r['duration'] for r in long_rows) / 60:.1f} min")
    print(f"speech stage: {time.time() - start:.0f} s wall with {args.jobs} jobs")


# ---------------------------------------------------------------------------------------------- stage: ood

OOD_SENTENCES = Path(__file__).with_name("ood_sentences.txt")  # written for this test, see its header
OOD_SPEEDS = [(95, 120), (200, 240)]  # words a minute, both sides of training's 130..190
OOD_PITCHES = [(5, 25), (75, 95)]  # both sides of training's 30..70
OOD_MAX_SECONDS = 20.0  # a test set: slow speech is long, and nothing is left out for it


def read_ood_sentences(path: Path) -> tuple[list[str], list[str]]:
    """(normalised sentences, one-line problems) of a sentence file: one a line, '#' comments, digits allowed."""
    sentences, problems = [], []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        text = normalize(unicodedata.normalize("NFC", line))
        letters = set(text.replace(" ", "")) - set("0123456789")
        try:
            kk_numbers.verbalize(text)
        except ValueError as e:
            problems.append(f"{path}:{n}: {e}")
            continue
        if not letters <= KAZAKH_LETTERS:
            problems.append(f"{path}:{n}: not Kazakh Cyrillic ({''.join(sorted(letters - KAZAKH_LETTERS))})")
        elif text in sentences:
            problems.append(f"{path}:{n}: the same sentence as an earlier line")
        else:
            sentences.append(text)
    return sentences, problems


def plan_ood(texts: list[str], voice: str, seed: int, speeds: list[tuple[int, int]] = OOD_SPEEDS,
             pitches: list[tuple[int, int]] = OOD_PITCHES) -> list[Utterance]:
    """The held-out voice at a speed and a pitch drawn from ranges training never used (seeded)."""
    rng = random.Random(f"{seed}:ood")
    return [Utterance("ood", i, text, voice, rng.randint(*rng.choice(speeds)), rng.randint(*rng.choice(pitches)))
            for i, text in enumerate(texts)]


def run_ood(args: argparse.Namespace) -> int:
    """The ood stage -> the number of sentence lines that could not be used (each reported on stderr)."""
    out = Path(args.out)
    root = Path(args.root) if args.root else out
    if args.held_out_voice not in available_voices():
        raise ValueError(f"espeak-ng: no voice variant {args.held_out_voice!r}")
    path = Path(args.sentences)
    if not path.exists():
        raise FileNotFoundError(f"{path}: missing")
    sentences, problems = read_ood_sentences(path)
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    start = time.time()
    utts = plan_ood(sentences, args.held_out_voice, args.seed)
    rows = synthesize_split(utts, out, root, args.jobs, args.max_seconds, wav_dir=out / "ood")
    write_jsonl(out / "ood.jsonl", rows)
    print(f"ood: {len(rows)} utterances ({len(utts) - len(rows)} over {args.max_seconds} s skipped), "
          f"{sum(r['duration'] for r in rows) / 60:.1f} min, voice {args.held_out_voice} -> {out / 'ood.jsonl'} "
          f"({time.time() - start:.0f} s)")
    return len(problems)


# ---------------------------------------------------------------------------------------------- stage: degraded

TEL_RATE = 8000  # telephone: 8 kHz, band 300..3400 Hz (ITU-T G.712's voice band)
DEGRADATIONS = {  # name -> what it is; manifests test_<name>.jsonl
    "quiet": "-20 dB gain, float wav",
    "loud": "+12 dB gain, float wav, not clipped",
    "tel8k": "300-3400 Hz band-pass, resampled to 8 kHz, int16 wav at 8 kHz",
    "noise10": "white Gaussian noise at 10 dB SNR (seeded per file), float wav",
}


def gain(x: np.ndarray, db: float) -> np.ndarray:
    """x (T,) float -> x * 10^(db/20), float32, never clipped."""
    return (x * 10 ** (db / 20)).astype(np.float32)


def add_noise(x: np.ndarray, snr_db: float, rng: np.random.Generator) -> np.ndarray:
    """x (T,) + white Gaussian noise whose power is the whole file's power over 10^(snr/10), float32."""
    power = float(np.mean(x.astype(np.float64) ** 2))
    noise = rng.standard_normal(len(x)) * np.sqrt(power / 10 ** (snr_db / 10))
    return (x + noise).astype(np.float32)


def telephone(src: Path, dst: Path) -> None:
    """sox: band-pass 300..3400 Hz, then resample to 8 kHz, int16, no dither (so a rebuild gives the same bytes)."""
    subprocess.run(["sox", "-D", str(src), "-t", "wav", "-b", "16", "-e", "signed-integer", str(dst),
                    "sinc", "300-3400", "rate", str(TEL_RATE)], capture_output=True, check=True)


def degrade(src: Path, dst: Path, kind: str, seed: int) -> None:
    """One degraded copy of src at dst (atomically); an existing dst is kept."""
    if dst.exists():
        return
    with atomic_path(dst, suffix=".wav") as tmp:
        if kind == "tel8k":
            telephone(src, tmp)
        else:
            x, rate = sf.read(str(src), dtype="float32")
            if kind == "quiet":
                y = gain(x, -20)
            elif kind == "loud":
                y = gain(x, 12)
            elif kind == "noise10":
                key = hashlib.sha1(f"{seed}:{src.name}".encode()).hexdigest()[:16]  # the same noise on a rebuild
                y = add_noise(x, 10, np.random.default_rng(int(key, 16)))
            else:
                raise ValueError(f"degrade: no degradation {kind!r}")
            write_float_wav(tmp, y, rate)


def write_float_wav(path, y, rate):
    """A float WAV whose bytes depend on its samples alone: libsndfile's PEAK chunk stores the time it was written,
    zeroed here so that a rebuild writes the same file."""
    sf.write(str(path), y, rate, subtype="FLOAT", format="WAV")
    with open(path, "r+b") as f:
        at = f.read(4096).find(b"PEAK")
        if at >= 0:
            f.seek(at + 12)  # the tag, the chunk size, the version, then the 4-byte time stamp
            f.write(bytes(4))


def read_jsonl(path: Path) -> list[dict]:
    """A manifest's rows; a missing file or a line that is not a JSON object with audio_filepath is an error."""
    if not path.exists():
        raise FileNotFoundError(f"{path}: missing; run the `speech` stage first")
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        try:
            row = json.loads(line) if line.strip() else None
        except json.JSONDecodeError:
            row = False
        if row is None:
            continue
        if not isinstance(row, dict) or not isinstance(row.get("audio_filepath"), str):
            raise ValueError(f"{path}:{n}: not a manifest line (a JSON object with audio_filepath)")
        rows.append(row)
    return rows


def run_degraded(args: argparse.Namespace) -> None:
    """Four degraded copies of the test split: out/wavs/test_<kind>/ and out/test_<kind>.jsonl."""
    out = Path(args.out)
    root = Path(args.root) if args.root else out  # audio_filepath is relative to it, in and out
    rows = read_jsonl(out / "test.jsonl")
    start = time.time()
    for kind in args.kinds:
        out_rows = []
        for row in rows:
            src = Path(row["audio_filepath"])
            src = src if src.is_absolute() else root / src
            dst = out / "wavs" / f"test_{kind}" / src.name
            degrade(src, dst, kind, args.seed)
            info = sf.info(str(dst))
            out_rows.append({**row, "audio_filepath": audio_path(dst, root),
                             "duration": round(info.frames / info.samplerate, 3), "degradation": kind})
        write_jsonl(out / f"test_{kind}.jsonl", out_rows)
        print(f"test_{kind}: {len(out_rows)} files ({DEGRADATIONS[kind]}) -> {out / f'test_{kind}.jsonl'}")
    print(f"degraded stage: {time.time() - start:.0f} s")


# ---------------------------------------------------------------------------------------------- CLI

def add_common_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default=str(OUT_DIR), help="output folder")
    p.add_argument("--seed", type=int, default=1337, help="seed of the sentence shuffle and the voice choices")


def add_text_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("text stage")
    g.add_argument("--packages", nargs="+", default=None,
                   help=f"Debian packages to read kk translations from (None: every one in data/{PACKAGES_FILE.name})")
    g.add_argument("--n-numbers", type=int, default=3000,
                   help="sentences with numbers, dates, times and ordinals made from data/kk_templates.py")
    g.add_argument("--number-share", type=float, default=0.2,
                   help="share of those sentences in test, valid and the first lines of lm (the training ones)")
    g.add_argument("--min-words", type=int, default=2, help="shortest segment kept, in words")
    g.add_argument("--max-words", type=int, default=12, help="longest segment kept, in words")
    g.add_argument("--n-valid", type=int, default=300, help="sentences held out for the valid split")
    g.add_argument("--n-test", type=int, default=300, help="sentences held out for the test split")


def add_speech_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("speech stage")
    g.add_argument("--n-train", type=int, default=12000, help="training utterances (the first lines of lm.txt)")
    g.add_argument("--voices", nargs="+", default=VOICES, help="espeak-ng kk voice variants to draw from")
    g.add_argument("--held-out-voice", default=HELD_OUT_VOICE, help="variant used only (and always) by the test split")
    g.add_argument("--speed-range", type=int, nargs=2, default=[130, 190], metavar=("LO", "HI"),
                   help="speaking rate in words per minute, drawn uniformly per utterance")
    g.add_argument("--pitch-range", type=int, nargs=2, default=[30, 70], metavar=("LO", "HI"),
                   help="espeak pitch (0..99), drawn uniformly per utterance")
    g.add_argument("--max-seconds", type=float, default=MAX_SECONDS, help="skip utterances longer than this")
    g.add_argument("--n-long", type=int, default=10, help="~60 s long-form test files to build (0: none)")
    g.add_argument("--jobs", type=int, default=2, help="parallel espeak-ng/sox processes")
    g.add_argument("--root", default=None,
                   help="audio_filepath in manifests is relative to this folder (default: the manifests' own folder)")


def add_ood_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("ood stage")
    g.add_argument("--sentences", default=str(OOD_SENTENCES), help="sentence file: one a line, '#' comments")
    g.add_argument("--held-out-voice", default=HELD_OUT_VOICE, help="the voice variant (the test split's)")
    g.add_argument("--max-seconds", type=float, default=OOD_MAX_SECONDS, help="skip utterances longer than this")
    g.add_argument("--jobs", type=int, default=2, help="parallel espeak-ng/sox processes")
    g.add_argument("--root", default=None,
                   help="audio_filepath in manifests is relative to this folder (default: the manifests' own folder)")


def add_degraded_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("degraded stage")
    g.add_argument("--kinds", nargs="+", default=list(DEGRADATIONS), choices=list(DEGRADATIONS),
                   help="; ".join(f"{k}: {v}" for k, v in DEGRADATIONS.items()))
    g.add_argument("--root", default=None,
                   help="audio_filepath in manifests is relative to this folder (default: the manifests' own folder)")


def main(argv: list[str] | None = None) -> int:
    parser = cli.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    stages = parser.add_subparsers(dest="stage", required=True)
    for name, help_, adders in [("text", "Debian kk translations -> clean normalised sentences", [add_text_args]),
                                ("speech", "espeak-ng speech + manifests from the text stage", [add_speech_args]),
                                ("all", "text, then speech", [add_text_args, add_speech_args]),
                                ("ood", "our own out-of-domain sentences, held-out voice, unseen speeds and pitches",
                                 [add_ood_args]),
                                ("degraded", "quiet, loud, 8 kHz telephone and noisy copies of the test split",
                                 [add_degraded_args])]:
        p = stages.add_parser(name, help=help_, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
        add_common_args(p)
        for add in adders:
            add(p)
    args = parser.parse_args(argv)
    errors = 0
    try:
        if args.stage in ("text", "all"):
            args.packages = args.packages or read_package_list()
            errors += run_text(args)
        if args.stage in ("speech", "all"):
            run_speech(args)
        if args.stage == "ood":
            errors += run_ood(args)
        if args.stage == "degraded":
            run_degraded(args)
    except (SourceError, FileNotFoundError, ValueError, sf.LibsndfileError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
