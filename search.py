"""Decoding strategies over the frozen Llama and its KV cache, one small piece each (after whisper's decoding.py
and ESPnet's scorers).

- `DecoderState`: the decoder after the prompt (model.decoder_prompt); the beams of an utterance share its audio
  slots and grow their text as a tree in place (an ancestry mask says which slots each beam sees).
- logit filters, `apply(logits (B, V), tokens)`: `RepetitionPenalty` and `NoRepeatNGram` are the release's two,
  computed as Hugging Face's RepetitionPenaltyLogitsProcessor and NoRepeatNGramLogitsProcessor do (recipe §9);
  `logit_filters` builds the ones decode.py's flags ask for. Greedy, beam and joint search all apply them.
- `greedy_tokens`: masked, batched greedy; with `release_filters()` it is the release's decoding
  (`reference_greedy`: recipe §9 to the token) for many utterances at once.
- `beam_search` over a list of weighted scorers: `DecoderScorer` (log p_att) alone is attention beam search;
  with a `CTCScorer` (log psi_ctc, ctc.CTCPrefixScorer) it is one-pass joint CTC/attention decoding (Watanabe et
  al. 2017; Hori et al. 2017): score = (1 - w) log p_att(h) + w log psi_ctc(h).
Every strategy takes audio embeddings (B, T', d) from `ASRModel.encode` and returns token ids without EOS.
Not here: audio, features and text (decode.py), the CTC maths (ctc.py), long audio (longform.py), sampling.
"""
import math

import torch

from ctc import CTCPrefixScorer
from model import decoder_prompt, predicting_positions, prompt_key_mask, text_positions
from tokenizer import EOS_ID

EOS = EOS_ID  # <|endoftext|>: also the CTC blank (recipe §6)


# ---------------------------------------------------------------------------------------------------------------
# the decoder with its cache

class DecoderState:
    """The frozen Llama after an audio prompt: its KV cache, each row's RoPE position, the groups of rows.

    Rows come in groups of R that share one utterance's audio (the R beams of beam search; R = 1 for greedy).
    The cache has one row per group: the audio fills slots [0, T'), run once (`prefill`), and the text of
    the group's rows interleaves after it, step i of row r at slot T' + i*R + r. One step is then one
    decoder call with the R rows of a group as R query positions: each group's audio keys/values are read
    once per step for all its rows, and kept in memory once. Text slots never move: when beam search
    reorders its hypotheses, a row only changes which slots it sees (its ancestors: at each earlier step,
    the slot of the hypothesis it grew from), so the group's text is a tree kept in place, not copied.
    Groups are right-padded: group b's audio fills slots [0, lengths[b]) (the rest is masked) and its text
    continues at RoPE position lengths[b] + i, exactly as if it were alone. lengths=None is the original's
    unmasked maths (recipe §1 quirk): every prompt slot is audio.
    """

    def __init__(self, llm, audio: torch.Tensor, lengths: torch.Tensor | None = None, max_new: int = 256,
                 group: int = 1):
        x, lengths = decoder_prompt(llm, audio, lengths)  # the prompt training reads too (model.py)
        B, T, _ = x.shape  # (B, P, d)
        self.llm, self.x, self.lengths, self.prompt, self.group = llm, x, lengths, T, group
        self.caches = llm.new_caches(B, T + group * (max_new + 1), x.device, x.dtype)
        self.steps = 0  # text tokens fed so far (per row)
        self.ancestors = torch.zeros(B, group, 0, dtype=torch.long, device=x.device)  # (G, R, steps)
        self.prompt_mask = None
        if lengths is not None and bool((lengths < T).any()):
            self.prompt_mask = prompt_key_mask(lengths, T)  # (B, P)

    @torch.no_grad()
    def prefill(self) -> torch.Tensor:
        """Run the prompt, in runs of similar length; logits (B, V) at each group's last prompt slot."""
        B, T, _ = self.x.shape
        runs = [None] if self.prompt_mask is None else length_runs(self.lengths)
        if len(runs) == 1:
            hidden = self.llm(self.x, 0, self.caches, key_mask=self.prompt_mask)  # (B, P, d)
            last = hidden[torch.arange(B), predicting_positions(self.lengths, T, 0, B)[:, 0]]  # (B, d)
            return self.llm.logits(last[:, None])[:, 0]
        last = self.x.new_empty(B, self.x.shape[-1])  # (B, d)
        for rows in runs:  # each run padded only to its own longest: padding is compute thrown away
            n, lengths = int(self.lengths[rows].max()), self.lengths[rows]
            caches = self.llm.new_caches(len(rows), n, self.x.device, self.x.dtype)
            mask = self.prompt_mask[rows, :n] if bool((lengths < n).any()) else None
            hidden = self.llm(self.x[rows, :n], 0, caches, key_mask=mask)  # (b, n, d)
            for big, small in zip(self.caches, caches):
                big.k[rows, :, :n], big.v[rows, :, :n] = small.k, small.v
            last[rows] = hidden[torch.arange(len(rows)), predicting_positions(lengths, n, 0)[:, 0]]
        return self.llm.logits(last[:, None])[:, 0]

    @torch.no_grad()
    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """Feed one token per row (G*R,), rows in group order; logits (G*R, V) for the next."""
        R, T = self.group, self.prompt
        G = tokens.shape[0] // R
        x = self.llm.embed(tokens.view(G, R))  # (G, R, d): a group's rows as R query positions
        start = T + self.steps * R
        mask = positions = None  # one row per group, unpadded: plain causal decoding, RoPE position = slot
        if R > 1 or self.prompt_mask is not None:
            mask = torch.ones(G, 1, R, start + R, dtype=torch.bool, device=x.device)  # (G, 1, R, S)
            if self.prompt_mask is not None:
                mask[:, 0, :, :T] = self.prompt_mask[:, None, :]
            if R > 1:  # text slot T + i*R + r' is seen by row r iff r' is r's ancestor at step i
                own = torch.arange(R, device=x.device)
                self.ancestors = torch.cat([self.ancestors, own.expand(G, R)[..., None]], -1)  # now: own slot
                mask[:, 0, :, T:] = (self.ancestors[..., None] == own).flatten(2)  # (G, R, (steps+1)*R)
            positions = text_positions(self.lengths, T, 1, self.steps, G).expand(G, R)  # (G, R)
        hidden = self.llm(x, start, self.caches, positions=positions, attn_mask=mask)  # (G, R, d)
        self.steps += 1
        return self.llm.logits(hidden).flatten(0, 1)  # (G*R, V)

    def select(self, rows: torch.Tensor):
        """Keep these rows, in this order, whole groups only: new row i continues old row rows[i]."""
        groups = rows[::self.group] // self.group  # each run of R new rows comes from one old group
        used = self.prompt + self.steps * self.group  # slots written so far: only they are copied
        for c in self.caches:
            for name in ("k", "v"):
                old = getattr(c, name)
                new = old.new_empty(len(groups), *old.shape[1:])
                new[:, :, :used] = old[groups, :, :used]
                setattr(c, name, new)
        if self.lengths is not None:
            self.lengths = self.lengths[groups]
        if self.prompt_mask is not None:
            self.prompt_mask = self.prompt_mask[groups]
        self.ancestors = self.ancestors.flatten(0, 1)[rows].view(len(groups), self.group, -1)

    def reorder(self, rows: torch.Tensor):
        """Row i now continues the hypothesis that was row rows[i] of the same group: it takes that row's
        ancestors (nothing in the cache moves)."""
        self.ancestors = self.ancestors.flatten(0, 1)[rows].view_as(self.ancestors)


def length_runs(lengths: torch.Tensor, slack: float = 1.25) -> list[torch.Tensor]:
    """Indices of the items (B,) in runs of similar length, shortest first: a run ends before an item longer than
    `slack` times the run's shortest. Run separately, compute-bound work (encoder, prefill) pads little; on a
    CPU one big padded batch gains nothing over them."""
    order, runs = lengths.argsort(stable=True).tolist(), []
    for i in order:
        if not runs or lengths[i] > slack * lengths[runs[-1][0]]:
            runs.append([])
        runs[-1].append(i)
    return [torch.tensor(r, device=lengths.device) for r in runs]


# ---------------------------------------------------------------------------------------------------------------
# logit filters: one small class per rule, `apply(logits (B, V), tokens)` in place, where tokens[b] are the ids
# row b has generated so far. Greedy, beam and joint search all run them on the decoder's logits before they
# are ranked, so a rule added here (and to `logit_filters`) holds in every mode.

class RepetitionPenalty:
    """Keskar et al. 2019, as HF applies it: over the SET of generated ids, logit < 0 -> x * p, else x / p."""

    def __init__(self, penalty: float = 1.15):
        self.penalty = penalty

    def apply(self, logits: torch.Tensor, tokens: list[list[int]]):
        """logits (B, V) in place; tokens[b]: row b's ids so far."""
        seen = [(b, t) for b, ids in enumerate(tokens) for t in sorted(set(ids))]
        if seen:
            rows, ids = torch.tensor(seen, device=logits.device).T
            x = logits[rows, ids]
            logits[rows, ids] = torch.where(x < 0, x * self.penalty, x / self.penalty)


class NoRepeatNGram:
    """Ban every id that would complete an n-gram already present: [5, 6, 7, 5, 6] with n=3 bans 7."""

    def __init__(self, n: int = 3):
        self.n = n

    def banned(self, tokens: list[int]) -> list[int]:
        n, L = self.n, len(tokens)
        prefix = tokens[L - n + 1:]
        return [tokens[i + n - 1] for i in range(L - n + 1) if tokens[i:i + n - 1] == prefix] if L >= n - 1 else []

    def apply(self, logits: torch.Tensor, tokens: list[list[int]]):
        """logits (B, V) in place; tokens[b]: row b's ids so far."""
        bans = [(b, t) for b, ids in enumerate(tokens) for t in self.banned(ids)]
        if bans:
            rows, ids = torch.tensor(bans, device=logits.device).T
            logits[rows, ids] = float("-inf")


def release_filters(penalty: float = 1.15, ngram: int = 3) -> list:
    """The release's logit filters, in its order (recipe §9)."""
    return [RepetitionPenalty(penalty), NoRepeatNGram(ngram)]


def logit_filters(repetition_penalty: float = 1.0, no_repeat_ngram: int = 0) -> list:
    """The filters decode.py's flags ask for, in the order they apply (1.0 and 0: off)."""
    filters = []
    if repetition_penalty != 1.0:
        filters.append(RepetitionPenalty(repetition_penalty))
    if no_repeat_ngram > 0:
        filters.append(NoRepeatNGram(no_repeat_ngram))
    return filters


def reference_greedy(llm, audio: torch.Tensor, max_tokens: int = 256, penalty: float = 1.15,
                     ngram: int = 3) -> list[int]:
    """recipe §9 for one utterance: audio (1, T', d) -> ids, EOS excluded, stop after EOS or at max_tokens.

    The first token is the plain argmax (no generated ids yet for the filters, as in HF); later steps apply the
    penalty, then the n-gram ban, then argmax. It is `greedy_tokens` with the release's filters, for one row.
    """
    return greedy_tokens(llm, audio, None, max_tokens, release_filters(penalty, ngram))[0]


# ---------------------------------------------------------------------------------------------------------------
# greedy

@torch.no_grad()
def greedy_tokens(llm, audio: torch.Tensor, lengths: torch.Tensor | None, max_tokens: int = 256,
                  filters=(), frame_bound: bool = False) -> list[list[int]]:
    """Greedy for a padded batch: audio (B, T', d), lengths (B,) -> ids per row, EOS excluded.

    filters: logit filters applied to each row before its argmax; `release_filters()` makes this the release's
    decoding (reference_greedy) for many utterances at once, each row as if decoded alone. frame_bound: a row gets
    at most min(max_tokens, lengths[b]) tokens, one an encoder frame, as in beam_search; off: max_tokens for all,
    as the release.
    """
    state = DecoderState(llm, audio, lengths, max_tokens)
    limits = lengths.clamp(max=max_tokens).tolist() if frame_bound else None
    logits = state.prefill()  # (B, V)
    out = [[] for _ in range(audio.shape[0])]
    live = list(range(audio.shape[0]))  # the rows still in the batch, as indices into out
    for i in range(max_tokens):
        for f in filters:
            f.apply(logits, [out[u] for u in live])
        tokens = logits.argmax(-1)  # (B_live,)
        ids = tokens.tolist()
        going = [j for j, t in enumerate(ids) if t != EOS and (limits is None or i < limits[live[j]])]
        if not going:
            break
        for j in going:
            out[live[j]].append(ids[j])
        if i + 1 == max_tokens:
            break
        if len(going) < len(live):  # finished rows leave the batch: they would only cost time
            keep = torch.tensor(going, device=audio.device)
            state.select(keep)
            tokens, live = tokens[keep], [live[j] for j in going]
        logits = state.step(tokens)
    return out


@torch.no_grad()
def greedy_batch(model, mel: torch.Tensor, lengths: torch.Tensor, max_tokens: int = 256) -> list[list[int]]:
    """Masked batched greedy from log-mels (B, 80, T), lengths (B,): ids per item, EOS excluded (validation WER);
    at most one token an encoder frame, as decode.py's greedy."""
    _, audio, enc_lengths = model.encode(mel, lengths)
    return greedy_tokens(model.llm, audio, enc_lengths, max_tokens, frame_bound=True)


# ---------------------------------------------------------------------------------------------------------------
# the scorers of beam search (ESPnet's design): each keeps the state of K hypotheses per utterance, laid out
# (B, K), and offers
#   start(K, max_tokens)             the empty hypotheses
#   rank() -> (B, K, V)              a score of every next token, to pick candidates (the pre-beam)
#   score(cand (B, K, M)) -> (B,K,M) the score of each hypothesis + candidate, EOS included
#   advance(src, tokens, hyps, kept) continue the chosen candidates: src (B'*K,) indexes the flattened (B, K, M),
#                                    tokens (B'*K,) their ids, hyps the new rows' ids so far, kept the utterances
#                                    still searched (None: all)
# A `partial` scorer scores only the pre-beam's candidates, so more of them are offered (ESPnet's PartialScorer).

class DecoderScorer:
    """log p_att(h) from the frozen Llama over its KV cache (DecoderState: the K rows of an utterance share its
    audio), with logit filters applied to every row's next-token logits first."""
    partial = False

    def __init__(self, llm, audio: torch.Tensor, lengths: torch.Tensor, weight: float = 1.0, filters=()):
        self.llm, self.audio, self.lengths, self.weight, self.filters = llm, audio, lengths, weight, list(filters)

    def start(self, K: int, max_tokens: int):
        B = self.audio.shape[0]
        self.state = DecoderState(self.llm, self.audio, self.lengths, max_tokens, group=K)  # K rows an utterance
        self._next(self.state.prefill().repeat_interleave(K, 0), [[] for _ in range(B * K)])  # copies at first
        self.att = torch.zeros(B, K, device=self.audio.device)  # log p_att of each row's hypothesis

    def _next(self, logits: torch.Tensor, hyps: list[list[int]]):
        for f in self.filters:
            f.apply(logits, hyps)
        self.logits = logits.float().view(-1, self.state.group, logits.shape[-1])  # (B, K, V)

    def rank(self) -> torch.Tensor:
        # within a hypothesis the logits rank candidates as its log-softmax does: the softmax is left to `score`
        return self.logits

    def score(self, cand: torch.Tensor) -> torch.Tensor:
        """log p_att(h + c) = log p_att(h) + logits_c - logsumexp(logits), only at the candidates."""
        self.new = self.att[..., None] + self.logits.gather(2, cand) - self.logits.logsumexp(-1, keepdim=True)
        return self.new

    def advance(self, src, tokens, hyps, kept):
        rows = src // self.new.shape[-1]  # the row (hypothesis) each new row continues
        self.att = self.new.flatten()[src].view(-1, self.state.group)
        if kept is not None:  # finished utterances leave the batch: every slot of the rows that stay is copied
            self.state.select(rows)
        else:  # the same utterances: rows only change which text slots they see
            self.state.reorder(rows)
        self._next(self.state.step(tokens), hyps)


class CTCScorer:
    """log psi_ctc(h), the CTC prefix score (ctc.CTCPrefixScorer; Watanabe et al. 2017): a whole-vocabulary
    estimate for the pre-beam, exact scores for the candidates; EOS scores the CTC probability of exactly h."""
    partial = True

    def __init__(self, ctc: CTCPrefixScorer, weight: float = 0.5):
        self.ctc, self.weight = ctc, weight

    def start(self, K: int, max_tokens: int):
        self.r = self.ctc.initial_state(K)  # (B, K, T'+1, 2) forward variables
        self.last = torch.full(self.r.shape[:2], -1, dtype=torch.long, device=self.r.device)  # -1: empty prefix
        self.steps = 0  # tokens in every hypothesis

    def rank(self) -> torch.Tensor:
        est = self.ctc.estimate(self.r, self.last)  # (B, K, V)
        est[..., EOS] = self.ctc.end(self.r)  # ending here: the CTC probability of exactly h
        return est

    def score(self, cand: torch.Tensor) -> torch.Tensor:
        self.r_cand, psi = self.ctc.score(self.r, self.last, cand, start=self.steps)  # (B, K, M, T'+1, 2), (B, K, M)
        return torch.where(cand == EOS, self.ctc.end(self.r)[..., None], psi)

    def advance(self, src, tokens, hyps, kept):
        K = self.r.shape[1]
        self.r = self.r_cand.flatten(0, 2)[src].view(-1, K, *self.r.shape[2:])
        self.last, self.steps = tokens.view(-1, K), self.steps + 1
        if kept is not None:
            self.ctc = self.ctc.select(kept)


# ---------------------------------------------------------------------------------------------------------------
# beam search over weighted scorers

def _weighted(scorers, values) -> torch.Tensor:
    """sum of weight * value over the scorers of nonzero weight (no 0 * -inf = nan)."""
    return sum(s.weight * v for s, v in zip(scorers, values) if s.weight != 0)


class Finished:
    """The finished hypotheses of one utterance (at most `size`); the best has the highest score / length**alpha."""

    def __init__(self, size: int, alpha: float):
        self.size, self.alpha, self.items = size, alpha, []

    def add(self, tokens: list[int], score: float, n_scored: int):
        if len(self.items) < self.size:
            self.items.append((score / max(1, n_scored) ** self.alpha, tokens))

    @property
    def full(self) -> bool:
        return len(self.items) >= self.size

    def best(self) -> list[int]:
        return max(self.items, key=lambda it: it[0])[1] if self.items else []


@torch.no_grad()
def beam_search(scorers: list, lengths: torch.Tensor, beam: int = 4, max_tokens: int = 256,
                length_penalty: float = 1.0, pre_beam: float = 1.5) -> list[list[int]]:
    """Beam search for a batch of B utterances over the sum of weighted scorers' scores.

    [DecoderScorer] is attention beam search; [DecoderScorer (1 - w), CTCScorer (w)] is one-pass joint
    CTC/attention decoding (Watanabe et al. 2017; Hori et al. 2017): score = (1 - w) log p_att + w log psi_ctc.
    lengths (B,) encoder frames: an utterance gets at most min(max_tokens, lengths[b]) tokens (CTC cannot emit
    more labels than frames; this also bounds silence). As whisper's BeamSearchDecoder: each step walks the
    candidates best first, EOS ones join the finished list, the first `beam` others live on; an utterance is
    done once `beam` hypotheses have finished, and then leaves the batch. Each hypothesis offers its top beam + 1
    tokens by the weighted ranks; with a partial scorer its top ceil(pre_beam * beam), scored exactly after.
    """
    B, K, dev, inf = len(lengths), beam, lengths.device, float("-inf")
    M = max(K + 1, math.ceil(pre_beam * K)) if any(s.partial for s in scorers) else K + 1  # candidates each
    limit = lengths.clamp(max=max_tokens).tolist()
    finished = [Finished(K, length_penalty) for _ in range(B)]
    live = list(range(B))  # the utterances still in the batch, as indices into finished / limit
    for s in scorers:
        s.start(K, max_tokens)
    score = torch.full((B, K), inf, device=dev)  # joint score of each row's hypothesis; -inf: row unused
    score[:, 0] = 0.0  # the K rows start as copies: only the first may expand at the first step
    tokens = [[] for _ in range(B * K)]
    for step in range(max_tokens + 1):
        ranks = [s.rank() if s.weight != 0 else None for s in scorers]
        cand = _weighted(scorers, ranks).topk(M, dim=-1).indices  # (B, K, M)
        scores = [s.score(cand) for s in scorers]  # every scorer keeps its candidates' states, weighted or not
        joint = _weighted(scorers, scores).masked_fill((score == inf)[..., None], inf)  # (B, K, M)
        picks, filled, going = _choose(joint, cand, score, tokens, [finished[u] for u in live],
                                       [limit[u] for u in live], step)
        if not going:
            break
        src = torch.tensor(picks, device=dev)  # (B'*K,): new row i continues candidate src[i]
        new_tokens = cand.flatten()[src]  # (B'*K,)
        score = joint.flatten()[src].masked_fill(~torch.tensor(filled, device=dev), inf).view(-1, K)
        tokens = [tokens[row] + [c] for row, c in zip((src // M).tolist(), new_tokens.tolist())]
        kept = torch.tensor(going, device=dev) if len(going) < len(live) else None
        for s in scorers:
            s.advance(src, new_tokens, tokens, kept)
        live = [live[b] for b in going]
    return [f.best() for f in finished]


def _choose(joint, cand, score, tokens, finished: list[Finished], limit: list[int], step: int):
    """One step's survivors: per new row, a flat index into joint (B, K, M) and whether it holds a hypothesis,
    and the utterances that go on. Rows out of tokens finish as they are; unused rows stay put."""
    B, K, M = joint.shape
    joint_cpu, cand_cpu, score_cpu = joint.cpu(), cand.cpu(), score.cpu()  # the walk reads them one by one
    picks, filled, going = [], [], []
    for b in range(B):
        alive = _walk(b, joint_cpu, cand_cpu, tokens, finished[b], step, step < limit[b])
        if step == limit[b]:  # out of tokens: the rows finish as they are
            for k in range(K):
                if score_cpu[b, k] > float("-inf"):
                    finished[b].add(tokens[b * K + k], float(score_cpu[b, k]), step)
        if alive and not finished[b].full:
            going.append(b)
            picks += alive + [(b * K + k) * M for k in range(len(alive), K)]
            filled += [True] * len(alive) + [False] * (K - len(alive))
    return picks, filled, going


def _walk(b: int, joint, cand, tokens, finished: Finished, step: int, may_grow: bool) -> list[int]:
    """Candidates of utterance b best first: EOS ones finish, the first K others (if may_grow) live on.

    Returns flat indices into (B, K, M) of the survivors.
    """
    _, K, M = joint.shape
    flat = joint[b].flatten()  # (K*M,)
    alive = []
    for i in flat.argsort(descending=True).tolist():
        if flat[i] == float("-inf") or len(alive) == K:
            break
        k = i // M
        if int(cand[b, k, i % M]) == EOS:
            finished.add(tokens[b * K + k], float(flat[i]), step + 1)
        elif may_grow:
            alive.append(b * K * M + i)
    return alive
