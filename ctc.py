"""CTC at decoding time: greedy best path, prefix scores for joint CTC/attention search, forced alignment.

- `ctc_greedy`: argmax per frame, repeats collapsed, blanks (id 0) dropped (Graves et al. 2006).
- `CTCPrefixScorer`: the CTC prefix probability of growing hypotheses, the CTC half of one-pass joint
  CTC/attention decoding (Watanabe et al. 2017, "Hybrid CTC/attention architecture for end-to-end speech
  recognition", Algorithm 2; Hori et al. 2017; ESPnet's CTCPrefixScoreTH). The forward recursion over time is
  linear in probabilities, so it is solved in closed form (a cumsum and a logcumsumexp), vectorised over
  hypotheses and candidate tokens.
- `forced_align`: the Viterbi path of known tokens through the CTC lattice -> the frames of each token;
  `word_times` groups those into words (for --timestamps and for splicing long-form windows).

Not here: CTC training (train.py), the beam search that uses the scorer (search.py).
"""
import copy
import math

import torch

from tokenizer import BLANK_ID

BLANK = BLANK_ID  # the CTC blank, the same id as EOS (recipe §2, §6)
NEG_INF = float("-inf")


def ctc_greedy(log_probs: torch.Tensor, lengths: torch.Tensor | None = None) -> list[list[int]]:
    """(B, T, V) log-probs, (B,) valid frames or None -> token ids per item: [0, 5, 5, 0, 5, 7, 7] -> [5, 5, 7]."""
    best = log_probs.argmax(-1).cpu()  # (B, T)
    out = []
    for b in range(best.shape[0]):
        path = best[b, : None if lengths is None else int(lengths[b])].tolist()
        out.append([t for i, t in enumerate(path) if t != BLANK and (i == 0 or t != path[i - 1])])
    return out


def pad_as_blank(log_probs: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:
    """Frames past an item's end become certain blanks (log 1 for blank, log 0 elsewhere).

    Forward variables pass through such frames unchanged and no label can start there, so a padded item
    scores exactly as it would alone.
    """
    lp = log_probs.float()
    if lengths is None:
        return lp
    pad = torch.arange(lp.shape[1], device=lp.device)[None, :] >= lengths.to(lp.device)[:, None]  # (B, T)
    lp = lp.masked_fill(pad[:, :, None], NEG_INF)
    lp[:, :, BLANK] = lp[:, :, BLANK].masked_fill(pad, 0.0)
    return lp


def _linear_scan(log_b: torch.Tensor, log_a: torch.Tensor) -> torch.Tensor:
    """log x_1 .. x_T of x_{t+1} = (x_t + b_t) a_t from x_0 = 0, given log b_t and log a_t (..., T), broadcast.

    Unrolled, x_{t+1} = sum_{s<=t} b_s a_s ... a_t = A_t sum_{s<=t} b_s / A_{s-1} with A_t = a_0 ... a_t: a cumsum
    and a logcumsumexp instead of a loop. In float64: log A_t reaches -1e4, where float32 is off by ~1e-3.
    A zero a_u (log -inf: padding) wipes out every term s <= u; log a_u = -1e6 does the same to log-probabilities
    while keeping log A finite (no -inf - -inf = nan), and where no nonzero term comes after the last such cut
    the result is set to log 0 = -inf, as the loop's would be.
    """
    log_b, log_a = log_b.double(), log_a.double()
    cut = log_a == NEG_INF
    log_a = log_a.masked_fill(cut, -1e6)
    log_A = log_a.cumsum(-1)
    log_x = log_A + torch.logcumsumexp(log_b + log_a - log_A, -1)  # log_b + log_a - log_A = log b_s - log A_{s-1}
    t = torch.arange(log_x.shape[-1], device=log_x.device)
    last_cut = torch.where(cut, t, -1).cummax(-1).values
    last_term = torch.where((log_b > NEG_INF) & ~cut, t, -1).cummax(-1).values
    return log_x.masked_fill(last_term <= last_cut, NEG_INF).float()


class CTCPrefixScorer:
    """Prefix scores psi(h) = log P(the labelling of the whole utterance starts with h), many h at once.

    Hypotheses are laid out (B, K): K per utterance. The state of a hypothesis h is its forward variables
    r (B, K, T+1, 2): r[..., t+1, 0] = log r^n_t(h), the paths over frames 0..t labelled h whose frame t emits
    h's last label, and r[..., t+1, 1] = log r^b_t(h), those whose frame t is a blank. Slot 0 stands for "before
    the first frame": the empty prefix starts there with probability 1, so one recursion serves every step.
    Memory: two (B, T, V) float32 tensors, ~150 MB each per 15 s utterance with the release's 100000 ids.
    Utterances that leave the batch (`select`) stay in them: `items` lists the rows still decoded.
    """

    def __init__(self, log_probs: torch.Tensor, lengths: torch.Tensor | None = None):
        self.log_probs = pad_as_blank(log_probs, lengths)  # (B0, T, V)
        self.probs = self.log_probs.exp()  # (B0, T, V), for the full-vocabulary estimate in one matmul
        self.items = torch.arange(log_probs.shape[0], device=log_probs.device)  # (B,): rows still decoded

    def select(self, items: torch.Tensor) -> "CTCPrefixScorer":
        """The scorer of these utterances only (finished ones leave a batch); nothing is copied."""
        out = copy.copy(self)
        out.items = self.items[items]
        return out

    def _at(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """x (B0, T, V) at each decoded utterance's labels (B, N), every frame: (B, T, N)."""
        T = x.shape[1]
        return x[self.items[:, None, None], torch.arange(T, device=x.device)[None, :, None], labels[:, None, :]]

    def initial_state(self, K: int) -> torch.Tensor:
        """r (B, K, T+1, 2) of the empty prefix: r^n_t = 0 (log -inf), r^b_t = y_0^blank ... y_t^blank."""
        B, T = len(self.items), self.log_probs.shape[1]
        r = torch.full((B, K, T + 1, 2), NEG_INF, device=self.log_probs.device)
        r[:, :, 0, 1] = 0.0
        r[:, :, 1:, 1] = self.log_probs[self.items, :, BLANK].cumsum(1)[:, None, :]
        return r

    @staticmethod
    def _phi(r: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Paths that may go on to a new label at frame t: (log r^n + r^b at t-1, log r^b at t-1), each (B, K, T).

        The second is for a candidate equal to h's last label: a repeat needs a blank in between.
        """
        phi = torch.logaddexp(r[..., :-1, 0], r[..., :-1, 1])  # (B, K, T): frame t reads slot t = frame t-1
        return phi, r[..., :-1, 1]

    def score(self, r: torch.Tensor, last: torch.Tensor, cand: torch.Tensor, start: int = 0):
        """
        r : (B, K, T+1, 2) states; last : (B, K) last label of each h (-1 for the empty prefix)
        cand : (B, K, M) candidate labels c; start : len(h), frames before which h + c cannot have begun
        returns the states of h + c (B, K, M, T+1, 2) and psi(h + c) (B, K, M)

        The recursion is linear in the probability domain, so each of r^n and r^b is one `_linear_scan`
        over all frames at once (r^b's from r^n's) instead of a Python loop over time.
        """
        B, K, M = cand.shape
        T = self.log_probs.shape[1]
        y = self._at(self.log_probs, cand.reshape(B, K * M))  # (B, T, K*M)
        y = y.view(B, T, K, M).permute(0, 2, 3, 1)  # (B, K, M, T): log y_t^c
        y_blank = self.log_probs[self.items, :, BLANK][:, None, None, :]  # (B, 1, 1, T)
        phi, phi_repeat = self._phi(r)
        phi = torch.where((cand == last[..., None])[..., None], phi_repeat[:, :, None], phi[:, :, None])  # (B, K, M, T)
        # psi(h + c) = sum over the frame t where c starts: (paths labelled h up to t-1) * y_t^c
        psi = torch.logsumexp(phi + y, dim=-1)  # (B, K, M)
        # r^n_t = (r^n_{t-1} + phi_{t-1}) y_t^c ;  r^b_t = (r^b_{t-1} + r^n_{t-1}) y_t^blank, from frame `start` on:
        # slots 0..start stay log 0, as h + c needs len(h) + 1 frames
        none = torch.full((B, K, M, start + 1), NEG_INF, device=r.device)
        rn = torch.cat([none, _linear_scan(phi[..., start:], y[..., start:])], -1)  # (B, K, M, T+1)
        rb = torch.cat([none, _linear_scan(rn[..., start:-1], y_blank[..., start:])], -1)
        return torch.stack([rn, rb], -1), psi

    def estimate(self, r: torch.Tensor, last: torch.Tensor) -> torch.Tensor:
        """psi(h + c) for every label c of the vocabulary at once: (B, K, V), as one matmul in the linear domain.

        exp(phi - max) @ y in float32: terms below ~1e-38 of the largest vanish, so this is for ranking
        (the pre-beam), not for the scores that are kept. The blank column is meaningless (the search
        replaces it by the end probability).
        """
        phi, phi_repeat = self._phi(r)  # (B, K, T)
        shift = phi.amax(-1, keepdim=True).clamp(min=-1e30)  # (B, K, 1); clamp keeps all -inf rows NaN-free
        weight = (phi - shift).exp()  # (B, K, T), at most 1
        # phi is concentrated near where h ends; frames where every hypothesis's weight is below e^-40 add less
        # than 1e-15 of the sum (float32 keeps ~1e-7): each utterance multiplies only its span of the others
        live = weight > math.exp(-40)  # (B, K, T)
        T = live.shape[-1]
        live = live.any(1)  # (B, T)
        lo, hi = live.int().argmax(1), T - live.flip(1).int().argmax(1)  # (B,): span [lo, hi)
        spans = torch.stack([lo, hi.masked_fill(~live.any(1), 0)], 1).tolist()
        est = torch.stack([weight[b, :, lo:hi] @ self.probs[i, lo:hi]
                           for b, (i, (lo, hi)) in enumerate(zip(self.items.tolist(), spans))])
        est = est.log() + shift  # (B, K, V)
        # a repeat of the last label may start only after a blank: its column sums r^b alone
        idx = last.clamp(min=0)  # (B, K); the empty prefix has no last label (-1)
        y_last = self._at(self.probs, idx).transpose(1, 2)  # (B, K, T)
        rep = ((phi_repeat - shift).exp() * y_last).sum(-1).log() + shift[..., 0]  # (B, K)
        keep = est.gather(2, idx[..., None])[..., 0]
        est.scatter_(2, idx[..., None], torch.where(last >= 0, rep, keep)[..., None])
        return est

    @staticmethod
    def end(r: torch.Tensor) -> torch.Tensor:
        """log P(the labelling is exactly h) = log(r^n + r^b) at the last frame: (B, K, ...)."""
        return torch.logaddexp(r[..., -1, 0], r[..., -1, 1])


def forced_align(log_probs: torch.Tensor, tokens: list[int]) -> list[tuple[int, int]] | None:
    """Viterbi alignment of tokens to frames: (T, V) log-probs -> [(first frame, last frame)] per token.

    The CTC lattice: states blank, t1, blank, t2, ..., tL, blank; a state moves on by one, or skips a blank
    between two different labels. None when the frames are too few for the tokens.
    """
    L, T = len(tokens), log_probs.shape[0]
    if L == 0:
        return []
    lp = log_probs.float().cpu()
    ext = torch.full((2 * L + 1,), BLANK, dtype=torch.long)
    ext[1::2] = torch.tensor(tokens)
    S = ext.numel()
    can_skip = torch.zeros(S, dtype=torch.bool)
    can_skip[3::2] = ext[3::2] != ext[1:-2:2]  # label -> next different label, over the blank between them
    emit = lp[:, ext]  # (T, S)
    score = torch.full((S,), NEG_INF)
    score[:2] = emit[0, :2]
    back = torch.zeros(T, S, dtype=torch.long)  # how many states back each best path came from: 0, 1 or 2
    for t in range(1, T):
        stay = score
        step = torch.cat([torch.tensor([NEG_INF]), score[:-1]])
        skip = torch.cat([torch.tensor([NEG_INF, NEG_INF]), score[:-2]]).masked_fill(~can_skip, NEG_INF)
        best, back[t] = torch.stack([stay, step, skip]).max(0)
        score = best + emit[t]
    end = S - 1 if S == 1 or score[S - 1] >= score[S - 2] else S - 2
    if score[end] == NEG_INF:
        return None
    states = [end]
    for t in range(T - 1, 0, -1):
        states.append(states[-1] - int(back[t, states[-1]]))
    states.reverse()  # state of each frame
    spans = [[T, -1] for _ in range(L)]
    for t, s in enumerate(states):
        if s % 2:  # a label state: token (s - 1) // 2 is emitted at frame t
            span = spans[(s - 1) // 2]
            span[0], span[1] = min(span[0], t), max(span[1], t)
    return [tuple(s) for s in spans]


def word_index(decode, tokens: list[int], normalize) -> list[int]:
    """The word of the normalised text each token belongs to: count the words of each decoded prefix.

    A token that only adds punctuation (a space after normalising) joins the word before it.
    """
    out = []
    for i in range(len(tokens)):
        out.append(max(0, len(normalize(decode(tokens[: i + 1])).split()) - 1))
    return out


WORD_TAIL_SECONDS = 0.12  # how far a word's end reaches past its last CTC spike (see word_times)


def word_times(words: list[str], token_words: list[int], spans, frame_seconds: float, offset: float = 0.0,
               n_frames: int | None = None, audio_end: float | None = None):
    """[{word, start, end}] in seconds from each token's frames; start/end None when no alignment exists.
    audio_end (seconds, with the offset): no time past it, as the last 40 ms frame may reach past the audio.

    A word starts at its first token's first frame. CTC marks a token with a spike of a frame or two, often
    before the sound is over, so a word's last spike ends it too early (by 0.14 s on average, measured on
    espeak-ng words of known length joined with and without pauses); its end is instead put WORD_TAIL_SECONDS
    after that spike, but never past the next word's first frame (or n_frames, the end of the audio). On those
    86 words the mean |error| of the ends falls from 0.14 s to 0.05-0.06 s; the next word's first frame alone
    (no cap) is 0.13 s late without pauses and 0.33 s with them.
    """
    out = [{"word": w, "start": None, "end": None} for w in words]
    if spans is None:
        return out
    first, last = [None] * len(words), [None] * len(words)  # frames of each word's first and last token
    for w, (a, b) in zip(token_words, spans):
        if w < len(out):
            first[w] = a if first[w] is None else min(first[w], a)
            last[w] = b if last[w] is None else max(last[w], b)
    tail = round(WORD_TAIL_SECONDS / frame_seconds)
    for w, item in enumerate(out):
        if first[w] is None:
            continue
        following = [f for f in first[w + 1:] if f is not None][:1] or ([n_frames] if n_frames else [])
        end = last[w] + 1 + tail
        end = min([end] + [f for f in following if f > last[w]])
        start, end = offset + first[w] * frame_seconds, offset + end * frame_seconds
        if audio_end is not None:
            start, end = min(start, audio_end), min(end, audio_end)
        item["start"], item["end"] = round(start, 3), round(end, 3)  # three decimals: frames are 40 ms
    return out


def frame_seconds(n_convs: int, hop_seconds: float = 0.01) -> float:
    """Seconds per encoder frame: 10 ms mel hop x 2**n_convs (0.04 s for the release's two convs)."""
    return hop_seconds * 2 ** n_convs

