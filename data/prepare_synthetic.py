"""Synthetic Kazakh speech for the small teaching model: text from Debian's Kazakh translations, audio from espeak-ng.

A staged data-prep CLI in the manner of llama2.c's tinystories.py:

    python data/prepare_synthetic.py text     # Debian kk translations -> data/synth/text/{all,lm,valid,test}.txt
    python data/prepare_synthetic.py speech   # espeak-ng kk voice -> data/synth/{train,valid,test}.jsonl (+ test_long)
    python data/prepare_synthetic.py all      # both

Stage `text` downloads (once; cached in data/synth/debs) Debian packages that carry Kazakh UI translations
(LibreOffice, Firefox, Thunderbird, GNOME, Xfce, iso-codes, ...), reads the msgstr values of their
`kk` .mo catalogues with `gettext.GNUTranslations` (and the .ftl/.properties files inside the Mozilla
language-pack .xpi), cleans them into short Kazakh Cyrillic segments (accelerators and tags removed, sentences
with placeholders dropped, small numbers spelt out in Kazakh), normalises them as FLEURS does (recipe §5),
de-duplicates and shuffles them with a seed. The first --n-test lines become the test sentences, the next --n-valid the validation sentences, and every
other line goes to lm.txt (text for language-model pretraining, never containing a valid/test sentence).
Each package's version and licence go to data/synth/SOURCES.tsv.

Stage `speech` speaks the sentences with espeak-ng's Kazakh voice, a random voice variant, speed and pitch per
utterance (seeded), resampled by sox to 16 kHz mono int16. The test split uses sentences and one voice variant
(--held-out-voice) that training never sees; valid uses unseen sentences but training voices. Manifests are NeMo
style JSON lines: `audio_filepath` (relative to the manifest's folder, NeMo's convention; --root to change),
`text`, `duration` (s), `voice`, `speed`, `pitch`. `test_long.jsonl` joins test utterances into ~60 s files.

Every file is written atomically (atomic.py); reruns skip the .debs and wavs already there (a wav's
name carries a hash of its text and voice settings, so a changed seed never reuses a stale file).

What it does not do: it is not natural speech (espeak is a formant synthesiser: the teaching model learns to
read espeak, not people), it does not spell out numbers above 9999, decimals, dates or ordinals (such sentences
are dropped), and it does not read LibreOffice's help or .xcd registry files.
"""

import argparse
import gettext
import hashlib
import html
import io
import json
import os
import random
import re
import shutil
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
from tokenizer import normalize  # noqa: E402  the one normalisation of targets, references and hypotheses (recipe §5)
OUT_DIR = REPO_ROOT / "data" / "synth"

SAMPLE_RATE = 16000  # = mel.SAMPLE_RATE; espeak-ng speaks at 22050 Hz, sox resamples
MAX_SECONDS = 10.0  # longer utterances are skipped
LONG_SECONDS = 60.0  # target length of a long-form test file
LONG_GAP_SECONDS = 0.3  # silence between the utterances joined into a long-form file

# Debian packages whose kk catalogues were checked by hand (bookworm); the two l10n packs are the largest.
PACKAGES = [
    "libreoffice-l10n-kk", "firefox-esr-l10n-kk", "thunderbird-l10n-kk", "iso-codes", "coreutils",
    "libglib2.0-data", "libgtk-3-common", "libgtk-4-common", "gvfs-common", "libsecret-common",
    "libgweather-4-common", "shared-mime-info", "xdg-user-dirs", "gnome-desktop3-data",
    "gnome-control-center-data", "gnome-settings-daemon-common", "gnome-shell-common", "mutter-common",
    "gnome-session-common", "gdm3", "gnome-initial-setup", "gnome-keyring", "seahorse", "nautilus-data",
    "gedit-common", "gnome-text-editor", "evince-common", "file-roller", "baobab", "gnome-disk-utility",
    "gnome-system-monitor", "gnome-terminal-data", "gnome-calculator", "gnome-calendar", "gnome-characters",
    "gnome-clocks", "gnome-contacts", "gnome-font-viewer", "gnome-logs", "gnome-maps", "gnome-music",
    "gnome-software-common", "gnome-tweaks", "gnome-weather", "gnome-mines", "aisleriot", "gucharmap",
    "totem-common", "rhythmbox-data", "cheese-common", "brasero-common", "shotwell-common", "simple-scan",
    "epiphany-browser-data", "yelp", "tracker", "network-manager-gnome", "pidgin-data", "vlc-l10n",
    "xfce4-panel", "xfce4-session", "xfce4-settings", "xfce4-terminal", "xfce4-appfinder", "xfce4-notifyd",
    "xfdesktop4-data", "xfwm4", "thunar-data", "mousepad", "ristretto", "parole", "xfburn",
    "lightdm-gtk-greeter",
]

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
    def name(self) -> str:
        """File stem: index + hash of what is spoken, so changed settings never reuse an old wav."""
        key = f"{self.text}|{self.voice}|{self.speed}|{self.pitch}".encode()
        return f"{self.index:06d}_{hashlib.sha1(key).hexdigest()[:8]}"


# ---------------------------------------------------------------------------------------------- numbers

ONES = ["нөл", "бір", "екі", "үш", "төрт", "бес", "алты", "жеті", "сегіз", "тоғыз"]
TENS = ["", "он", "жиырма", "отыз", "қырық", "елу", "алпыс", "жетпіс", "сексен", "тоқсан"]


def kazakh_number(n: int) -> str:
    """0..9999 in Kazakh words: 21 -> 'жиырма бір', 1990 -> 'бір мың тоғыз жүз тоқсан', 100 -> 'жүз'."""
    if not 0 <= n <= 9999:
        raise ValueError(f"kazakh_number: {n} is outside 0..9999")
    if n == 0:
        return ONES[0]
    thousands, rest = divmod(n, 1000)
    hundreds, rest = divmod(rest, 100)
    tens, ones = divmod(rest, 10)
    words = []
    if thousands:
        words += [ONES[thousands], "мың"]  # 1000 is "бір мың", with its "one"
    if hundreds:
        words += ([] if hundreds == 1 else [ONES[hundreds]]) + ["жүз"]  # 100 is plain "жүз"
    if tens:
        words.append(TENS[tens])
    if ones:
        words.append(ONES[ones])
    return " ".join(words)


def spell_numbers(sentence: str) -> str | None:
    """Digits -> Kazakh words; None when a number can't be read simply (decimal, date, ordinal, > 9999, '007')."""
    if re.search(r"\d[.,:/]\d|\d-?[^\W\d_]", sentence):  # 1.5, 10:30, 01/02, 1-ші, 5мин
        return None
    numbers = re.findall(r"\d+", sentence)
    if any(len(d) > 4 or (len(d) > 1 and d[0] == "0") for d in numbers):  # "10 000" splits into "000"
        return None
    return re.sub(r"\d+", lambda m: f" {kazakh_number(int(m.group()))} ", sentence)


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
    """The msgstr values (all plural forms) of a compiled gettext catalogue."""
    try:
        catalog = gettext.GNUTranslations(io.BytesIO(data))._catalog  # no public way to list the entries
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise SourceError(f"{path}: not a readable .mo catalogue ({e})") from None
    # keys: "msgid", "ctx\x04msgid" or (msgid, plural_index); "" is the header
    return [v for k, v in catalog.items() if k != "" and v]


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
    """A Kazakh .mo (any folder named kk, e.g. usr/share/locale/kk/LC_MESSAGES) or a kk Mozilla langpack."""
    parts = name.split("/")
    return (name.endswith(".mo") and "kk" in parts) or (name.endswith(".xpi") and "langpack-kk" in parts[-1])


def read_deb(deb: Path) -> tuple[list[str], list[str], str]:
    """(strings of its kk catalogues, the catalogue paths, the copyright text) of a .deb, read in memory."""
    tar_bytes = subprocess.run(["dpkg-deb", "--fsys-tarfile", str(deb)], capture_output=True, check=True).stdout
    strings, files, copyright_text = [], [], ""
    with tarfile.open(fileobj=io.BytesIO(tar_bytes)) as tar:
        for member in tar.getmembers():
            name = member.name.removeprefix("./")
            if not member.isfile():
                continue
            if is_kk_catalogue(name):
                data = tar.extractfile(member).read()
                read = read_mo if name.endswith(".mo") else read_xpi
                strings += read(data, f"{deb.name}:{name}")
                files.append(name)
            elif re.fullmatch(r"usr/share/doc/[^/]+/copyright", name):
                copyright_text = tar.extractfile(member).read().decode("utf-8", "replace")
    return strings, files, copyright_text


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


def deb_version(deb: Path) -> str:
    return subprocess.run(["dpkg-deb", "-f", str(deb), "Version"], capture_output=True, text=True).stdout.strip()


def split_sentences(segments: list[str], n_valid: int, n_test: int) -> dict[str, list[str]]:
    """Shuffled unique segments -> test (first n_test), valid (next n_valid), lm (the rest: train + LM text)."""
    if n_valid + n_test >= len(segments):
        raise ValueError(f"split_sentences: {len(segments)} segments are too few for {n_valid} valid + {n_test} test")
    return {"test": segments[:n_test], "valid": segments[n_test:n_test + n_valid], "lm": segments[n_test + n_valid:]}


def run_text(args: argparse.Namespace) -> None:
    out = Path(args.out)
    rows, segments = [], set()
    for package in args.packages:
        try:
            deb = fetch_deb(package, out / "debs")
        except subprocess.CalledProcessError as e:
            print(f"skip {package}: apt-get download failed: {e.stderr.decode().strip()[-200:]}", file=sys.stderr)
            continue
        strings, files, copyright_text = read_deb(deb)
        found = {s for m in strings for s in clean_message(m, args.min_words, args.max_words)}
        segments |= found
        rows.append([package, deb_version(deb), licence_of(copyright_text), str(len(strings)), str(len(found)),
                     str(len(files))])
        print(f"{package:32s} {len(strings):6d} strings -> {len(found):6d} segments  ({rows[-1][2]})")
    header = ["package", "version", "licence", "strings", "segments", "catalogues"]
    write_text(out / "SOURCES.tsv", "\n".join("\t".join(r) for r in [header] + rows) + "\n")

    ordered = sorted(segments)  # sorted first: set order is not reproducible across runs
    random.Random(args.seed).shuffle(ordered)
    splits = split_sentences(ordered, args.n_valid, args.n_test)
    write_text(out / "text" / "all.txt", "\n".join(ordered) + "\n")
    for name, lines in splits.items():
        write_text(out / "text" / f"{name}.txt", "\n".join(lines) + "\n")
    print(f"{len(ordered)} unique segments from {len(rows)} packages: "
          f"{len(splits['test'])} test, {len(splits['valid'])} valid, {len(splits['lm'])} lm -> {out / 'text'}")


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
                            "-w", str(raw)], input=utt.text.encode(), capture_output=True, check=True)
            subprocess.run(["sox", "-t", "wav", str(raw), "-t", "wav", "-r", str(SAMPLE_RATE), "-c", "1", "-b", "16",
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
                     max_seconds: float = MAX_SECONDS) -> list[dict]:
    """Speak a split in parallel (threads: the work is in espeak/sox subprocesses) -> its manifest rows, in order."""
    from tqdm import tqdm

    wavs = [out / "wavs" / u.split / f"{u.name}.wav" for u in utts]
    with ThreadPoolExecutor(jobs) as pool:
        durations = list(tqdm(pool.map(lambda uw: synthesize(*uw, max_seconds), zip(utts, wavs)),
                              total=len(utts), desc=utts[0].split if utts else "", unit="utt"))
    rows = []
    for utt, wav, duration in zip(utts, wavs, durations):
        if duration is not None:
            rows.append({"audio_filepath": audio_path(wav, root), "text": utt.text, "duration": round(duration, 3),
                         "voice": utt.voice, "speed": utt.speed, "pitch": utt.pitch})
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


# ---------------------------------------------------------------------------------------------- CLI

def add_common_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default=str(OUT_DIR), help="output folder")
    p.add_argument("--seed", type=int, default=1337, help="seed of the sentence shuffle and the voice choices")


def add_text_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("text stage")
    g.add_argument("--packages", nargs="+", default=PACKAGES, help="Debian packages to read kk translations from")
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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    stages = parser.add_subparsers(dest="stage", required=True)
    for name, help_, adders in [("text", "Debian kk translations -> clean normalised sentences", [add_text_args]),
                                ("speech", "espeak-ng speech + manifests from the text stage", [add_speech_args]),
                                ("all", "text, then speech", [add_text_args, add_speech_args])]:
        p = stages.add_parser(name, help=help_, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
        add_common_args(p)
        for add in adders:
            add(p)
    args = parser.parse_args(argv)
    if args.stage in ("text", "all"):
        run_text(args)
    if args.stage in ("speech", "all"):
        run_speech(args)


if __name__ == "__main__":
    main()
