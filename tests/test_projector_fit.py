"""projector_fit.py: frame targets from a CTC alignment, and the least-squares fit of the projector to them."""
import pytest
import torch

import projector_fit as PF
from decoder import Llama, LlamaConfig
from encoder import EncoderConfig
from model import ASRModel

PAD = 1


def peaky(T, V, spikes):
    """(T, V) log-probs: blank (id 0) everywhere but token t at frame f for each (f, t) in spikes."""
    logits = torch.full((T, V), -10.0)
    logits[:, 0] = 0.0
    for f, t in spikes:
        logits[f, t], logits[f, 0] = 0.0, -10.0
    return logits.log_softmax(-1)


def test_frame_targets_put_each_token_on_its_spike_and_pad_elsewhere():
    ids = PF.frame_targets(peaky(8, 6, [(2, 3), (5, 5)]), [3, 5], PAD)
    assert ids.tolist() == [PAD, PAD, 3, PAD, PAD, 5, PAD, PAD]
    # a repeated token needs a blank between its two spikes; each copy lands on its own frame
    assert PF.frame_targets(peaky(6, 6, [(1, 4), (3, 4)]), [4, 4], PAD).tolist() == [PAD, 4, PAD, 4, PAD, PAD]


def test_frame_targets_is_none_when_the_frames_are_too_few():
    assert PF.frame_targets(peaky(2, 6, [(0, 3), (1, 4)]), [3, 3, 4], PAD) is None


def small_model(seed=0):
    torch.manual_seed(seed)
    llm = Llama(LlamaConfig(vocab_size=40, dim=32, n_layers=1, n_heads=2, n_kv_heads=2, ffn_dim=64))
    return ASRModel(EncoderConfig(dim=24, n_heads=2, n_layers=1, dropout=0.0), llm, 40)


def planted(n=3000, seed=0):
    """Encoder outputs that carry their frame's token linearly (a class mean + noise), 80 % of frames <pad>."""
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(40, 24, generator=g) * 2
    ids = torch.where(torch.rand(n, generator=g) < 0.8, PAD, torch.randint(4, 40, (n,), generator=g))
    return means[ids] + 0.1 * torch.randn(n, 24, generator=g), ids


def test_fit_recovers_a_linear_code_and_is_deterministic(monkeypatch):
    H, ids = planted()
    monkeypatch.setattr(PF, "collect", lambda *a, **k: (H, ids))
    fits = []
    for seed in (0, 0):
        model = small_model(seed)
        before = model.projector.linear.weight.clone()
        r = PF.fit_projector(model, dataset=None, pad_id=PAD)
        assert not torch.equal(before, model.projector.linear.weight)
        assert r["frames"] == len(ids) and r["token_frames"] == int((ids != PAD).sum())
        assert r["token_accuracy"] > 0.95 and r["pad_accuracy"] > 0.95, r
        fits.append(model.projector.state_dict())
    for k in fits[0]:
        assert torch.equal(fits[0][k], fits[1][k]), k
    # the projected frames point at their rows: what the frozen decoder reads is the aligned token
    rows = torch.nn.functional.normalize(model.llm.tok_embeddings.weight, dim=-1)
    with torch.no_grad():
        cos = (torch.nn.functional.normalize(model.projector(H), dim=-1) * rows[ids]).sum(-1)
    assert cos.mean() > 0.8
    # the norm's gain is the rows' size: the prompt is as loud as text to the decoder
    size = model.llm.tok_embeddings.weight[ids].detach().pow(2).mean(-1).sqrt().mean()
    torch.testing.assert_close(model.projector.norm.weight.detach(), torch.full((32,), float(size)))


def test_fit_without_the_token_weight_settles_for_pad(monkeypatch):
    """The weighting is what keeps the rare token frames: unweighted and heavily regularised, the fit loses them."""
    H, ids = planted()
    H = H + 3 * torch.randn(len(H), 24, generator=torch.Generator().manual_seed(1))  # a hard, noisy code
    monkeypatch.setattr(PF, "collect", lambda *a, **k: (H, ids))
    weighted = PF.fit_projector(small_model(), None, PAD, token_weight=4.0)
    plain = PF.fit_projector(small_model(), None, PAD, token_weight=1.0)
    assert weighted["token_accuracy"] > plain["token_accuracy"]


def test_collect_aligns_real_items(tiny):
    """collect() on dataset items: one target per encoder frame of every utterance it could align."""
    model = tiny.model
    mel = torch.randn(80, 300)
    items = [dict(mel=mel, tokens=torch.tensor(tiny.tok.encode("сәлем")), index=0),
             dict(mel=mel[:, :200], tokens=torch.tensor(tiny.tok.encode("бүгін")), index=1)]
    H, ids = PF.collect(model, items, PAD, max_utts=10)
    frames = sum(int(model.encoder(it["mel"][None], torch.tensor([it["mel"].shape[1]]))[1]) for it in items)
    assert H.shape == (frames, model.encoder.cfg.dim) and ids.shape == (frames,)
    n_tokens = sum(len(it["tokens"]) for it in items)
    assert int((ids != PAD).sum()) == n_tokens  # random weights: each token still gets its one frame
