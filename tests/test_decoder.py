"""decoder.py against transformers' LlamaForCausalLM (the independent reference), on tiny random Llamas."""
import json
import os

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from decoder import Llama, LlamaConfig, load_llama, save_llama



def hf():
    """transformers, the dev-only reference (requirements-dev.txt): without it only the tests that use it skip."""
    return pytest.importorskip("transformers")


def randomise(model, seed=0):
    """Weights large enough that RoPE, masks and norms visibly change the logits (HF's 0.02 init hides them)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(torch.rand(p.shape, generator=g) + 0.5)
            else:
                p.copy_(torch.randn(p.shape, generator=g) * 0.15)
    return model


def hf_llama(folder, tie=True, kv_heads=4, theta=10000.0, vocab=300, **save_kwargs):
    """A tiny random transformers Llama saved to folder; returns the HF model (eager attention, eval mode)."""
    cfg = hf().LlamaConfig(
        vocab_size=vocab, hidden_size=64, intermediate_size=160, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=kv_heads, rms_norm_eps=1e-6, rope_theta=theta, tie_word_embeddings=tie,
        max_position_embeddings=128, bos_token_id=0, eos_token_id=0, pad_token_id=1)
    torch.manual_seed(0)
    model = randomise(hf().LlamaForCausalLM(cfg)).eval()
    model.config._attn_implementation = "eager"  # softmax written out: the more independent reference
    model.save_pretrained(folder, **save_kwargs)
    return model


def tiny_config(**kw):
    return LlamaConfig(**{"vocab_size": 300, "dim": 64, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2,
                          "ffn_dim": 160, "max_seq_len": 128, **kw})


def tiny_llama(seed=0, **kw):
    torch.manual_seed(seed)
    return randomise(Llama(tiny_config(**kw)), seed).eval()


@pytest.mark.parametrize("tie,kv_heads,theta", [(True, 4, 10000.0), (False, 2, 500000.0), (True, 2, 500000.0)])
def test_logits_match_transformers(tmp_path, tie, kv_heads, theta):
    ref = hf_llama(tmp_path, tie, kv_heads, theta)
    ours = load_llama(tmp_path)
    assert ours.config.tie_embeddings == tie and ours.config.n_kv_heads == kv_heads and ours.config.rope_theta == theta
    x = torch.randn(2, 20, 64)
    with torch.no_grad():
        want = ref(inputs_embeds=x).logits
        got = ours.logits(ours(x))
    assert got.dtype == torch.float32 and got.shape == (2, 20, 300)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    ids = torch.randint(0, 300, (2, 7))
    torch.testing.assert_close(ours.embed(ids), ref.get_input_embeddings()(ids))


def test_sharded_checkpoint_loads(tmp_path):
    ref = hf_llama(tmp_path, tie=False, max_shard_size="60KB")
    assert os.path.exists(tmp_path / "model.safetensors.index.json") and not os.path.exists(tmp_path / "model.safetensors")
    ours = load_llama(tmp_path)
    x = torch.randn(1, 9, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours.logits(ours(x)), ref(inputs_embeds=x).logits, atol=1e-4, rtol=1e-4)


def test_kv_cache_matches_full_forward():
    model = tiny_llama()
    x = torch.randn(2, 12, 64)
    with torch.no_grad():
        full = model.logits(model(x))
        caches = model.new_caches(2, 16, device="cpu")
        steps = [model.logits(model(x[:, :4], 0, caches)),  # prefill
                 model.logits(model(x[:, 4:7], 4, caches))]  # a chunk after the prefix: explicit causal mask
        steps += [model.logits(model(x[:, t:t + 1], t, caches)) for t in range(7, 12)]  # one token at a time
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=1e-5)


def test_padded_batch_matches_each_item_alone():
    model = tiny_llama()
    a, b = torch.randn(1, 5, 64), torch.randn(1, 8, 64)
    batch = torch.cat([torch.cat([a, torch.randn(1, 3, 64)], 1), b])  # a right-padded with junk
    key_mask = torch.tensor([[True] * 5 + [False] * 3, [True] * 8])
    step = torch.randn(2, 1, 64)  # the next input of each item
    with torch.no_grad():
        caches = model.new_caches(2, 10)
        out = model.logits(model(batch, 0, caches, key_mask=key_mask))
        # a's next token sits in slot 8 but at RoPE position 5, right after its true length
        nxt = model.logits(model(step, 8, caches, positions=torch.tensor([[5], [8]]),
                                 key_mask=torch.cat([key_mask, torch.ones(2, 1, dtype=torch.bool)], 1)))
        alone_a = model.logits(model(torch.cat([a, step[:1]], 1)))
        alone_b = model.logits(model(torch.cat([b, step[1:]], 1)))
    torch.testing.assert_close(out[0, :5], alone_a[0, :5], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out[1], alone_b[0, :8], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(nxt[0, 0], alone_a[0, 5], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(nxt[1, 0], alone_b[0, 8], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(nxt[0, 0], alone_a[0, 4], atol=1e-3)  # the step really moved on


@pytest.mark.parametrize("tie", [True, False])
def test_extend_vocab_frozen_reproduces_mean_rows(tie):
    model = tiny_llama(tie_embeddings=tie).freeze()
    model.extend_vocab(450, trainable=False)
    assert model.vocab_size == 450 and model.config.vocab_size == 300
    mean = model.tok_embeddings.weight.mean(0)
    torch.testing.assert_close(model.embed(torch.tensor([[300, 449, 7]]))[0],
                               torch.stack([mean, mean, model.tok_embeddings.weight[7]]))
    if not tie:
        torch.testing.assert_close(model.output_new_rows, model.output.weight.mean(0).expand(150, -1))
    with torch.no_grad():
        logits = model.logits(model(torch.randn(1, 6, 64)))  # (1, 6, 450)
    assert logits.shape == (1, 6, 450)
    new = logits[..., 300:]
    torch.testing.assert_close(new, new[..., :1].expand_as(new))  # the release cannot tell these ids apart
    assert not torch.allclose(logits[..., :300], logits[..., :1].expand(1, 6, 300))
    assert not any(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize("tie", [True, False])
@torch.no_grad()
def test_repeated_rows_scored_once_equal_the_full_matmul_and_see_changes(tie):
    model = tiny_llama(tie_embeddings=tie).freeze()
    model.extend_vocab(450, trainable=False)
    h = model(torch.randn(2, 3, 64))
    full = lambda: torch.cat([model.logits(h)[..., :300], F.linear(h, model.new_rows if tie else
                                                                       model.output_new_rows)], -1)
    assert model._one_row_repeated(model.new_rows if tie else model.output_new_rows)
    torch.testing.assert_close(model.logits(h), full(), atol=1e-6, rtol=1e-6)
    rows = model.new_rows if tie else model.output_new_rows
    rows[7] += 1.0  # an in-place change: the rows are no longer one row repeated
    assert not model._one_row_repeated(rows)
    torch.testing.assert_close(model.logits(h), full(), atol=1e-6, rtol=1e-6)
    assert not torch.allclose(model.logits(h)[..., 307], model.logits(h)[..., 306])


@pytest.mark.parametrize("tie", [True, False])
def test_extend_vocab_trainable_moves_only_new_rows(tie):
    model = tiny_llama(tie_embeddings=tie).freeze()
    model.extend_vocab(400, trainable=True)
    ids = torch.tensor([[3, 350, 399, 10]])
    logits = model.logits(model(model.embed(ids)))
    torch.nn.functional.cross_entropy(logits[0], torch.tensor([350, 5, 120, 380])).backward()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == ({"new_rows"} if tie else {"new_rows", "output_new_rows"})
    assert model.new_rows.grad is not None and model.new_rows.grad.abs().sum() > 0
    assert all(p.grad is None for n, p in model.named_parameters() if n not in trainable)


def test_frozen_yet_differentiable_wrt_inputs(tmp_path):
    hf_llama(tmp_path)
    model = load_llama(tmp_path)
    assert not any(p.requires_grad for p in model.parameters())
    x = torch.randn(1, 5, 64, requires_grad=True)
    model.logits(model(x)).logsumexp(-1).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def edit_safetensors(folder, fn):
    path = os.path.join(folder, "model.safetensors")
    tensors = load_file(path)
    fn(tensors)
    save_file(tensors, path, metadata={"format": "pt"})


@pytest.mark.parametrize("edit,name,word", [
    (lambda t: t.pop("model.layers.1.mlp.up_proj.weight"), "model.layers.1.mlp.up_proj.weight", "missing"),
    (lambda t: t.update({"model.layers.0.extra.weight": torch.zeros(3)}), "model.layers.0.extra.weight", "unexpected"),
    (lambda t: t.update({"model.norm.weight": torch.ones(63)}), "model.norm.weight", "shape"),
])
def test_bad_tensors_are_named(tmp_path, edit, name, word):
    hf_llama(tmp_path)
    edit_safetensors(tmp_path, edit)
    with pytest.raises(ValueError, match=word) as e:
        load_llama(tmp_path)
    assert name in str(e.value) and str(tmp_path) in str(e.value) and "\n" not in str(e.value)


def test_stored_lm_head_is_ignored_when_tied(tmp_path):
    hf_llama(tmp_path, tie=True)
    edit_safetensors(tmp_path, lambda t: t.update({"lm_head.weight": t["model.embed_tokens.weight"].clone()}))
    assert load_llama(tmp_path).output is None


def test_unsupported_configs_are_refused(tmp_path):
    cfg = hf().LlamaConfig(vocab_size=300, hidden_size=64, intermediate_size=160, num_hidden_layers=2,
                                   num_attention_heads=4, rope_scaling={"rope_type": "linear", "factor": 2.0})
    hf().LlamaForCausalLM(cfg).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="rope") as e:
        load_llama(tmp_path)
    assert "config.json" in str(e.value)
    base = tiny_config().to_hf()
    for bad, word in [({"rope_scaling": {"type": "linear", "factor": 2.0}}, "rope"), ({"hidden_act": "gelu"}, "gelu"),
                      ({"attention_bias": True}, "bias"), ({"head_dim": 32}, "head_dim")]:
        with pytest.raises(ValueError, match=word):
            LlamaConfig.from_hf({**base, **bad})
    with pytest.raises(ValueError, match="config.json"):
        load_llama(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "config.json").write_text(json.dumps(base))
    with pytest.raises(ValueError, match="model.safetensors"):
        load_llama(tmp_path / "empty")


@pytest.mark.parametrize("tie", [True, False])
def test_save_llama_round_trip(tmp_path, tie):
    model = tiny_llama(tie_embeddings=tie, rope_theta=500000.0)
    assert all(p.requires_grad for p in model.parameters())  # built from a config it is trainable
    model.extend_vocab(320, trainable=False)
    with torch.no_grad():  # make the new rows distinct, so a lost or misplaced row shows
        model.new_rows.add_(torch.randn_like(model.new_rows))
    save_llama(model, tmp_path / "out")
    save_llama(model, tmp_path / "out")  # overwriting a folder works too
    assert sorted(os.listdir(tmp_path)) == ["out"]
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["vocab_size"] == 320 and config["architectures"] == ["LlamaForCausalLM"]
    ref = hf().LlamaForCausalLM.from_pretrained(tmp_path / "out", attn_implementation="eager").eval()
    back = load_llama(tmp_path / "out")
    assert back.vocab_size == 320 and back.config.rope_theta == 500000.0
    x = torch.randn(2, 10, 64)
    with torch.no_grad():
        want = model.logits(model(x))
        torch.testing.assert_close(ref(inputs_embeds=x).logits, want, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(back.logits(back(x)), want, atol=1e-5, rtol=1e-5)


def test_bfloat16_load_is_close_to_float32(tmp_path):
    hf_llama(tmp_path)
    f32, bf16 = load_llama(tmp_path), load_llama(tmp_path, dtype=torch.bfloat16)
    assert bf16.tok_embeddings.weight.dtype == torch.bfloat16
    x = torch.randn(1, 12, 64)
    with torch.no_grad():
        want = f32.logits(f32(x))
        caches = bf16.new_caches(1, 12, dtype=torch.bfloat16)
        got = bf16.logits(bf16(x.bfloat16(), 0, caches))
    assert got.dtype == torch.float32
    assert (got - want).abs().max() < 0.05 * want.abs().max()
    assert (got.argmax(-1) == want.argmax(-1)).float().mean() > 0.8
