"""Text normalisation and one small tokenizer interface over two backends.

What it follows (recipe §5, §6):
- `normalize` is the FLEURS-style rule the release applied to training targets, references and
  hypotheses alike: lowercase -> every character whose Unicode category starts with P
  (punctuation) or S (symbol) becomes a space -> whitespace collapsed. Training text first drops
  `<...>` tags. Digits, letters and combining marks are kept. First, though, Unicode NFC: the
  same word typed two ways ("й" precomposed, or "и" + combining breve U+0306; likewise "ё")
  must be one string, or a scorer counts it as an error and a tokenizer learns it twice. NFC
  only composes; it never drops a mark (NFKC would also fold compatibility forms, so it is not
  used). Control characters (category C) are kept as they are, as the rule says.
- `Tokenizer` loads either the release's Hugging Face `tokenizer.json` (byte-level BPE,
  100000 ids, `<|endoftext|>` 0, `<|padding|>` 1, `<|startoftext|>` 2) or a sentencepiece
  `.model` trained here with the same id layout (eos 0, pad 1, bos 2, unk 3). Id 0 is both EOS
  and the CTC blank.
- `train_sentencepiece` builds such a `.model` (BPE or unigram, byte fallback, no extra
  normalisation since the text is already normalised).

What it does not do: add special tokens (the model's prompt has no BOS; EOS is appended by the
training code), or insert the `\\x1F` morpheme marks the release tokenizer can split on.
"""
import io
import os
import re
import unicodedata

import sentencepiece as spm
from tokenizers import Tokenizer as HFTokenizer

from atomic import atomic_file, write_text

# id layout of the release tokenizer, reused for our own sentencepiece models (recipe §6)
EOS_ID = 0    # <|endoftext|>: end of text, and the CTC blank
PAD_ID = 1    # <|padding|>
BOS_ID = 2    # <|startoftext|> (never fed to the model: the prompt has no BOS)
UNK_ID = 3    # sentencepiece only; the byte-level BPE has no unknown token
BLANK_ID = EOS_ID

_TAG = re.compile(r"<[^<>]*>")


class TokenizerError(ValueError):
    """Bad tokenizer file; str(e) == "<path>: <problem>"."""


def normalize(text: str, drop_tags: bool = False) -> str:
    """recipe §5 after NFC: "Сәлем, Әлем!" -> "сәлем әлем"; "6,5 %" -> "6 5"; "и\u0306" -> "й".

    drop_tags first replaces every `<...>` tag with a space (a space, not nothing, so that
    "сөз<laugh>сөз" stays two words).
    """
    text = unicodedata.normalize("NFC", text)  # "и" + U+0306 -> "й": one spelling of each letter
    if drop_tags:
        text = _TAG.sub(" ", text)
    text = text.lower()
    # "P*" = punctuation (.,«»—…), "S*" = symbols (№ % $ + =); both become word breaks
    text = "".join(" " if unicodedata.category(ch)[0] in "PS" else ch for ch in text)
    return " ".join(text.split())


class Tokenizer:
    """encode/decode over a sentencepiece `.model` or a Hugging Face `tokenizer.json`.

    Use `Tokenizer.load(path)`. Both backends encode without special tokens and decode
    skipping them; `eos_id` and `blank_id` are 0, `pad_id` is 1 (recipe §6).
    """

    def __init__(self, path: str, backend: str, impl, eos_id: int, pad_id: int):
        self.path = path
        self.backend = backend   # "sentencepiece" or "hf"
        self._impl = impl
        self._eos_id = eos_id
        self._pad_id = pad_id

    @classmethod
    def load(cls, path: str) -> "Tokenizer":
        """".model" -> sentencepiece, ".json" -> Hugging Face tokenizers; anything else is refused."""
        path = str(path)
        if not os.path.isfile(path):
            raise TokenizerError(f"{path}: no such tokenizer file")
        if path.endswith(".model"):
            return cls._load_sentencepiece(path)
        if path.endswith(".json"):
            return cls._load_hf(path)
        raise TokenizerError(f"{path}: not a tokenizer (expected a sentencepiece .model or a tokenizer.json)")

    @classmethod
    def _load_sentencepiece(cls, path: str) -> "Tokenizer":
        sp = spm.SentencePieceProcessor()
        try:
            sp.load(path)
        except (OSError, RuntimeError) as e:
            raise TokenizerError(f"{path}: not a sentencepiece model ({str(e).splitlines()[0]})") from None
        _check_layout(path, sp.eos_id(), sp.pad_id())
        return cls(path, "sentencepiece", sp, sp.eos_id(), sp.pad_id())

    @classmethod
    def _load_hf(cls, path: str) -> "Tokenizer":
        try:
            tok = HFTokenizer.from_file(path)
        except Exception as e:   # tokenizers raises a bare Exception on malformed files
            raise TokenizerError(f"{path}: not a Hugging Face tokenizer.json ({str(e).splitlines()[0]})") from None
        eos, pad = tok.token_to_id("<|endoftext|>"), tok.token_to_id("<|padding|>")
        _check_layout(path, -1 if eos is None else eos, -1 if pad is None else pad)
        return cls(path, "hf", tok, eos, pad)

    def encode(self, text: str) -> list[int]:
        """Text -> ids, no special tokens (no BOS, no EOS)."""
        if self.backend == "sentencepiece":
            return self._impl.encode(text, out_type=int)
        return self._impl.encode(text, add_special_tokens=False).ids

    def decode(self, ids) -> str:
        """Ids -> text, special tokens (EOS/blank, pad, BOS) skipped; an id outside the vocabulary is an error."""
        ids = [int(i) for i in ids]
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise ValueError(f"{self.path}: id {bad[0]} is outside the vocabulary (0..{self.vocab_size - 1})")
        if self.backend == "sentencepiece":
            sp = self._impl
            return sp.decode([i for i in ids if not sp.is_control(i)])
        return self._impl.decode(ids, skip_special_tokens=True)

    @property
    def eos_id(self) -> int:
        return self._eos_id

    @property
    def pad_id(self) -> int:
        return self._pad_id

    @property
    def blank_id(self) -> int:
        """The CTC blank: id 0, the same id as EOS (recipe §2, §6)."""
        return BLANK_ID

    @property
    def vocab_size(self) -> int:
        if self.backend == "sentencepiece":
            return self._impl.get_piece_size()
        return self._impl.get_vocab_size(with_added_tokens=True)

    def __repr__(self) -> str:
        return f"Tokenizer({self.path!r}, backend={self.backend!r}, vocab_size={self.vocab_size})"


def _check_layout(path: str, eos: int, pad: int) -> None:
    """Refuse tokenizers whose EOS is not id 0: the model uses id 0 as EOS and CTC blank."""
    if eos != EOS_ID:
        raise TokenizerError(f"{path}: eos id is {eos}, this project needs eos (and CTC blank) at id {EOS_ID}")
    if pad < 0:
        raise TokenizerError(f"{path}: no padding token")


def train_sentencepiece(text_file: str, model_prefix: str, vocab_size: int, model_type: str = "bpe",
                        **trainer_options) -> str:
    """Train a sentencepiece model on normalised text (one sentence a line); returns the .model path.

    The id layout is the release's: eos 0 (also the CTC blank), pad 1, bos 2, unk 3, so a model
    trained here is a drop-in for the 100k release tokenizer. byte_fallback adds 256 byte pieces
    (ids 4..259), so vocab_size must be above 260 + the number of distinct characters.
    Writes `<model_prefix>.model` and `.vocab` atomically; extra keyword arguments go to the trainer.
    """
    if model_type not in ("bpe", "unigram"):
        raise ValueError(f"model_type must be 'bpe' or 'unigram', not {model_type!r}")
    if not os.path.isfile(text_file):
        raise ValueError(f"{text_file}: no such text file")
    proto = io.BytesIO()  # the trainer writes the model here, not to disk: the files are written atomically below
    options = dict(
        input=text_file, model_writer=proto, vocab_size=vocab_size, model_type=model_type,
        character_coverage=1.0,   # keep every Kazakh letter; rare ones would otherwise become <unk>
        byte_fallback=True,       # anything unseen still encodes, as bytes
        normalization_rule_name="identity",   # text is already normalised (recipe §5); no NFKC
        eos_id=EOS_ID, pad_id=PAD_ID, bos_id=BOS_ID, unk_id=UNK_ID,
        eos_piece="<|endoftext|>", pad_piece="<|padding|>", bos_piece="<|startoftext|>",
        minloglevel=2,            # the trainer is very chatty on stderr
    )
    options.update(trainer_options)
    spm.SentencePieceTrainer.train(**options)
    sp = spm.SentencePieceProcessor(model_proto=proto.getvalue())
    with atomic_file(model_prefix + ".model", "wb") as f:
        f.write(proto.getvalue())
    write_text(model_prefix + ".vocab", "".join(f"{sp.id_to_piece(i)}\t{sp.get_score(i):g}\n"
                                                for i in range(sp.get_piece_size())))  # for people to read
    return model_prefix + ".model"


def main(argv=None):
    """`python tokenizer.py --text lm.txt --vocab-size 1024 --out runs/teach/tokenizer`: train a sentencepiece model."""
    import argparse

    import cli
    import sys
    p = cli.ArgumentParser(description="Train a sentencepiece tokenizer with the release's id layout "
                                            "(eos/blank 0, pad 1, bos 2, unk 3) on normalised text.")
    p.add_argument("--text", required=True, help="normalised text, one sentence a line")
    p.add_argument("--out", required=True, help="output prefix: writes OUT.model and OUT.vocab")
    p.add_argument("--vocab-size", type=int, default=1024, help="pieces, incl. 256 byte pieces (default: %(default)s)")
    p.add_argument("--model-type", choices=["bpe", "unigram"], default="bpe", help="(default: %(default)s)")
    args = p.parse_args(argv)
    try:
        print(train_sentencepiece(args.text, args.out, args.vocab_size, args.model_type))
    except (ValueError, RuntimeError) as e:
        sys.exit(f"error: {str(e).splitlines()[0]}")


if __name__ == "__main__":
    main()
