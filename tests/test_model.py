"""The assembled model: the release's model.pt layout (recipe §8) and our own model folders."""
import json
from pathlib import Path

import pytest
import torch

from decoder import Llama, LlamaConfig, save_llama
from encoder import EncoderConfig
from model import ASRModel, load_model, load_release, save_model

BASE_VOCAB, VOCAB = 120, 200  # the release: 50257 base rows, 100000 ids
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("llama")
    cfg = LlamaConfig(vocab_size=BASE_VOCAB, dim=48, n_layers=2, n_heads=4, n_kv_heads=4, ffn_dim=96)
    save_llama(Llama(cfg), folder)
    return folder


def release_like(llama_dir, seed=0):
    """A random model whose own tensors carry exactly the release's names, at tiny dims (head_dim 64)."""
    from decoder import load_llama
    torch.manual_seed(seed)
    llm = load_llama(llama_dir)
    llm.extend_vocab(VOCAB, trainable=False)
    model = ASRModel(EncoderConfig(dim=128, n_heads=2, n_layers=2, dropout=0.0), llm, VOCAB).eval()
    for name, p in model.named_parameters():  # norms and biases away from their init, so a mix-up shows
        if not name.startswith("llm."):
            p.data += 0.1 * torch.randn_like(p)
    return model


def save_release(model, path):
    sd = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("llm.")}
    torch.save(sd, path)
    return sd


def test_release_checkpoint_loads_strictly_and_gives_the_same_output(llama_dir, tmp_path):
    model = release_like(llama_dir)
    sd = save_release(model, tmp_path / "model.pt")
    assert all(k.split(".")[0] in {"encoder", "projector", "ctc_head"} for k in sd)
    assert "encoder.layers.1.q_proj.bias" in sd and "projector.norm.weight" in sd
    loaded = load_release(tmp_path / "model.pt", llama_dir, tokenizer_vocab=VOCAB)
    assert loaded.encoder.cfg.dim == 128 and loaded.encoder.cfg.n_heads == 2 and loaded.encoder.cfg.n_layers == 2
    mel = torch.randn(1, 80, 300)
    with torch.no_grad():
        a = model.encode(mel)
        b = loaded.encode(mel)
        torch.testing.assert_close(a[0], b[0])
        torch.testing.assert_close(a[1], b[1])
        # the release's vocabulary quirk: new rows are the mean of the base rows, so all their logits tie
        logits = loaded.llm.logits(loaded.llm(b[1]))[0, -1]
    assert torch.allclose(logits[BASE_VOCAB:], logits[BASE_VOCAB], atol=1e-5)
    assert not any(p.requires_grad for p in loaded.llm.parameters())


@pytest.mark.parametrize("edit, message", [
    (lambda sd: sd.pop("encoder.layers.1.norm2.weight"), "missing: encoder.layers.1.norm2.weight"),
    (lambda sd: sd.update({"encoder.layers.0.extra.weight": torch.zeros(3)}), "unexpected: encoder.layers.0.extra"),
    (lambda sd: sd.update({"projector.linear.bias": torch.zeros(47)}), "mis-shaped: projector.linear.bias"),
])
def test_incompatible_checkpoint_names_the_tensor(llama_dir, tmp_path, edit, message):
    sd = save_release(release_like(llama_dir), tmp_path / "ok.pt")
    edit(sd)
    torch.save(sd, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match=message.replace(".", r"\.")):
        load_release(tmp_path / "bad.pt", llama_dir)


def test_refuses_a_checkpoint_for_another_tokenizer(llama_dir, tmp_path):
    save_release(release_like(llama_dir), tmp_path / "model.pt")
    with pytest.raises(ValueError, match=f"has {VOCAB} output ids but the tokenizer has 999"):
        load_release(tmp_path / "model.pt", llama_dir, tokenizer_vocab=999)
    with pytest.raises(ValueError, match="not found"):
        load_release(tmp_path / "nope.pt", llama_dir)
    (tmp_path / "junk.pt").write_text("not a checkpoint")
    with pytest.raises(ValueError, match="junk.pt"):
        load_release(tmp_path / "junk.pt", llama_dir)


def test_model_folder_round_trip_with_trainable_extra_rows(llama_dir, tmp_path):
    model = release_like(llama_dir)
    model.llm.new_rows.data += torch.randn_like(model.llm.new_rows)  # as if the vocabulary fix had trained them
    model.llm.new_rows.requires_grad_(True)
    (tmp_path / "tok.model").write_bytes(b"fake tokenizer bytes")
    save_model(model, tmp_path / "m", tokenizer=tmp_path / "tok.model", decoder=llama_dir, copy_decoder=True)
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["vocab_size"] == VOCAB and config["encoder"]["dim"] == 128 and config["decoder"] == "decoder"
    assert config["extra_rows_trainable"] is True and (tmp_path / "m" / "tok.model").exists()
    loaded = load_model(tmp_path / "m")
    torch.testing.assert_close(loaded.llm.new_rows, model.llm.new_rows.detach())
    ids = torch.tensor([[3, BASE_VOCAB + 5, VOCAB - 1]])
    mel = torch.randn(1, 80, 200)
    with torch.no_grad():
        for m in (model, loaded):
            _, audio, _ = m.encode(mel)
            x = torch.cat([audio, m.llm.embed(ids)], 1)
            m.out = m.llm.logits(m.llm(x))
    torch.testing.assert_close(model.out, loaded.out)
    # a saved folder that refers to the decoder elsewhere instead of copying it
    save_model(model, tmp_path / "ref", decoder=llama_dir, copy_decoder=False)
    assert not (tmp_path / "ref" / "decoder").exists()
    torch.testing.assert_close(load_model(tmp_path / "ref").ctc_head.weight, model.ctc_head.weight.detach())


def test_model_folder_errors_name_the_problem(llama_dir, tmp_path):
    with pytest.raises(ValueError, match="no config.json"):
        load_model(tmp_path)
    model = release_like(llama_dir)
    save_model(model, tmp_path / "m", decoder=llama_dir)
    from safetensors.torch import load_file, save_file
    sd = load_file(tmp_path / "m" / "model.safetensors")
    sd.pop("ctc_head.bias")
    save_file(sd, tmp_path / "m" / "model.safetensors")
    with pytest.raises(ValueError, match="missing: ctc_head.bias"):
        load_model(tmp_path / "m")


def test_loading_a_model_folder_draws_no_init_and_sets_off_no_compiler(tmp_path):
    """Both models are built on the meta device and assigned: a random draw there imports torch._dynamo (seconds
    of every program's start-up), and anything left unassigned would still be a meta tensor."""
    import subprocess
    import sys
    code = ("import sys, model; m = model.load_model('models/teach'); "
            "print('torch._dynamo' in sys.modules, any(t.is_meta for t in [*m.parameters(), *m.buffers()]), "
            "m.llm.rope_cos.shape[0] == m.llm.config.max_seq_len)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.stdout.split() == ["False", "False", "True"], out.stderr


def test_a_fresh_llama_still_draws_its_init():
    torch.manual_seed(0)
    llm = Llama(LlamaConfig(vocab_size=50, dim=16, n_layers=1, n_heads=2, n_kv_heads=2, ffn_dim=32))
    assert 0.015 < llm.tok_embeddings.weight.std() < 0.025  # normal(0, 0.02), not nn.Embedding's N(0, 1)
    assert llm.rope_cos.shape == (llm.config.max_seq_len, 8)


def test_a_saved_folder_copied_elsewhere_still_loads(llama_dir, tmp_path):
    import shutil
    model = release_like(llama_dir)
    save_model(model, tmp_path / "run" / "m", decoder=llama_dir)  # the default: the decoder is copied in
    assert (tmp_path / "run" / "m" / "decoder" / "model.safetensors").is_file()
    shutil.copytree(tmp_path / "run" / "m", tmp_path / "elsewhere" / "deep" / "m")
    shutil.rmtree(tmp_path / "run")
    loaded = load_model(tmp_path / "elsewhere" / "deep" / "m")
    torch.testing.assert_close(loaded.ctc_head.weight, model.ctc_head.weight.detach())
    torch.testing.assert_close(loaded.llm.tok_embeddings.weight, model.llm.tok_embeddings.weight)


def test_a_checkpoint_moved_from_its_decoder_says_to_pass_one(llama_dir, tmp_path):
    import shutil
    model = release_like(llama_dir)
    save_model(model, tmp_path / "run" / "checkpoint-1", decoder=llama_dir, copy_decoder=False)
    assert load_model(tmp_path / "run" / "checkpoint-1").vocab_size == VOCAB  # the relative path, in place
    shutil.copytree(tmp_path / "run" / "checkpoint-1", tmp_path / "a" / "b" / "c" / "checkpoint-1")
    moved = tmp_path / "a" / "b" / "c" / "checkpoint-1"
    with pytest.raises(ValueError, match=r"config.json: its decoder .* is not there; pass .*--decoder") as e:
        load_model(moved)
    assert "\n" not in str(e.value)
    torch.testing.assert_close(load_model(moved, decoder=llama_dir).ctc_head.weight, model.ctc_head.weight.detach())
