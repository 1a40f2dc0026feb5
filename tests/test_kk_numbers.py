"""data/kk_numbers.py and data/kk_templates.py: Kazakh numbers, ordinals, dates and times, checked by hand."""
import importlib.util
import random
import re
import sys
from pathlib import Path

import pytest

DATA = Path(__file__).resolve().parents[1] / "data"
sys.path.insert(0, str(DATA))  # kk_templates imports kk_numbers by name, as prepare_synthetic does
for name in ("kk_numbers", "kk_templates"):
    spec = importlib.util.spec_from_file_location(name, DATA / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
import kk_numbers as kn  # noqa: E402
import kk_templates as kt  # noqa: E402


@pytest.mark.parametrize("n, words", [
    (0, "нөл"), (7, "жеті"), (10, "он"), (11, "он бір"), (21, "жиырма бір"), (40, "қырық"), (45, "қырық бес"),
    (99, "тоқсан тоғыз"), (100, "жүз"), (101, "жүз бір"), (250, "екі жүз елу"), (1000, "бір мың"),
    (1990, "бір мың тоғыз жүз тоқсан"), (1991, "бір мың тоғыз жүз тоқсан бір"), (2024, "екі мың жиырма төрт"),
    (3605, "үш мың алты жүз бес"), (10000, "он мың"), (21000, "жиырма бір мың"), (100000, "жүз мың"),
    (250300, "екі жүз елу мың үш жүз"), (1000000, "бір миллион"), (1000100, "бір миллион жүз"),
    (20500000, "жиырма миллион бес жүз мың"), (10**9, "бір миллиард"),
    (999999999, "тоғыз жүз тоқсан тоғыз миллион тоғыз жүз тоқсан тоғыз мың тоғыз жүз тоқсан тоғыз"),
])
def test_cardinal(n, words):
    assert kn.cardinal(n) == words


def test_cardinal_range():
    for bad in (-1, 10**9 + 1):
        with pytest.raises(ValueError):
            kn.cardinal(bad)


@pytest.mark.parametrize("n, words", [
    (1, "бірінші"), (2, "екінші"), (3, "үшінші"), (4, "төртінші"), (5, "бесінші"), (6, "алтыншы"), (7, "жетінші"),
    (8, "сегізінші"), (9, "тоғызыншы"), (10, "оныншы"), (20, "жиырмасыншы"), (30, "отызыншы"), (40, "қырқыншы"),
    (50, "елуінші"), (60, "алпысыншы"), (70, "жетпісінші"), (80, "сексенінші"), (90, "тоқсаныншы"),
    (100, "жүзінші"), (1000, "бір мыңыншы"), (21, "жиырма бірінші"), (45, "қырық бесінші"),
    (1991, "бір мың тоғыз жүз тоқсан бірінші"), (2000, "екі мыңыншы"), (10**6, "бір миллионыншы"),
])
def test_ordinal(n, words):
    assert kn.ordinal(n) == words


def test_written_ordinal_follows_harmony():
    assert [kn.written_ordinal(n) for n in (1, 3, 5, 6, 9, 10, 20, 40, 50)] == [
        "1-ші", "3-ші", "5-ші", "6-шы", "9-шы", "10-шы", "20-шы", "40-шы", "50-ші"]


def test_dates_and_times():
    assert kn.spoken_date(2023, 3, 5) == "екі мың жиырма үшінші жылғы бесінші наурыз"
    assert kn.written_date(2023, 3, 5) == "2023 жылғы 5 наурыз"
    assert kn.spoken_time(14, 30) == "сағат он төрт отыз"
    assert kn.spoken_time(9, 5) == "сағат тоғыз нөл бес"
    assert kn.spoken_time(0, 0) == "сағат нөл нөл нөл"
    assert len(kn.MONTHS) == 12 and kn.MONTHS[0] == "қаңтар" and kn.MONTHS[11] == "желтоқсан"
    for bad in [(24, 0), (12, 60)]:
        with pytest.raises(ValueError):
            kn.spoken_time(*bad)
    with pytest.raises(ValueError):
        kn.spoken_date(2020, 13, 1)


@pytest.mark.parametrize("text, spoken", [
    ("2015 жылы", "екі мың он бесінші жылы"),  # a year is an ordinal
    ("1991 жылғы 16 желтоқсанда", "бір мың тоғыз жүз тоқсан бірінші жылғы он алтыншы желтоқсанда"),
    ("2023 жылғы 5 наурыз", "екі мың жиырма үшінші жылғы бесінші наурыз"),
    ("5 жыл бойы", "бес жыл бойы"),  # a count of years is not
    ("1000 жыл", "бір мың жыл"),
    ("сағат 14 30 басталады", "сағат он төрт отыз басталады"),  # "14:30" after normalisation
    ("сағат 9 05", "сағат тоғыз нөл бес"),
    ("5 ші орын", "бесінші орын"), ("6 шы сынып", "алтыншы сынып"),  # "5-ші" after normalisation
    ("қалада 17416 адам тұрады", "қалада он жеті мың төрт жүз он алты адам тұрады"),
    ("007 агент", "нөл нөл жеті агент"),
    ("сәлем әлем", "сәлем әлем"),
])
def test_verbalize(text, spoken):
    assert kn.verbalize(text) == spoken


def test_verbalize_refuses_what_it_cannot_read():
    with pytest.raises(ValueError, match="5мин"):
        kn.verbalize("5мин өтті")


NAMES = {"person": ["Айгүл", "Ержан", "Асқар"], "city": ["Алматы", "Ла-Пас"], "country": ["Жапония", "Түркия"],
         "lang_acc": ["неміс тілін"]}


from tokenizer import normalize  # noqa: E402  recipe §5, the one prepare_synthetic uses


def test_every_template_fills_and_reads_back():
    rng = random.Random(0)
    for template in kt.TEMPLATES:
        for _ in range(20):
            sentence = normalize(kt.fill(template, NAMES, rng))
            assert "{" not in sentence and re.search(r"\d", sentence), template
            spoken = kn.verbalize(sentence)  # never raises: every number the templates write is readable
            assert not re.search(r"\d", spoken) and spoken != sentence


def test_number_sentences_are_unique_deterministic_and_varied():
    sentences = kt.number_sentences(NAMES, 500, seed=3, normalize=normalize)
    assert len(sentences) == len(set(sentences)) == 500
    assert sentences == kt.number_sentences(NAMES, 500, seed=3, normalize=normalize)
    assert sentences != kt.number_sentences(NAMES, 500, seed=4, normalize=normalize)
    assert sum("жылы" in s for s in sentences) > 20 and sum("сағат" in s for s in sentences) > 20
    assert not any("айгүл және айгүл" in s for s in sentences)  # two person slots never get the same name


def test_is_proper_name():
    assert kt.is_proper_name("Алматы") and kt.is_proper_name("Ла-Пас") and kt.is_proper_name("Санто Доминго")
    assert not kt.is_proper_name("Белгісіз қала") and not kt.is_proper_name("Антигуа және Барбуда")
