"""The conv-subsampling encoder (recipe §2): shapes, names, RoPE and RMSNorm maths, padding masks."""
import re

import torch

from decoder import RMSNorm, apply_rope, rope_tables, rotate_half
from encoder import ENCODER_PRESETS, AudioEncoder, EncoderConfig, Projector, subsampled_lengths

TINY = EncoderConfig(n_mels=80, dim=64, n_heads=4, n_layers=2, n_convs=2, dropout=0.0)


def test_ffn_width_and_subsampling_match_the_release():
    assert EncoderConfig(**ENCODER_PRESETS["300m"]).ffn_dim == 1728  # recipe §8: gate_proj [1728, 640]
    assert EncoderConfig(**ENCODER_PRESETS["150m"]).ffn_dim == 1408  # int(512 * 8 / 3) = 1365 -> 1408
    # 15 s = 1501 frames -> 751 -> 376 (recipe §2)
    assert subsampled_lengths(torch.tensor([1501, 1500, 7, 1]), 2).tolist() == [376, 375, 2, 1]
    enc = AudioEncoder(TINY).eval()
    x, _ = enc(torch.randn(2, 80, 1501))
    assert x.shape == (2, 376, 64)


def test_300m_names_shapes_and_size_match_the_release():
    with torch.device("meta"):
        cfg = EncoderConfig(**ENCODER_PRESETS["300m"])
        enc, proj, ctc = AudioEncoder(cfg), Projector(640, 1024), torch.nn.Linear(640, 100000)
    sd = {f"encoder.{k}": v.shape for k, v in enc.state_dict().items()}
    sd |= {f"projector.{k}": v.shape for k, v in proj.state_dict().items()}
    sd |= {f"ctc_head.{k}": v.shape for k, v in ctc.state_dict().items()}
    assert sd["encoder.conv_stack.0.weight"] == (640, 80, 3)
    assert sd["encoder.conv_stack.2.weight"] == (640, 640, 3)
    assert sd["encoder.layers.13.q_proj.bias"] == (640,)
    assert sd["encoder.layers.13.gate_proj.weight"] == (1728, 640)
    assert sd["encoder.layers.13.down_proj.weight"] == (640, 1728)
    assert sd["projector.linear.weight"] == (1024, 640) and sd["projector.norm.weight"] == (1024,)
    assert sd["ctc_head.weight"] == (100000, 640)
    assert not any(re.search(r"inv_freq|layers\.14\.|gate_proj\.bias", k) for k in sd)  # no buffers, no extras
    per_layer = {k.split(".", 3)[3] for k in sd if k.startswith("encoder.layers.0.")}
    assert per_layer == {f"{n}.{w}" for n in ["q_proj", "k_proj", "v_proj", "o_proj"] for w in ["weight", "bias"]} | {
        "norm1.weight", "norm2.weight", "gate_proj.weight", "up_proj.weight", "down_proj.weight"}
    n = sum(torch.Size(s).numel() for s in sd.values())
    assert abs(n / 1e6 - 135.6) < 0.1  # recipe §8: ~135.6M parameters


def test_rmsnorm_is_computed_in_float32_and_cast_back():
    norm = RMSNorm(8, eps=1e-6)
    norm.weight.data = torch.arange(1.0, 9.0)
    x = torch.tensor([[1.0, -2.0, 3.0, -4.0, 5.0, -6.0, 7.0, -8.0]])
    rms = (x.pow(2).mean() + 1e-6).sqrt()
    torch.testing.assert_close(norm(x), x / rms * torch.arange(1.0, 9.0))
    xb = x.bfloat16()
    out = norm.to(torch.bfloat16)(xb)
    assert out.dtype == torch.bfloat16
    expected = (x / rms).bfloat16() * torch.arange(1.0, 9.0).bfloat16()
    torch.testing.assert_close(out, expected)


def test_rope_tables_by_hand_and_relative_positions():
    cos, sin = rope_tables(4, 3, 10000.0)  # head_dim 4, 3 positions
    # inv_freq = [1, 1/100]; position 2: angles [2, 0.02], laid out cat(angles, angles)
    torch.testing.assert_close(cos[2], torch.tensor([2.0, 0.02, 2.0, 0.02]).cos())
    torch.testing.assert_close(sin[2], torch.tensor([2.0, 0.02, 2.0, 0.02]).sin())
    assert rotate_half(torch.tensor([1.0, 2.0, 3.0, 4.0])).tolist() == [-3.0, -4.0, 1.0, 2.0]
    # q.k after RoPE depends only on the position difference
    torch.manual_seed(0)
    q, k = torch.randn(1, 1, 1, 16), torch.randn(1, 1, 1, 16)
    cos, sin = rope_tables(16, 20, 10000.0)
    dot = lambda i, j: (apply_rope(q, cos[i:i + 1], sin[i:i + 1]) * apply_rope(k, cos[j:j + 1], sin[j:j + 1])).sum()
    torch.testing.assert_close(dot(5, 2), dot(13, 10))
    assert not torch.allclose(dot(5, 2), dot(5, 3))


def test_masked_item_is_independent_of_batch_padding():
    torch.manual_seed(0)
    enc = AudioEncoder(TINY).eval()
    short, long = torch.randn(80, 203), torch.randn(80, 517)
    alone, alone_len = enc(short[None], torch.tensor([203]))
    batch = torch.zeros(2, 80, 517)
    batch[0, :, :203], batch[1] = short, long
    out, lengths = enc(batch, torch.tensor([203, 517]))
    assert lengths.tolist() == [51, 130] and alone_len.tolist() == [51]
    torch.testing.assert_close(out[0, :51], alone[0], atol=1e-5, rtol=1e-5)
    # without masks (the original's maths) the padding leaks into the short item
    unmasked, _ = enc(batch)
    assert (unmasked[0, :51] - alone[0]).abs().max() > 1e-3


def test_no_mask_equals_full_mask_and_unpadded_batch():
    torch.manual_seed(1)
    enc = AudioEncoder(TINY).eval()
    mel = torch.randn(3, 80, 400)
    a, none_len = enc(mel)
    b, _ = enc(mel, torch.tensor([400, 400, 400]))
    assert none_len is None
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_dropout_only_in_training_and_gradients_flow():
    torch.manual_seed(0)
    enc = AudioEncoder(EncoderConfig(dim=64, n_heads=4, n_layers=2, dropout=0.5))
    mel = torch.randn(2, 80, 100)
    enc.eval()
    torch.testing.assert_close(enc(mel)[0], enc(mel)[0])
    enc.train()
    assert not torch.allclose(enc(mel)[0], enc(mel)[0])
    enc(mel)[0].sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in enc.parameters())


def test_activation_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    enc = AudioEncoder(TINY).train()
    ref = AudioEncoder(TINY).train()
    ref.load_state_dict(enc.state_dict())
    enc.grad_checkpointing = True
    mel = torch.randn(2, 80, 120)
    enc(mel, torch.tensor([120, 90]))[0].square().sum().backward()
    ref(mel, torch.tensor([120, 90]))[0].square().sum().backward()
    for p, q in zip(enc.parameters(), ref.parameters()):
        torch.testing.assert_close(p.grad, q.grad, atol=1e-5, rtol=1e-4)
