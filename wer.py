"""Word and character error rates, hand-written: Levenshtein alignment with edit operations.

What it follows: jiwer (recipe §10). WER = (S + D + I) / reference words over the whole corpus,
CER the same over characters of the string, spaces included (jiwer's `cer`, which strips
the ends but keeps inner spaces). When several alignments have the same cost their S/D/I
counts can differ ("a b" -> "b c" is S S, or D = I); we take the one jiwer takes:
- the common prefix and suffix are matched first, as rapidfuzz (jiwer's engine) does;
- the rest is walked back from the end of the Levenshtein table D (reference rows i, hypothesis
  columns j) with rapidfuzz's order of checks: deletion if D[i][j] = D[i-1][j] + 1; else
  insertion if D[i][j-1] = D[i-1][j-1] - 1 (j > 1); else the diagonal (hit or substitution).
  Tests check the counts against jiwer on random pairs of every shape.

Speed: the table is computed column by column as bit vectors (Myers 1999 / Hyyrö 2001, what
rapidfuzz does in C++): a column's vertical differences D[i][j] - D[i-1][j], each +1, 0 or -1,
are kept as two Python integers whose bit i-1 says "+1" (vp) or "-1" (vn). One column then costs a
dozen big-integer operations instead of a Python loop over the reference: the 853 FLEURS test
pairs (~130 characters each) score in a few tenths of a second, words and characters.

Empty reference (ref_len 0): every hypothesis token is an insertion. The per-utterance rate is
0.0 when the hypothesis is empty too, otherwise inf; corpus rates divide total edits by total
reference units, so empty references add their insertions and nothing to the denominator.

What it does not do: text normalisation (tokenizer.normalize does, before scoring), MER/WIL, or
rapidfuzz's Hirschberg split, which it takes only for pairs of thousands of tokens; there a tie
can be broken differently, the distance never differs.
"""
import math
import unicodedata
from dataclasses import dataclass

HIT, SUB, DEL, INS = "=", "S", "D", "I"


@dataclass
class ErrorStats:
    """Edit counts of one utterance or of a corpus (add them up with + or sum)."""
    hits: int = 0
    subs: int = 0
    dels: int = 0
    ins: int = 0
    ref_len: int = 0     # reference units: hits + subs + dels

    @property
    def errors(self) -> int:
        return self.subs + self.dels + self.ins

    @property
    def hyp_len(self) -> int:
        return self.hits + self.subs + self.ins

    @property
    def rate(self) -> float:
        """errors / ref_len; with an empty reference 0.0 if no errors, else inf."""
        if self.ref_len == 0:
            return 0.0 if self.errors == 0 else math.inf
        return self.errors / self.ref_len

    def __add__(self, other: "ErrorStats") -> "ErrorStats":
        return ErrorStats(self.hits + other.hits, self.subs + other.subs, self.dels + other.dels,
                          self.ins + other.ins, self.ref_len + other.ref_len)

    def __radd__(self, other):   # lets sum(list_of_stats) start from 0
        return self if other == 0 else self.__add__(other)


def _column_deltas(ref: list, hyp: list) -> tuple[list[int], list[int]]:
    """Bit-vector columns of the Levenshtein table: (vp[j], vn[j]) for D[.][j], j = 0..len(hyp).

    Bit i-1 of vp[j] is set when D[i][j] - D[i-1][j] = +1, of vn[j] when it is -1
    (Hyyrö 2001, after Myers 1999).
    """
    full = (1 << len(ref)) - 1
    match = {}                           # token -> bit set of its positions in ref
    for i, tok in enumerate(ref):
        match[tok] = match.get(tok, 0) | (1 << i)
    vp, vn = full, 0                     # column 0: D[i][0] = i, all +1
    vps, vns = [vp], [vn]
    for tok in hyp:
        x = match.get(tok, 0)
        d0 = (((x & vp) + vp) ^ vp) | x | vn          # diagonal steps that keep the cost
        hp = vn | (~(d0 | vp) & full)                  # horizontal +1 ...
        hn = d0 & vp                                   # ... and -1 differences
        hp = ((hp << 1) | 1) & full                    # row 0 grows by one each column: D[0][j] = j
        hn = (hn << 1) & full
        vp = hn | (~(d0 | hp) & full)
        vn = hp & d0
        vps.append(vp)
        vns.append(vn)
    return vps, vns


def _align_core(ref: list, hyp: list) -> list[tuple]:
    """Backtrace of ref vs hyp (no common prefix/suffix) with rapidfuzz's tie-break (module doc)."""
    vps, vns = _column_deltas(ref, hyp)
    ops = []
    i, j = len(ref), len(hyp)
    row = 1 << (i - 1) if i else 0                     # the bit of table row i
    while i and j:
        if vps[j] & row:                               # D[i][j] = D[i-1][j] + 1
            i, row = i - 1, row >> 1
            ops.append((DEL, ref[i], None))
            continue
        j -= 1
        if j and vns[j] & row:                         # D[i][j-1] = D[i-1][j-1] - 1 (j is now j-1)
            ops.append((INS, None, hyp[j]))
            continue
        i, row = i - 1, row >> 1
        ops.append((HIT if ref[i] == hyp[j] else SUB, ref[i], hyp[j]))
    ops.extend((DEL, ref[k], None) for k in reversed(range(i)))
    ops.extend((INS, None, hyp[k]) for k in reversed(range(j)))
    ops.reverse()
    return ops


def align(ref: list, hyp: list) -> list[tuple]:
    """Minimal-edit alignment as ops (kind, ref_token | None, hyp_token | None), kind in = S D I.

    align("a b c".split(), "a x c d".split()) ->
        [("=", "a", "a"), ("S", "b", "x"), ("=", "c", "c"), ("I", None, "d")]
    """
    ref, hyp = list(ref), list(hyp)
    n = min(len(ref), len(hyp))
    pre = 0
    while pre < n and ref[pre] == hyp[pre]:
        pre += 1
    suf = 0
    while suf < n - pre and ref[-1 - suf] == hyp[-1 - suf]:
        suf += 1
    mid = _align_core(ref[pre:len(ref) - suf], hyp[pre:len(hyp) - suf])
    return ([(HIT, t, t) for t in ref[:pre]] + mid
            + [(HIT, t, t) for t in ref[len(ref) - suf:]])


def count(ops: list[tuple]) -> ErrorStats:
    """ErrorStats of an alignment."""
    n = {HIT: 0, SUB: 0, DEL: 0, INS: 0}
    for kind, _, _ in ops:
        n[kind] += 1
    return ErrorStats(n[HIT], n[SUB], n[DEL], n[INS], ref_len=n[HIT] + n[SUB] + n[DEL])


def words(text: str) -> list[str]:
    return text.split()


def chars(text: str) -> list[str]:
    """Characters as jiwer's cer sees them: ends stripped, inner spaces kept."""
    return list(text.strip())


def word_stats(ref: str, hyp: str) -> ErrorStats:
    return count(align(words(ref), words(hyp)))


def char_stats(ref: str, hyp: str) -> ErrorStats:
    return count(align(chars(ref), chars(hyp)))


def corpus_stats(refs: list[str], hyps: list[str], unit: str = "word") -> list[ErrorStats]:
    """Per-utterance stats; sum(...) of them gives the corpus, whose .rate is the corpus WER/CER."""
    if len(refs) != len(hyps):
        raise ValueError(f"{len(refs)} references but {len(hyps)} hypotheses")
    one = {"word": word_stats, "char": char_stats}[unit]
    return [one(r, h) for r, h in zip(refs, hyps)]


# --- pretty printing -----------------------------------------------------------------------

def _width(s: str) -> int:
    """Columns a string takes: combining marks take none."""
    return sum(1 for ch in s if not unicodedata.combining(ch))


def format_alignment(ops: list[tuple]) -> str:
    """Three aligned lines; errors upper-cased, gaps as *, and an S/D/I marker line:

    REF: сәлем ӘЛЕМ *** жақсы
    HYP: сәлем ЕЛЕМ БІР *****
               S    I   D
    """
    ref_cells, hyp_cells, marks = [], [], []
    for kind, r, h in ops:
        r = r if kind == HIT else (r.upper() if r is not None else "")
        h = h if kind == HIT else (h.upper() if h is not None else "")
        w = max(_width(r), _width(h), 1)
        ref_cells.append(r + " " * (w - _width(r)) if r else "*" * w)
        hyp_cells.append(h + " " * (w - _width(h)) if h else "*" * w)
        marks.append((" " if kind == HIT else kind) + " " * (w - 1))
    return "\n".join([("REF: " + " ".join(ref_cells)).rstrip(), ("HYP: " + " ".join(hyp_cells)).rstrip(),
                      ("     " + " ".join(marks)).rstrip()])


def worst_first(stats: list[ErrorStats]) -> list[int]:
    """Utterance indices by most errors first; ties by higher rate, then file order."""
    return sorted(range(len(stats)), key=lambda k: (-stats[k].errors, -stats[k].rate, k))


def format_worst(refs: list[str], hyps: list[str], k: int = 5, ids: list[str] | None = None) -> str:
    """The k utterances with the most word errors, each as an aligned REF/HYP block."""
    stats = corpus_stats(refs, hyps, "word")
    blocks = []
    for n in worst_first(stats)[:k]:
        s = stats[n]
        if s.errors == 0:
            break
        name = ids[n] if ids is not None else f"#{n + 1}"
        head = f"{name}  WER {100 * s.rate:.1f}%  (S {s.subs}  D {s.dels}  I {s.ins} / {s.ref_len} words)"
        blocks.append(head + "\n" + format_alignment(align(words(refs[n]), words(hyps[n]))))
    return "\n\n".join(blocks)
