"""The hand-written scorer against jiwer (dev-only) and against hand-checked alignments."""
import math
import random

import pytest

from wer import (ErrorStats, align, char_stats, corpus_stats, count, format_alignment, format_worst,
                 word_stats, worst_first)

LETTERS = "абвгғдеёжзийкқлмнңоөпрстуұүфхһцчшщъыіьэюяә"
WORDS = ["қазақ", "ел", "әлем", "сәлем", "үй", "өзен", "ғылым", "тұр", "бір", "екі", "үш", "жақсы",
         "мектеп", "оқу", "бала", "ана", "і", "һауа", "ұлы", "дала"]


def _edit(tokens: list, rng: random.Random, p: float, pool: list) -> list:
    """Random substitutions, deletions, insertions and transpositions at rate p."""
    out = []
    for t in tokens:
        r = rng.random()
        if r < p / 4:
            continue                                   # deletion
        if r < p / 2:
            out.append(rng.choice(pool))               # substitution (sometimes by itself)
        elif r < 3 * p / 4:
            out += [t, rng.choice(pool)]               # insertion
        elif r < p and out:
            out.insert(len(out) - 1, t)                # transposition
        else:
            out.append(t)
    return out


def _random_pairs(seed: int, n: int) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    pairs = []
    for k in range(n):
        vocab = WORDS[: rng.choice([3, 6, len(WORDS)])]   # small vocabularies make many ties
        ref = [rng.choice(vocab) for _ in range(rng.randint(1, 30))]
        kind = k % 6
        if kind == 0:
            hyp = []                                              # empty hypothesis
        elif kind == 1:
            hyp = [rng.choice(vocab) for _ in range(rng.randint(1, 30))]   # unrelated
        else:
            hyp = _edit(ref, rng, p=[0.05, 0.2, 0.5, 0.9][kind - 2], pool=vocab)
        pairs.append((" ".join(ref), " ".join(hyp)))
    return pairs


def _jiwer_ops(chunks) -> list[str]:
    """jiwer's alignment chunks, expanded to one op kind per token."""
    kinds = {"equal": "=", "substitute": "S", "delete": "D", "insert": "I"}
    out = []
    for c in chunks:
        out += [kinds[c.type]] * max(c.ref_end_idx - c.ref_start_idx, c.hyp_end_idx - c.hyp_start_idx)
    return out


def _levenshtein(a: list, b: list) -> int:
    """Textbook dynamic programme, an independent check of the distance."""
    prev = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        cur = [i]
        for j, y in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (x != y)))
        prev = cur
    return prev[-1]


def test_words_equal_jiwer_op_by_op():
    jiwer = pytest.importorskip("jiwer")  # dev-only reference (requirements-dev.txt)
    for ref, hyp in _random_pairs(seed=0, n=400):
        ops = align(ref.split(), hyp.split())
        out = jiwer.process_words(ref, hyp)
        assert [k for k, _, _ in ops] == _jiwer_ops(out.alignments[0]), (ref, hyp)
        s = count(ops)
        assert (s.hits, s.subs, s.dels, s.ins) == (out.hits, out.substitutions, out.deletions, out.insertions)
        assert s.errors == _levenshtein(ref.split(), hyp.split())


def test_chars_equal_jiwer_short_and_long():
    jiwer = pytest.importorskip("jiwer")  # dev-only reference (requirements-dev.txt)
    # char level: long strings (> 64 chars) with few edits take rapidfuzz's banded path, with many
    # edits its blocked path; both must give jiwer's counts
    pairs = _random_pairs(seed=1, n=300)
    rng = random.Random(2)
    for _ in range(60):
        ref = "".join(rng.choice(LETTERS[:8] + " ") for _ in range(rng.randint(60, 300)))
        hyp = "".join(_edit(list(ref), rng, p=rng.choice([0.02, 0.1, 0.4]), pool=list(LETTERS[:8] + " ")))
        pairs.append((ref.strip(), hyp.strip()))
    for ref, hyp in pairs:
        s = char_stats(ref, hyp)
        out = jiwer.process_characters(ref, hyp)
        assert (s.hits, s.subs, s.dels, s.ins) == (out.hits, out.substitutions, out.deletions, out.insertions), (ref, hyp)
        assert s.ref_len == len(ref)


def test_corpus_rates_equal_jiwer():
    jiwer = pytest.importorskip("jiwer")  # dev-only reference (requirements-dev.txt)
    pairs = _random_pairs(seed=3, n=200)
    refs, hyps = [r for r, _ in pairs], [h for _, h in pairs]
    total_w = sum(corpus_stats(refs, hyps, "word"))
    total_c = sum(corpus_stats(refs, hyps, "char"))
    assert total_w.rate == pytest.approx(jiwer.wer(refs, hyps), abs=1e-12)
    assert total_c.rate == pytest.approx(jiwer.cer(refs, hyps), abs=1e-12)
    assert total_w.ref_len == sum(len(r.split()) for r in refs)
    assert total_c.ref_len == sum(len(r) for r in refs)        # spaces count as characters


@pytest.mark.parametrize("ref, hyp, expected", [
    # (hits, subs, dels, ins), worked by hand
    ("a b c", "a b c", (3, 0, 0, 0)),
    ("a b c", "a x c", (2, 1, 0, 0)),
    ("a b c", "a c", (2, 0, 1, 0)),
    ("a b c", "a b x c", (3, 0, 0, 1)),
    ("a b c d", "", (0, 0, 4, 0)),
    ("the cat sat on the mat", "the cat sit on mat", (4, 1, 1, 0)),
    ("a b", "b c", (0, 2, 0, 0)),                 # tie: S S (as jiwer), not D = I
    ("a b c", "c b a", (1, 2, 0, 0)),
])
def test_textbook_alignments(ref, hyp, expected):
    s = word_stats(ref, hyp)
    assert (s.hits, s.subs, s.dels, s.ins) == expected
    assert s.ref_len == len(ref.split())


def test_align_ops_carry_tokens():
    ops = align("сәлем әлем бүгін".split(), "сәлем элем бүгін жақсы".split())
    assert ops == [("=", "сәлем", "сәлем"), ("S", "әлем", "элем"), ("=", "бүгін", "бүгін"),
                   ("I", None, "жақсы")]


def test_char_level_counts_spaces():
    s = char_stats("ab cd", "abcd")       # the missing space is one deletion
    assert (s.hits, s.subs, s.dels, s.ins, s.ref_len) == (4, 0, 1, 0, 5)
    assert char_stats(" әб ", "әб").errors == 0   # ends stripped, as jiwer's cer


def test_empty_reference_rule():
    s = word_stats("", "бір екі")
    assert (s.ins, s.ref_len, s.errors) == (2, 0, 2) and s.rate == math.inf
    both = word_stats("", "")
    assert both.errors == 0 and both.rate == 0.0
    # corpus: empty references add their insertions, nothing to the denominator
    total = sum(corpus_stats(["", "а б"], ["x", "а б"]))
    assert (total.errors, total.ref_len, total.rate) == (1, 2, 0.5)


def test_empty_reference_rule_is_jiwers():
    jiwer = pytest.importorskip("jiwer")  # dev-only reference (requirements-dev.txt)
    assert jiwer.process_words(["", "а б"], ["x", "а б"]).insertions == 1


def test_error_stats_arithmetic():
    a, b = ErrorStats(1, 2, 3, 4, 6), ErrorStats(5, 0, 1, 0, 6)
    c = a + b
    assert (c.hits, c.subs, c.dels, c.ins, c.ref_len) == (6, 2, 4, 4, 12)
    assert c.errors == 10 and c.rate == pytest.approx(10 / 12) and sum([a, b]) == c
    assert a.hyp_len == 1 + 2 + 4


def test_length_mismatch_is_an_error():
    with pytest.raises(ValueError):
        corpus_stats(["a"], ["a", "b"])


def test_format_alignment_marks_errors():
    text = format_alignment(align("сәлем әлем бүгін жақсы".split(), "мен сәлем элем бүгін".split()))
    ref_line, hyp_line, marks = text.split("\n")
    assert ref_line == "REF: *** сәлем ӘЛЕМ бүгін ЖАҚСЫ"
    assert hyp_line == "HYP: МЕН сәлем ЭЛЕМ бүгін *****"
    assert marks == "     I         S          D"


def test_worst_first_order():
    refs = ["а б в", "а б в г", "а"]
    hyps = ["а б в", "x y в г", "x"]
    stats = corpus_stats(refs, hyps)
    assert worst_first(stats) == [1, 2, 0]           # 2 errors, then 1 error (rate 100%), then none
    text = format_worst(refs, hyps, k=5, ids=["u1", "u2", "u3"])
    assert text.startswith("u2  WER 50.0%") and "u3" in text and "u1" not in text
