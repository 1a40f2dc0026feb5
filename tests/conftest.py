"""Shared test settings, and the tiny ASR model folder that test_decode.py and test_evaluate.py decode with."""
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # subprocesses (CLI tests, DDP workers) inherit it
from types import SimpleNamespace  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

from decoder import Llama, LlamaConfig, save_llama  # noqa: E402
from encoder import EncoderConfig  # noqa: E402
from helpers import KAZAKH, randomise  # noqa: E402
from model import ASRModel, load_model, save_model  # noqa: E402
from tokenizer import Tokenizer, train_sentencepiece  # noqa: E402

# the tests use tiny models: one thread is as fast, and two busy-waiting threads per process on 2 shared cores
# (DDP workers, CLI subprocesses, other jobs) made the suite ~10x slower
torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny random ASR model saved as a model folder, with a sentencepiece tokenizer trained on Kazakh lines."""
    root = tmp_path_factory.mktemp("tiny")
    (root / "text.txt").write_text("\n".join(KAZAKH * 5) + "\n", encoding="utf-8")
    tok_path = train_sentencepiece(str(root / "text.txt"), str(root / "kk"), vocab_size=320)
    tok = Tokenizer.load(tok_path)
    torch.manual_seed(0)
    llm = randomise(Llama(LlamaConfig(vocab_size=tok.vocab_size, dim=64, n_layers=2, n_heads=4, n_kv_heads=2,
                                      ffn_dim=160, max_seq_len=1024)))
    save_llama(llm, root / "llm")
    model = ASRModel(EncoderConfig(dim=64, n_heads=4, n_layers=2, dropout=0.0), llm, tok.vocab_size)
    randomise(model.encoder, 1), randomise(model.projector, 2), randomise(model.ctc_head, 3)
    save_model(model, root / "model", tokenizer=tok_path, decoder=root / "llm", copy_decoder=True)
    model = load_model(root / "model")
    return SimpleNamespace(root=root, folder=root / "model", tok=tok, model=model, llm=model.llm)
