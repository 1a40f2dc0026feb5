"""ctc.py against brute force: every alignment of a tiny utterance enumerated and summed (or maximised)."""
import itertools
import math

import torch

from ctc import CTCPrefixScorer, ctc_greedy, forced_align, word_index, word_times

T, V = 6, 4  # 4**6 = 4096 alignments


def collapse(path):
    """CTC's many-to-one map: merge repeats, then drop blanks (0)."""
    return tuple(c for i, c in enumerate(path) if c != 0 and (i == 0 or c != path[i - 1]))


def brute_force(lp):
    """{labelling: P(exactly it)} and {prefix: P(the labelling starts with it)} from (T, V) log-probs."""
    exact, prefix = {}, {}
    for path in itertools.product(range(lp.shape[1]), repeat=lp.shape[0]):
        p = math.exp(sum(lp[t, c].item() for t, c in enumerate(path)))
        lab = collapse(path)
        exact[lab] = exact.get(lab, 0.0) + p
        for k in range(len(lab) + 1):
            prefix[lab[:k]] = prefix.get(lab[:k], 0.0) + p
    return exact, prefix


def log_probs(seed, B=1, frames=T):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(B, frames, V, generator=g) * 1.5).log_softmax(-1)


def extend(scorer, r, last, labels):
    """Walk the scorer along `labels` from state r: psi of every prefix, and the final state."""
    psis = []
    for c in labels:
        new, psi = scorer.score(r, last, torch.tensor([[[c]]]))
        r, last = new[:, :, 0], torch.tensor([[c]])
        psis.append(psi[0, 0, 0].item())
    return psis, r, last


def test_prefix_scores_match_the_sum_over_alignments():
    lp = log_probs(0)
    exact, prefix = brute_force(lp[0])
    scorer = CTCPrefixScorer(lp)
    r0, empty = scorer.initial_state(1), torch.tensor([[-1]])
    assert math.isclose(scorer.end(r0).item(), math.log(exact[()]), rel_tol=1e-5)
    for labels in [(1,), (2, 3), (1, 1), (3, 1, 3), (2, 2, 1), (1, 2, 1, 2)]:
        psis, r, last = extend(scorer, r0, empty, labels)
        for k, psi in enumerate(psis):
            assert math.isclose(psi, math.log(prefix[labels[: k + 1]]), rel_tol=1e-5, abs_tol=1e-5), labels
        assert math.isclose(scorer.end(r).item(), math.log(exact[labels]), rel_tol=1e-5, abs_tol=1e-5)
        # the one-matmul estimate over the whole vocabulary agrees with the exact scores
        est = scorer.estimate(r, last)[0, 0]
        for c in range(1, V):
            want = math.log(prefix.get(labels + (c,), 1e-300))
            assert math.isclose(est[c].item(), want, rel_tol=1e-4, abs_tol=1e-4), (labels, c)


def test_padded_frames_change_nothing():
    """An item padded to a longer batch scores as alone (padding = certain blanks)."""
    short = log_probs(1, frames=4)
    padded = torch.cat([short, log_probs(2, frames=2)], dim=1)  # frames 4, 5 are junk
    batch = torch.cat([log_probs(3), padded])  # (2, 6, V)
    alone, together = CTCPrefixScorer(short), CTCPrefixScorer(batch, torch.tensor([6, 4]))
    cand = torch.tensor([[[1, 2, 3]]])
    a_new, a_psi = alone.score(alone.initial_state(1), torch.tensor([[-1]]), cand)
    t_new, t_psi = together.score(together.initial_state(1), torch.tensor([[-1], [-1]]), cand.expand(2, 1, 3))
    torch.testing.assert_close(t_psi[1], a_psi[0])
    torch.testing.assert_close(together.end(t_new[1:, :, 1]), alone.end(a_new[:, :, 1]))


def test_forced_align_is_the_best_alignment():
    lp = log_probs(4)[0]
    for tokens in [[1], [2, 3], [1, 1], [3, 2, 3], [1, 2, 2]]:
        best = max((p for p in itertools.product(range(V), repeat=T) if collapse(p) == tuple(tokens)),
                   key=lambda p: sum(lp[t, c].item() for t, c in enumerate(p)))
        # the frames of each token in the best path: a new token starts when a non-blank differs from the frame before
        spans, k = [], -1
        for t, c in enumerate(best):
            if c != 0 and (t == 0 or c != best[t - 1]):
                k += 1
                spans.append([t, t])
            elif c != 0:
                spans[k][1] = t
        assert forced_align(lp, tokens) == [tuple(s) for s in spans], tokens
    assert forced_align(lp, [1, 1, 1, 1]) is None  # needs 7 frames: 4 labels and 3 blanks between repeats
    assert forced_align(lp, []) == []


def test_ctc_greedy_collapses_and_respects_lengths():
    path = torch.tensor([[0, 5, 5, 0, 5, 7, 7, 3, 3]])
    lp = torch.nn.functional.one_hot(path, 9).float().log()
    assert ctc_greedy(lp) == [[5, 5, 7, 3]]
    assert ctc_greedy(lp, torch.tensor([7])) == [[5, 5, 7]]


def test_word_times_group_tokens_into_words():
    pieces = {1: "сә", 2: "лем", 3: " әлем", 4: "!", 5: " бүгін"}
    decode = lambda ids: "".join(pieces[i] for i in ids)
    normalize = lambda s: " ".join(s.replace("!", " ").split())
    tokens = [1, 2, 3, 4, 5]
    idx = word_index(decode, tokens, normalize)
    assert idx == [0, 0, 1, 1, 2]  # "!" joins the word before it
    words = word_times(["сәлем", "әлем", "бүгін"], idx, [(0, 1), (2, 3), (5, 6), (7, 7), (9, 12)], 0.04, 10.0)
    assert words == [{"word": "сәлем", "start": 10.0, "end": 10.16}, {"word": "әлем", "start": 10.2, "end": 10.32},
                     {"word": "бүгін", "start": 10.36, "end": 10.52}]
