"""Kazakh numbers in words: cardinals, ordinals, dates and clock times, and a reader for sentences written with digits.

The teaching data writes numbers the way FLEURS transcripts do (digits: "2015 жылы") while espeak-ng is given the
words we spell here ("екі мың он бесінші жылы"), so what is heard is under our control. espeak-ng's own Kazakh
reading of digits is no use for that: it reads "2015" as a cardinal (not the ordinal a year takes) and "5-ші" as
"бес ші".

    cardinal(1991)        -> 'бір мың тоғыз жүз тоқсан бір'
    ordinal(3)            -> 'үшінші'
    written_ordinal(6)    -> '6-шы'
    spoken_date(2023, 3, 5) -> 'екі мың жиырма үшінші жылғы бесінші наурыз'
    spoken_time(14, 30)   -> 'сағат он төрт отыз'
    verbalize('2015 жылы 5 ші сынып') -> 'екі мың он бесінші жылы бесінші сынып'

Conventions (one reading each, so the audio is consistent): 1000 is "бір мың" (with its "one"), 100 is "жүз";
a year (1000..2100 before a word starting with "жыл" that carries a suffix: жылы, жылғы, жылдан, ...) and a day
before a month name (наурыз, наурызда) are ordinals; "сағат H MM" reads hours and minutes as cardinals, minutes
under 10 with "нөл".
What it does not read: decimals, fractions, negative numbers, thousands separators ("12 500" is two numbers).
"""

import re

ONES = ["нөл", "бір", "екі", "үш", "төрт", "бес", "алты", "жеті", "сегіз", "тоғыз"]
TENS = ["", "он", "жиырма", "отыз", "қырық", "елу", "алпыс", "жетпіс", "сексен", "тоқсан"]
SCALES = [(10**9, "миллиард"), (10**6, "миллион"), (1000, "мың")]
MAX_NUMBER = 10**9
MONTHS = ["қаңтар", "ақпан", "наурыз", "сәуір", "мамыр", "маусым",
          "шілде", "тамыз", "қыркүйек", "қазан", "қараша", "желтоқсан"]

BACK_VOWELS = set("аоұыяё")
FRONT_VOWELS = set("әөүіеэи")
VOWELS = BACK_VOWELS | FRONT_VOWELS  # у/ю are left out: after a vowel they sound as a consonant (елу -> елуінші)
ORDINAL_EXCEPTIONS = {"жиырма": "жиырмасыншы", "қырық": "қырқыншы"}  # -сыншы; the second ы drops


def below_thousand(n: int) -> list[str]:
    """1..999 -> words: 250 -> ['екі', 'жүз', 'елу']; 100 is plain 'жүз'."""
    hundreds, rest = divmod(n, 100)
    tens, ones = divmod(rest, 10)
    words = []
    if hundreds:
        words += ([] if hundreds == 1 else [ONES[hundreds]]) + ["жүз"]
    if tens:
        words.append(TENS[tens])
    if ones:
        words.append(ONES[ones])
    return words


def cardinal(n: int) -> str:
    """0..10^9 in words: 45 -> 'қырық бес', 2024 -> 'екі мың жиырма төрт', 10^6 -> 'бір миллион'."""
    if not 0 <= n <= MAX_NUMBER:
        raise ValueError(f"cardinal: {n} is outside 0..{MAX_NUMBER}")
    if n == 0:
        return ONES[0]
    words = []
    for value, name in SCALES:
        count, n = divmod(n, value)
        if count:
            words += below_thousand(count) + [name]  # 1000 is "бір мың", 1000000 "бір миллион"
    if n:
        words += below_thousand(n)
    return " ".join(words)


def is_back(word: str) -> bool:
    """Vowel harmony: does the word's last vowel take back (ы/а) suffixes rather than front (і/е) ones?"""
    for c in reversed(word):
        if c in BACK_VOWELS:
            return True
        if c in FRONT_VOWELS:
            return False
    return False


def ordinal_word(word: str) -> str:
    """A cardinal word + the ordinal suffix: бір -> бірінші, алты -> алтыншы, он -> оныншы, елу -> елуінші."""
    if word in ORDINAL_EXCEPTIONS:
        return ORDINAL_EXCEPTIONS[word]
    back = is_back(word)
    if word[-1] in VOWELS:
        return word + ("ншы" if back else "нші")
    return word + ("ыншы" if back else "інші")


def ordinal(n: int) -> str:
    """n-th in words (only the last word takes the suffix): 3 -> 'үшінші', 21 -> 'жиырма бірінші'."""
    words = cardinal(n).split()
    return " ".join(words[:-1] + [ordinal_word(words[-1])])


def written_ordinal(n: int) -> str:
    """How Kazakh writes an ordinal in digits: the number, a hyphen, -шы/-ші by harmony: 5 -> '5-ші', 6 -> '6-шы'."""
    return f"{n}-{'шы' if is_back(ordinal(n)) else 'ші'}"


def spoken_date(year: int, month: int, day: int) -> str:
    """'2023 жылғы 5 наурыз' in words: the year and the day are ordinals."""
    if not 1 <= month <= 12 or not 1 <= day <= 31:
        raise ValueError(f"spoken_date: no month {month} day {day}")
    return f"{ordinal(year)} жылғы {ordinal(day)} {MONTHS[month - 1]}"


def written_date(year: int, month: int, day: int) -> str:
    return f"{year} жылғы {day} {MONTHS[month - 1]}"


def spoken_time(hour: int, minute: int) -> str:
    """'сағат 14:30' in words: 'сағат он төрт отыз'; 9:05 -> 'сағат тоғыз нөл бес'."""
    if not 0 <= hour <= 23 or not 0 <= minute <= 59:
        raise ValueError(f"spoken_time: no time {hour}:{minute:02d}")
    mm = cardinal(minute) if minute >= 10 else f"нөл {cardinal(minute)}"
    return f"сағат {cardinal(hour)} {mm}"


# ---------------------------------------------------------------------------------------------- reading digits

ORDINAL_SUFFIXES = {"шы", "ші", "ыншы", "інші", "ншы", "нші"}  # "5-ші" normalises to "5 ші"
NUMBER_RE = re.compile(r"\d+")


def is_year_word(word: str) -> bool:
    """жылы, жылғы, жылдан, жылдың ... (a year's ordinal), but not the bare 'жыл' of a count ('5 жыл')."""
    return word.startswith("жыл") and len(word) > 3


def is_month_word(word: str) -> bool:
    """наурыз, наурызда, желтоқсанның: a month name, maybe with a suffix (a day before it is an ordinal)."""
    return any(word.startswith(m) for m in MONTHS)


def read_number(digits: str) -> str:
    """A run of digits as one cardinal; '007'-style leading zeros are read digit by digit."""
    if len(digits) > 1 and digits[0] == "0":
        return " ".join(ONES[int(d)] for d in digits)
    return cardinal(int(digits))


def verbalize(text: str) -> str:
    """A normalised sentence (recipe §5: lowercase, punctuation gone) with digits -> the same sentence in words.

    'сағат 14 30' (from 14:30) -> 'сағат он төрт отыз'; '5 ші' (from 5-ші) -> 'бесінші';
    '1991 жылы' -> 'бір мың тоғыз жүз тоқсан бірінші жылы'; '5 наурыз' -> 'бесінші наурыз'; '5 жыл' -> 'бес жыл'.
    """
    words, out, i = text.split(), [], 0
    while i < len(words):
        w, nxt = words[i], words[i + 1] if i + 1 < len(words) else ""
        if not NUMBER_RE.fullmatch(w):
            if NUMBER_RE.search(w):
                raise ValueError(f"verbalize: cannot read {w!r} (digits glued to letters)")
            out.append(w)
        elif out and out[-1] == "сағат" and NUMBER_RE.fullmatch(nxt) and len(nxt) == 2 and int(w) < 24:
            out[-1:] = [spoken_time(int(w), int(nxt))]
            i += 1
        elif nxt in ORDINAL_SUFFIXES:
            out.append(ordinal(int(w)))
            i += 1
        elif (is_year_word(nxt) and 1000 <= int(w) <= 2100) or (is_month_word(nxt) and 1 <= int(w) <= 31):
            out.append(ordinal(int(w)))
        else:
            out.append(read_number(w))
        i += 1
    return " ".join(out)
