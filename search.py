"""Decoding strategies over the frozen Llama and its KV cache, one small piece each (after whisper's decoding.py).

- `DecoderState`: the decoder after the audio prompt; the beams of an utterance share its audio slots and grow
  their text as a tree in place (an ancestry mask says which slots each beam sees).
- `RepetitionPenalty`, `NoRepeatNGram`: the two logit filters of the release's decoding, computed as Hugging
  Face's RepetitionPenaltyLogitsProcessor and NoRepeatNGramLogitsProcessor do (SPEC §9).
- `reference_greedy`: SPEC §9 to the token: one utterance, no masks, greedy with the two filters, stop after
  EOS or at 256 tokens.
- `greedy_tokens`: masked, batched greedy, with the release's filters or without (train.py's validation WER);
  with them it is `reference_greedy` for many utterances at once.
- `beam_search`: beam search over the cache with length normalisation; given a `ctc.CTCPrefixScorer` it is
  one-pass joint CTC/attention decoding (Watanabe et al. 2017; Hori et al. 2017): score =
  (1 - w) log p_att(h) + w log psi_ctc(h), candidates pre-selected per hypothesis before the exact CTC scores.
Every strategy takes audio embeddings (B, T', d) from `ASRModel.encode` and returns token ids without EOS.
Not here: audio, features and text (decode.py), the CTC maths (ctc.py), long audio (longform.py), sampling.
"""
import math

import torch

from ctc import CTCPrefixScorer
from model import decoder_prompt, predicting_positions, prompt_key_mask, text_positions

EOS = 0  # <|endoftext|>: also the CTC blank (SPEC §6)


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
    unmasked maths (SPEC §1 quirk): every prompt slot is audio.
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
# the release's logit filters (SPEC §9)

class RepetitionPenalty:
    """Keskar et al. 2019, as HF applies it: over the SET of generated ids, logit < 0 -> x * p, else x / p."""

    def __init__(self, penalty: float = 1.15):
        self.penalty = penalty

    def apply(self, logits: torch.Tensor, tokens: list[int]):
        """logits (V,) in place."""
        if tokens:
            ids = torch.tensor(sorted(set(tokens)), device=logits.device)
            x = logits[ids]
            logits[ids] = torch.where(x < 0, x * self.penalty, x / self.penalty)


class NoRepeatNGram:
    """Ban every id that would complete an n-gram already present: [5, 6, 7, 5, 6] with n=3 bans 7."""

    def __init__(self, n: int = 3):
        self.n = n

    def apply(self, logits: torch.Tensor, tokens: list[int]):
        """logits (V,) in place."""
        n, L = self.n, len(tokens)
        if L < n - 1:
            return
        prefix = tokens[L - n + 1:]
        banned = [tokens[i + n - 1] for i in range(L - n + 1) if tokens[i:i + n - 1] == prefix]
        if banned:
            logits[banned] = float("-inf")


def release_filters(penalty: float = 1.15, ngram: int = 3) -> list:
    """The release's logit filters, in its order (SPEC §9)."""
    return [RepetitionPenalty(penalty), NoRepeatNGram(ngram)]


def reference_greedy(llm, audio: torch.Tensor, max_tokens: int = 256, penalty: float = 1.15,
                     ngram: int = 3) -> list[int]:
    """SPEC §9 for one utterance: audio (1, T', d) -> ids, EOS excluded, stop after EOS or at max_tokens.

    The first token is the plain argmax (no generated ids yet for the filters, as in HF); later steps apply the
    penalty, then the n-gram ban, then argmax. It is `greedy_tokens` with the release's filters, for one row.
    """
    return greedy_tokens(llm, audio, None, max_tokens, release_filters(penalty, ngram))[0]


# ---------------------------------------------------------------------------------------------------------------
# batched, masked search

@torch.no_grad()
def greedy_tokens(llm, audio: torch.Tensor, lengths: torch.Tensor | None, max_tokens: int = 256,
                  filters=()) -> list[list[int]]:
    """Greedy for a padded batch: audio (B, T', d), lengths (B,) -> ids per row, EOS excluded.

    filters: logit filters applied to each row before its argmax; `release_filters()` makes this the release's
    decoding (reference_greedy) for many utterances at once, each row as if decoded alone.
    """
    state = DecoderState(llm, audio, lengths, max_tokens)
    logits = state.prefill()  # (B, V)
    out = [[] for _ in range(audio.shape[0])]
    live = list(range(audio.shape[0]))  # the rows still in the batch, as indices into out
    for i in range(max_tokens):
        for f in filters:
            for j, u in enumerate(live):
                f.apply(logits[j], out[u])  # in place, on row j's view
        tokens = logits.argmax(-1)  # (B_live,)
        ids = tokens.tolist()
        going = [j for j, t in enumerate(ids) if t != EOS]
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
    """Masked batched greedy from log-mels (B, 80, T), lengths (B,): ids per item, EOS excluded (validation WER)."""
    _, audio, enc_lengths = model.encode(mel, lengths)
    return greedy_tokens(model.llm, audio, enc_lengths, max_tokens)


def _mix(att: torch.Tensor, ctc: torch.Tensor, w: float) -> torch.Tensor:
    """(1 - w) att + w ctc, without 0 * -inf = nan at the ends."""
    return att if w == 0 else ctc if w == 1 else (1 - w) * att + w * ctc


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
def beam_search(llm, audio: torch.Tensor, lengths: torch.Tensor, beam: int = 4, max_tokens: int = 256,
                length_penalty: float = 1.0, ctc: CTCPrefixScorer | None = None, ctc_weight: float = 0.3,
                pre_beam: float = 1.5) -> list[list[int]]:
    """Beam search over the KV cache for a padded batch; joint CTC/attention when `ctc` is given.

    audio (B, T', d), lengths (B,) encoder frames. An utterance gets at most min(max_tokens, lengths[b]) tokens
    (CTC cannot emit more labels than frames; this also bounds silence). As whisper's BeamSearchDecoder: each
    step walks the candidates best first, EOS ones join the finished list, the first `beam` others live on;
    an utterance is done once `beam` hypotheses have finished, and then leaves the batch. Without CTC each
    hypothesis offers its top beam + 1 tokens; with it, its top ceil(pre_beam * beam) by (1 - w) log p_att +
    w (a CTC estimate over the whole vocabulary, CTCPrefixScorer.estimate), which are then scored exactly.
    EOS is scored with the CTC probability that the labelling is exactly the hypothesis.
    """
    B, K, dev, inf = audio.shape[0], beam, audio.device, float("-inf")
    w = ctc_weight if ctc is not None else 0.0
    M = max(K + 1, math.ceil(pre_beam * K)) if ctc is not None else K + 1  # candidates per hypothesis
    limit = lengths.clamp(max=max_tokens).tolist()
    finished = [Finished(K, length_penalty) for _ in range(B)]
    live = list(range(B))  # the utterances still in the batch, as indices into finished / limit
    state = DecoderState(llm, audio, lengths, max_tokens, group=K)  # K rows per utterance, sharing its audio
    logits = state.prefill().repeat_interleave(K, 0)  # (B*K, V)
    score = torch.full((B, K), inf, device=dev)  # joint score of each row's hypothesis; -inf: row unused
    score[:, 0] = 0.0  # the K rows start as copies: only the first may expand at the first step
    att = torch.zeros(B, K, device=dev)  # attention log-prob of each row's hypothesis
    last = torch.full((B, K), -1, dtype=torch.long, device=dev)  # last token; -1 for the empty prefix
    r = ctc.initial_state(K) if ctc is not None else None  # (B, K, T'+1, 2) CTC forward variables
    tokens = [[] for _ in range(B * K)]
    for step in range(max_tokens + 1):
        B = len(live)
        logits = logits.float().view(B, K, -1)  # (B, K, V)
        # log p_att(h + c) = att(h) + logits_c - logsumexp(logits): within a hypothesis, logits rank the
        # candidates alike, so the log-softmax is computed at the chosen ones only
        if ctc is None:
            cand = logits.topk(M, dim=-1).indices  # (B, K, M)
        else:
            est = ctc.estimate(r, last)  # (B, K, V)
            est[..., EOS] = ctc.end(r)  # ending here: the CTC probability of exactly h
            cand = (logits if w == 0 else torch.add(est, logits, alpha=(1 - w) / w)).topk(M, dim=-1).indices
            # the pre-beam: ranked as (1 - w) logits + w est, in one pass over the vocabulary
        new_att = att[..., None] + logits.gather(2, cand) - logits.logsumexp(-1, keepdim=True)  # (B, K, M)
        if ctc is None:
            joint = new_att
        else:
            r_cand, psi = ctc.score(r, last, cand, start=step)  # (B, K, M, T'+1, 2), (B, K, M)
            psi = torch.where(cand == EOS, ctc.end(r)[..., None], psi)
            joint = _mix(new_att, psi, w)
        joint = joint.masked_fill((score == inf)[..., None], inf)  # (B, K, M)
        joint_cpu, cand_cpu, score_cpu = joint.cpu(), cand.cpu(), score.cpu()  # the walk reads them one by one
        picks, filled, going = [], [], []  # per new row: flat index into (B, K, M), whether it holds a hypothesis
        for b, u in enumerate(live):
            alive = _walk(b, joint_cpu, cand_cpu, tokens, finished[u], step, step < limit[u])
            if step == limit[u]:  # out of tokens: the rows finish as they are
                for k in range(K):
                    if score_cpu[b, k] > inf:
                        finished[u].add(tokens[b * K + k], float(score_cpu[b, k]), step)
            if alive and not finished[u].full:
                going.append(b)
                picks += alive + [(b * K + k) * M for k in range(len(alive), K)]  # unused rows stay put
                filled += [True] * len(alive) + [False] * (K - len(alive))
        if not going:
            break
        src = torch.tensor(picks, device=dev)  # (B'*K,): new row i continues candidate src[i]
        rows = src // M  # the row (hypothesis) each new row continues
        new_tokens = cand.flatten()[src]  # (B'*K,)
        score = joint.flatten()[src].masked_fill(~torch.tensor(filled, device=dev), inf).view(-1, K)
        att, last = new_att.flatten()[src].view(-1, K), new_tokens.view(-1, K)
        if ctc is not None:
            r = r_cand.flatten(0, 2)[src].view(-1, K, *r.shape[2:])
        tokens = [tokens[row] + [c] for row, c in zip(rows.tolist(), new_tokens.tolist())]
        if len(going) < B:  # finished utterances leave the batch: every slot of the rows that stay is copied
            state.select(rows)
            if ctc is not None:
                ctc = ctc.select(torch.tensor(going, device=dev))
            live = [live[b] for b in going]
        else:
            state.reorder(rows)
        logits = state.step(new_tokens)
    return [f.best() for f in finished]


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
