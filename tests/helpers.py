"""Helpers shared by several test files: Kazakh lines, weights with clear margins, a deterministic test signal."""
import math

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
