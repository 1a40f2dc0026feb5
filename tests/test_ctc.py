"""ctc.py against brute force: every alignment of a tiny utterance enumerated and summed (or maximised)."""
import itertools
import math

import torch

from ctc import NEG_INF, CTCPrefixScorer, ctc_greedy, forced_align, word_index, word_times

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


def score_by_loop(scorer, r, last, cand, start=0):
    """CTCPrefixScorer.score as it was, the recursion stepped frame by frame: the reference for the closed form."""
    B, K, M = cand.shape
    T = scorer.log_probs.shape[1]
    y = scorer.log_probs.gather(2, cand.reshape(B, 1, K * M).expand(B, T, K * M))
    y = y.view(B, T, K, M).permute(0, 2, 3, 1)  # (B, K, M, T)
    y_blank = scorer.log_probs[:, None, None, :, 0]  # (B, 1, 1, T)
    phi, phi_repeat = scorer._phi(r)
    phi = torch.where((cand == last[..., None])[..., None], phi_repeat[:, :, None], phi[:, :, None])
    psi = torch.logsumexp(phi + y, dim=-1)
    none = torch.full((B, K, M), NEG_INF)
    rn, rb = [none] * (start + 1), [none] * (start + 1)
    ys, phis, blanks = y.unbind(-1), phi.unbind(-1), y_blank.unbind(-1)
    for t in range(start, T):
        rn.append(torch.logaddexp(rn[-1], phis[t]) + ys[t])
        rb.append(torch.logaddexp(rb[-1], rn[-2]) + blanks[t])
    return torch.stack([torch.stack(rn, -1), torch.stack(rb, -1)], -1), psi


def assert_same_scores(got, want):
    """Both outputs close, and log 0 (-inf) in exactly the same places."""
    for g, w in zip(got, want):
        assert g.shape == w.shape and not g.isnan().any()
        assert torch.equal(g == NEG_INF, w == NEG_INF)
        torch.testing.assert_close(g, w)


def random_states(scorer, K, g):
    """Forward variables of K made-up prefixes per item: the empty one's, then some extended at random (by the loop)."""
    B, T, V = scorer.log_probs.shape
    r, last = scorer.initial_state(K), torch.full((B, K), -1)
    for _ in range(3):
        c = torch.randint(1, V, (B, K, 1), generator=g)
        new, _ = score_by_loop(scorer, r, last, c)
        keep = torch.rand(B, K, generator=g) < 0.7
        r = torch.where(keep[..., None, None], new[:, :, 0], r)
        last = torch.where(keep, c[..., 0], last)
    return r, last


def test_closed_form_matches_the_loop():
    """Padded items, all start frames, candidates that repeat the last label, the empty prefix (last = -1)."""
    B, K, M, frames, V = 2, 3, 4, 30, 7
    g = torch.Generator().manual_seed(5)
    lp = (torch.randn(B, frames, V, generator=g) * 2).log_softmax(-1)
    for lengths in (None, torch.tensor([30, 17])):
        scorer = CTCPrefixScorer(lp, lengths)
        r, last = random_states(scorer, K, g)
        last[0, 0] = -1
        assert (last == -1).any() and (last > 0).any()
        cand = torch.randint(1, V, (B, K, M), generator=g)
        cand[..., 0] = last.clamp(min=1)  # a repeat of the last label (or label 1 after the empty prefix)
        cand[0, 2, 3] = cand[0, 2, 2]  # the same candidate twice
        cand[1, 1, 1] = 0  # the blank/EOS column, as the search may ask for it
        for start in (0, 1, 5, 17, 29, 30):
            assert_same_scores(scorer.score(r, last, cand, start), score_by_loop(scorer, r, last, cand, start))


def test_closed_form_matches_the_loop_on_peaked_log_probs():
    """A confident model: two labels per frame, the others at -50 .. -200, so log A_t of a candidate runs to -1e4
    while the scores of the right continuation stay near 0 (float32 inside would be off by ~1e-3 there)."""
    B, K, M, frames, V = 2, 2, 3, 100, 5
    g = torch.Generator().manual_seed(6)
    path = torch.randint(0, V, (B, frames), generator=g)
    lp = -50 - 150 * torch.rand(B, frames, V, generator=g)
    lp.scatter_(2, path[..., None], torch.randn(B, frames, 1, generator=g))
    lp.scatter_(2, torch.randint(0, V, (B, frames, 1), generator=g), torch.randn(B, frames, 1, generator=g))
    scorer = CTCPrefixScorer(lp.log_softmax(-1), torch.tensor([100, 71]))
    labels = [collapse(p) for p in path.tolist()]
    r, last = scorer.initial_state(K), torch.full((B, K), -1)
    for step in range(3):  # hypothesis k: the first 2 + k labels of the path
        c = torch.tensor([[lab[step]] for lab in labels]).expand(B, K)
        new, _ = score_by_loop(scorer, r, last, c[..., None], step)
        grow = torch.tensor([step < 2 + k for k in range(K)])
        r, last = torch.where(grow[:, None, None], new[:, :, 0], r), torch.where(grow, c, last)
    cand = torch.randint(1, V, (B, K, M), generator=g)
    cand[..., 0] = torch.tensor([[lab[2 + k] for k in range(K)] for lab in labels])  # the right next label
    for start in (0, 3, 20):
        got, want = scorer.score(r, last, cand, start), score_by_loop(scorer, r, last, cand, start)
        rn = want[0][..., 0]
        assert want[1][..., 0].min() > -20 and rn[rn.isfinite()].min() < -5000
        assert_same_scores(got, want)


def test_closed_form_restarts_after_an_impossible_frame():
    """A log-prob of -inf inside the utterance (not padding): r^n restarts from 0 after it, as the loop does."""
    g = torch.Generator().manual_seed(7)
    lp = torch.randn(1, 12, 4, generator=g).log_softmax(-1)
    lp[0, 4, 2] = lp[0, 7:9, 2] = lp[0, 5, 0] = NEG_INF
    scorer = CTCPrefixScorer(lp)
    r, last = random_states(scorer, 2, g)
    cand = torch.tensor([[[1, 2, 3]]]).expand(1, 2, 3)
    for start in (0, 2, 6):
        assert_same_scores(scorer.score(r, last, cand, start), score_by_loop(scorer, r, last, cand, start))


def test_estimate_over_each_utterances_span_equals_the_exact_scores():
    """Peaked log-probs over 60 frames: the estimate multiplies only the frames near where each hypothesis
    ends (fewer than all of them here), yet equals the exact prefix scores of every candidate that matters."""
    g = torch.Generator().manual_seed(5)
    V, frames = 12, 60
    lp = torch.randn(2, frames, V, generator=g) * 0.5
    for b in range(2):  # labels 1..10 spelled slowly: each one over 3 frames, then 3 blank frames
        for t in range(frames):
            lp[b, t, (t // 6) % 10 + 1 + b if t % 6 < 3 else 0] += 12.0
    lp = lp.log_softmax(-1)
    scorer = CTCPrefixScorer(lp, torch.tensor([60, 45]))  # the second utterance padded
    hyps = torch.tensor([[[1, 2, 7], [1, 2, 3]], [[2, 3, 8], [2, 3, 4]]])  # (B, K, L): spans of unequal length
    r, last = scorer.initial_state(2), torch.full((2, 2), -1)
    for i in range(hyps.shape[2]):
        new, _ = scorer.score(r, last, hyps[..., i:i + 1], start=i)
        r, last = new[:, :, 0], hyps[..., i]
    phi = torch.logaddexp(r[..., :-1, 0], r[..., :-1, 1])
    assert ((phi - phi.amax(-1, keepdim=True)) > -40).any(1).sum(-1).max() < 30  # the spans really are cut
    est = scorer.estimate(r, last)  # (2, 2, V)
    cand = torch.arange(1, V).expand(2, 2, V - 1)
    _, exact = scorer.score(r, last, cand)  # (2, 2, V-1)
    matters = exact > exact.amax(-1, keepdim=True) - 30
    torch.testing.assert_close(est[..., 1:][matters], exact[matters], atol=1e-3, rtol=1e-4)


def test_select_keeps_the_chosen_utterances_scores():
    """After utterances leave (select), the scorer scores the others exactly as a scorer built for them alone."""
    lp = log_probs(7, B=3, frames=8)
    lengths = torch.tensor([8, 5, 7])
    full, alone = CTCPrefixScorer(lp, lengths).select(torch.tensor([2, 0])), CTCPrefixScorer(lp[[2, 0]], lengths[[2, 0]])
    r, last = alone.initial_state(2), torch.tensor([[-1, -1], [-1, -1]])
    torch.testing.assert_close(full.initial_state(2), r)
    cand = torch.tensor([[[1, 2], [3, 1]], [[2, 2], [1, 3]]])
    for a, b in zip(full.score(r, last, cand, start=0), alone.score(r, last, cand, start=0)):
        torch.testing.assert_close(a, b)
    torch.testing.assert_close(full.estimate(r, last), alone.estimate(r, last))
    again = full.select(torch.tensor([1]))  # a second select indexes the first's rows
    torch.testing.assert_close(again.initial_state(1), CTCPrefixScorer(lp[[0]], lengths[[0]]).initial_state(1))


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
    # ends: 3 frames (0.12 s) past the word's last spike, cut at the next word's first frame: 4+3 -> 5, 8+3 -> 9
    assert words == [{"word": "сәлем", "start": 10.0, "end": 10.2}, {"word": "әлем", "start": 10.2, "end": 10.36},
                     {"word": "бүгін", "start": 10.36, "end": 10.64}]
    # a pause after a word: its end stops 0.12 s after its spike, not at the next word; the last word stops at
    # the end of the audio
    words = word_times(["сәлем", "әлем"], [0, 1], [(2, 2), (20, 21)], 0.04, n_frames=23)
    assert [(w["start"], w["end"]) for w in words] == [(0.08, 0.24), (0.8, 0.92)]
    assert word_times(["сәлем"], [0], None, 0.04) == [{"word": "сәлем", "start": None, "end": None}]
