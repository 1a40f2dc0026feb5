"""Everyday Kazakh sentences with numbers, dates, clock times and ordinals, from templates written for this project.

Each template is a sentence with slots; the numbers in it are written with digits, as FLEURS transcripts write them
("2015 жылы", "сағат 14:30", "5-ші"), and kk_numbers.verbalize reads them back as words for espeak-ng. Place names
come from translators' work (Debian's iso-codes countries, CLDR's Kazakh city names of the time zones); person names
and the Kazakh towns below are common ones, listed here.

    sentences = number_sentences(names, n=3000, seed=1337)   # normalised (recipe §5), unique, in a seeded order

Slots: {name} {name2} person; {city} {city2}; {country}; {lang_acc} a language in the accusative ("неміс тілін");
{year} (past) and {fyear} (future); {date} "2023 жылғы 5 наурыз" (past) and {fdate}; {daymonth} "5 наурыз";
{month}; {time} "14:30"; {ordN} a written ordinal up to N; {nA_B} a count in A..B. Every template keeps its slots where a bare (nominative) word is grammatical, so
no suffix has to agree with a filled-in word.
"""

import random
import re

import kk_numbers

PERSON_NAMES = [
    "Айгүл", "Ержан", "Асқар", "Дана", "Нұрлан", "Әлия", "Сәуле", "Бауыржан", "Гүлнар", "Мақсат", "Ботагөз",
    "Ерлан", "Айнұр", "Дәурен", "Жанар", "Серік", "Ақбота", "Арман", "Динара", "Қайрат", "Мәдина", "Талғат",
    "Аружан", "Ерболат", "Салтанат", "Әсел", "Бекзат", "Жансая", "Ерасыл", "Қуаныш", "Перизат", "Санжар",
    "Томирис", "Ілияс", "Үміт", "Ғалым", "Інкәр", "Жандос", "Мейрамгүл", "Әйгерім", "Нұрсая", "Темірлан",
    "Айдос", "Гүлмира", "Рахым", "Самал", "Асель", "Данияр", "Меруерт", "Олжас",
]
KAZAKH_TOWNS = [
    "Астана", "Алматы", "Шымкент", "Қарағанды", "Павлодар", "Семей", "Тараз", "Түркістан", "Өскемен", "Көкшетау",
    "Петропавл", "Талдықорған", "Жезқазған", "Екібастұз", "Теміртау", "Қостанай", "Ақтөбе", "Атырау", "Ақтау",
    "Орал", "Қызылорда", "Балқаш", "Кентау", "Арқалық",
]

TEMPLATES = [
    # history and news
    "{name} {year} жылы {city} қаласында дүниеге келген.",
    "{year} жылы {country} елінде жаңа заң қабылданды.",
    "Бұл ғимарат {year} жылы салынған.",
    "{name} {year} жылдан бері {city} қаласында тұрады.",
    "Мектеп {year} жылы ашылды.",
    "Жаңа жол {fyear} жылы пайдалануға беріледі.",
    "{year} жылғы сайлауда {name} жеңіске жетті.",
    "{city} қаласы {year} жылдан бастап тез өсті.",
    "Кездесу {date} күні {city} қаласында өтті.",
    "Биыл {country} елінен {n2_900} турист келді.",
    "Компания биыл {n1000_900000000} теңге пайда тапты.",
    "Мұражайға былтыр {n1000_90000} адам келді.",
    "{city} қаласында {n10000_3000000} адам тұрады.",
    "Сайлаушылардың {n20_99} пайызы дауыс берді.",
    "Үкімет жаңа бағдарламаға {n2_900} миллион теңге бөлді.",
    "Қазақстан тәуелсіздігін 1991 жылғы 16 желтоқсанда жариялады.",
    # calendar and clock
    "Жиналыс {daymonth} күні сағат {time} басталады.",
    "{name} {date} күні {city} қаласына келді.",
    "Келесі емтихан {daymonth} күні өтеді.",
    "Фестиваль {fdate} күні ашылады.",
    "Пойыз {city} қаласына сағат {time} жетеді.",
    "Сабақ сағат {time} басталады.",
    "{name} кеше сағат {time} үйге оралды.",
    "Ұшақ сағат {time} {city} қаласынан ұшады.",
    "Дүкен таңертең сағат {time} ашылады.",
    "Жұмыс күні сағат {time} аяқталады.",
    "Концерт {daymonth} күні сағат {time} басталады.",
    "Сағат {time} жаңалықтар басталады.",
    "{name} {daymonth} күні туған.",
    "Ол {year} жылғы {month} айында оқуын бітірді.",
    "Бүгін {date}.",
    "Демалыс {daymonth} күні басталып {n2_20} күнге созылады.",
    # home and family
    "Отбасымызда {n2_8} бала бар.",
    "{name} биыл {n2_90} жасқа толды.",
    "Менің атам {n60_99} жаста.",
    "{name} және {name2} {year} жылы үйленді.",
    "Апам {year} жылы зейнетке шықты.",
    "{name} дүкеннен {n2_20} алма сатып алды.",
    "Тоңазытқышта {n2_12} жұмыртқа қалды.",
    "Біз үйдің {ord25} қабатында тұрамыз.",
    "{name} {ord11} сыныпта оқиды.",
    "Сыныпта {n10_40} оқушы бар.",
    # city, work and money
    "Автобус {n2_59} минуттан кейін келеді.",
    "Зауытта {n20_5000} жұмысшы еңбек етеді.",
    "Билеттің бағасы {n100_9000} теңге.",
    "{name} айына {n100000_900000} теңге жалақы алады.",
    "{city} қаласы мен {city2} қаласының арасы {n20_3000} шақырым.",
    "{name} {city} қаласына {n2_30} күнге барды.",
    "Жол {n2_48} сағатқа созылады.",
    "Дүкен {n5_70} пайыз жеңілдік жариялады.",
    "Кітапханада {n1000_900000} кітап бар.",
    "{name} {n2_40} жыл бойы мектепте мұғалім болып істеді.",
    "Бұл кітап {n40_900} беттен тұрады.",
    "{name} күн сайын {n1000_20000} қадам жүреді.",
    "{name} {lang_acc} {n2_20} жыл бойы үйренді.",
    "Біздің кеңседе {n3_300} адам жұмыс істейді.",
    "{name} {ord30} пәтерде тұрады.",
    # weather
    "Ертең {city} қаласында ауа температурасы {n2_40} градусқа дейін көтеріледі.",
    "Түнде {city} қаласында {n2_35} градус аяз болады.",
    "Кеше {n2_90} миллиметр жаңбыр жауды.",
    "Бүгін жел секундына {n2_30} метр жылдамдықпен соғады.",
    "{month} айында {city} қаласында {n2_20} күн қар жауды.",
    # sport
    "{name} жарыста {ord10} орын алды.",
    "{country} құрамасы турнирде {ord20} орынға шықты.",
    "Марафонға {n50_20000} жүгіруші қатысты.",
    "Команда маусымда {n2_40} ойында жеңіске жетті.",
    "Футбол клубы {year} жылы құрылған.",
    "Матч {daymonth} күні сағат {time} басталады.",
    "Жаңа стадион {n5000_80000} көрерменге арналған.",
    "{name} {ord30} минутта гол соқты.",
    # health
    "{name} ауруханада {n2_20} күн жатты.",
    "Дәрігер күніне {n2_4} рет дәрі ішуге кеңес берді.",
    "Қалалық ауруханада {n50_900} төсек бар.",
    "Емханаға күніне {n20_900} адам келеді.",
    "Балаға {n2_12} айында екпе салынады.",
]

SLOT_RE = re.compile(r"\{(\w+)\}")


def is_proper_name(name: str) -> bool:
    """A one- or two-word place name, each word capitalised ('Белгісіз қала', 'unknown city', is not a place)."""
    words = re.split(r"[\s-]+", name.strip())
    return 1 <= len(words) <= 2 and all(w[:1].isupper() and w[1:].islower() for w in words)


def fill(template: str, names: dict[str, list[str]], rng: random.Random) -> str:
    """One template with every slot filled from names or from a random number, date or time."""
    used = set()

    def slot(m: re.Match) -> str:
        key = m.group(1).rstrip("0123456789")  # name2, city2, daymonth2: the same kind as name, city, daymonth
        if key in ("name", "city", "country", "lang_acc"):
            pool = names[{"name": "person"}.get(key, key)]
            choices = [v for v in pool if v not in used] or pool
            used.add(value := rng.choice(choices))  # "Серік және Серік" is not a sentence
            return value
        if key in ("year", "fyear"):  # a past year, or a future one for a sentence in the future tense
            return str(rng.randint(1900, 2024) if key == "year" else rng.randint(2025, 2035))
        if key in ("date", "fdate", "daymonth"):
            month, day = rng.randint(1, 12), rng.randint(1, 28)
            year = rng.randint(1990, 2024) if key == "date" else rng.randint(2025, 2035)
            return f"{day} {kk_numbers.MONTHS[month - 1]}" if key == "daymonth" \
                else kk_numbers.written_date(year, month, day)
        if key == "month":
            return rng.choice(kk_numbers.MONTHS)
        if key == "time":
            return f"{rng.randint(0, 23)}:{rng.choice([0, 5, 10, 15, 20, 30, 40, 45, 50, rng.randint(0, 59)]):02d}"
        if key == "ord":  # {ord25}: 1..25
            return kk_numbers.written_ordinal(rng.randint(1, int(m.group(1)[3:])))
        if key.startswith("n") and "_" in m.group(1):  # {n2_900}: a count, log-uniform so small ones are common
            lo, hi = map(int, m.group(1)[1:].split("_"))
            return str(min(hi, int(lo * (hi / lo) ** rng.random())))
        raise KeyError(f"template slot {m.group()} is unknown")
    return SLOT_RE.sub(slot, template)


def number_sentences(names: dict[str, list[str]], n: int, seed: int, normalize=None) -> list[str]:
    """n unique normalised sentences (fewer if the templates cannot make that many), in a seeded order.

    names: {"person": [...], "city": [...], "country": [...], "lang_acc": [...]}; normalize: recipe §5 (the caller's).
    """
    rng = random.Random(f"{seed}:numbers")
    seen, out = set(), []
    for _ in range(20 * n):
        sentence = fill(rng.choice(TEMPLATES), names, rng)
        sentence = normalize(sentence) if normalize else sentence
        if sentence not in seen:
            seen.add(sentence)
            out.append(sentence)
            if len(out) == n:
                break
    return out
