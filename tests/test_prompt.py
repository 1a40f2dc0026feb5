"""ASRModel.forward and the prompt functions that training and search share (model.py)."""
import torch

from mel import batch_log_mel
from model import decoder_prompt, predicting_positions, prompt_key_mask, text_positions

from helpers import wave  # the `tiny` model folder is conftest.py's fixture


def test_prompt_functions_on_hand_checked_cases():
    lengths = torch.tensor([3, 1])
    assert prompt_key_mask(lengths, 3).tolist() == [[True, True, True], [True, False, False]]
    assert text_positions(lengths, 3, 2).tolist() == [[3, 4], [1, 2]]
    assert text_positions(lengths, 3, 1, start=4).tolist() == [[7], [5]]
    assert text_positions(None, 3, 2, batch=2).tolist() == [[3, 4], [3, 4]]  # the original: after the padding
    assert predicting_positions(lengths, 3, 2).tolist() == [[2, 3, 4], [0, 3, 4]]
    assert predicting_positions(None, 3, 2, batch=2).tolist() == [[2, 3, 4], [2, 3, 4]]


def test_the_release_prompt_is_the_audio_alone(tiny):
    """recipe §4: no BOS, no instruction, no separator. (A model with another prompt fails here, and only here.)"""
    audio, lengths = torch.randn(2, 5, tiny.llm.config.dim), torch.tensor([5, 3])
    prompt, prompt_lengths = decoder_prompt(tiny.llm, audio, lengths)
    assert prompt is audio and prompt_lengths is lengths


@torch.no_grad()
def test_forward_on_a_padded_batch_equals_each_item_alone(tiny):
    """The logits of [audio | text] at the predicting positions, padded and masked, are those of each utterance's
    own audio and text run alone, unpadded, through the decoder: a wrong RoPE position, mask or gather breaks it."""
    mel, mel_lengths = batch_log_mel([wave(s, i) for i, s in enumerate([2.0, 0.9, 1.4])])
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(1, tiny.tok.vocab_size, (3, 6), generator=g)
    token_lengths = torch.tensor([6, 2, 4])
    out = tiny.model(mel, mel_lengths, tokens, token_lengths)
    assert out.logits.shape == (3, 7, tiny.tok.vocab_size)
    for b in range(3):
        enc, audio, _ = tiny.model.encode(mel[b:b + 1, :, : int(mel_lengths[b])])
        n, L = audio.shape[1], int(token_lengths[b])
        assert int(out.enc_lengths[b]) == n
        prompt = decoder_prompt(tiny.llm, audio, None)[0]  # (1, P, d): this utterance's alone, unpadded
        x = torch.cat([prompt, tiny.llm.embed(tokens[b:b + 1, :L])], dim=1)
        want = tiny.llm.logits(tiny.llm(x))[0, prompt.shape[1] - 1:]  # (L+1, V): the last prompt slot, each token
        torch.testing.assert_close(out.logits[b, : L + 1], want, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(out.ctc_log_probs[b, :n], tiny.model.ctc_log_probs(enc)[0], atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_forward_without_text_or_masks(tiny):
    mel, mel_lengths = batch_log_mel([wave(1.0), wave(0.5, 1)])
    out = tiny.model(mel, mel_lengths)
    assert out.logits is None and out.enc_lengths.tolist() == [26, 13]
    unmasked = tiny.model(mel, None, torch.ones(2, 3, dtype=torch.long))  # the original: every item 26 frames
    assert unmasked.enc_lengths.tolist() == [26, 26]
    prompt = decoder_prompt(tiny.llm, tiny.model.encode(mel)[1], None)[0]  # (2, P, d), P after the padding
    x = torch.cat([prompt, tiny.llm.embed(torch.ones(2, 3, dtype=torch.long))], dim=1)
    want = tiny.llm.logits(tiny.llm(x))[:, prompt.shape[1] - 1:]
    torch.testing.assert_close(unmasked.logits, want, atol=1e-4, rtol=1e-4)


def test_the_front_end_computes_the_models_own_number_of_mel_bands(tiny):
    """A model configured for 40 bands is fed 40 (the conv stack would refuse 80): decode.py reads n_mels from
    the model's config, not from mel.N_MELS."""
    import decode
    from encoder import EncoderConfig
    from model import ASRModel

    model = ASRModel(EncoderConfig(n_mels=40, dim=64, n_heads=4, n_layers=2, dropout=0.0), tiny.llm,
                     tiny.tok.vocab_size)
    t = decode.Transcriber(model, tiny.tok, decode.DecodeOptions(mode="ctc"))
    assert isinstance(t.transcribe([wave(1.0)])[0]["text"], str)
