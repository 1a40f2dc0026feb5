"""Helpers shared by several test files: Kazakh lines, weights with clear margins, a deterministic test signal,
noise utterances with a manifest."""
import json
import math

import numpy as np
import soundfile as sf
import torch

from mel import SAMPLE_RATE

KAZAKH = [
    "қазақстан республикасының астанасы астана қаласы",
    "мектепте оқушылар ұстаздың айтқанын мұқият тыңдады",
    "өзен жағасында үлкен тау көрінеді",
    "һауа райы бүгін жақсы болады деп күтілуде",
    "ғылым мен өнер елдің болашағы",
    "әкем мен анам ауылда тұрады",
    "біз кітап оқығанды ұнатамыз",
    "шығыс қазақстан облысында қар жауды",
]


def randomise(model, seed=0):
    """Weights large enough for clear argmax margins (0.02-std init leaves near-ties everywhere)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.rand(p.shape, generator=g) + 0.5 if "norm" in name else torch.randn(p.shape, generator=g) * 0.15)
    return model


def wave(seconds, seed=0):
    """A deterministic test signal: tones plus a little noise, (samples,) at 16 kHz."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    return 0.3 * torch.sin(2 * math.pi * (220 + 40 * seed) * t) + 0.05 * torch.randn(t.shape, generator=g)


def noise_utterances(root, texts, manifest="train.jsonl"):
    """One random-noise wav per text, 0.6, 0.9, 1.2 .. s long (unequal, so padding and masks matter), and a JSONL
    manifest of them (paths relative to root) -> the manifest's path."""
    rng = np.random.default_rng(0)
    rows = []
    for i, text in enumerate(texts):
        n = SAMPLE_RATE * (6 + 3 * i) // 10
        sf.write(root / f"u{i}.wav", (0.1 * rng.standard_normal(n)).astype(np.float32), SAMPLE_RATE)
        rows.append(dict(audio_filepath=f"u{i}.wav", text=text, duration=n / SAMPLE_RATE))
    path = root / manifest
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path
