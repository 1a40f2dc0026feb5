"""normalize (recipe §5) on a table of cases, and Tokenizer over both backends built inside the test."""
import pytest

from tokenizer import Tokenizer, TokenizerError, normalize, train_sentencepiece

KAZAKH = [
    "қазақстан республикасының астанасы астана қаласы",
    "мектепте оқушылар ұстаздың айтқанын мұқият тыңдады",
    "өзен жағасында үлкен тау көрінеді",
    "һауа райы бүгін жақсы болады деп күтілуде",
    "ғылым мен өнер елдің болашағы",
    "әкем мен анам ауылда тұрады",
    "біз кітап оқығанды ұнатамыз",
    "ұлттық банк пайыздық мөлшерлемені өзгертпеді",
    "жаңа жыл мерекесі қуанышпен өтті",
    "шығыс қазақстан облысында қар жауды",
]
SPECIALS = ["<|endoftext|>", "<|padding|>", "<|startoftext|>"]


@pytest.mark.parametrize("raw, expected", [
    ("Сәлем, әлем!", "сәлем әлем"),
    ("6,5 пайыз", "6 5 пайыз"),
    ("ӘҒҚҢӨҰҮҺІ", "әғқңөұүһі"),                       # Kazakh capitals lowered to the Kazakh letters
    ("әғқңөұүһі", "әғқңөұүһі"),                       # and the letters themselves kept
    ("АБВГД ЕЁЖЗИЙ", "абвгд еёжзий"),                  # ordinary Cyrillic capitals; й/ё keep their marks
    ("«Қазақстан» — ел…", "қазақстан ел"),             # guillemets, em dash, ellipsis
    ("№5 мектеп 100% $10 2+2=4", "5 мектеп 100 10 2 2 4"),
    ("а-б.в/г(д)е:ж;з?и'к\"л", "а б в г д е ж з и к л"),
    ("  бір\tекі\n\nүш   ", "бір екі үш"),
    ("", ""),
    (" ,.! ", ""),
    ("и\u0306", "й"),                                  # decomposed й composes (NFC) ...
    ("И\u0306Е\u0308", "йё"),                          # ... capitals too: one spelling per letter
    ("а\u0301", "а\u0301"),                            # a mark with no precomposed letter is kept, never stripped
])
def test_normalize_cases(raw, expected):
    assert normalize(raw) == expected


def test_normalize_tags_dropped_only_when_asked():
    text = "<happy> Бүгін<laugh>күн жақсы <spk1>"
    assert normalize(text, drop_tags=True) == "бүгін күн жақсы"
    # without drop_tags, < and > are symbols: the tag word stays
    assert normalize(text) == "happy бүгін laugh күн жақсы spk1"


def test_normalize_is_idempotent():
    for s in ["Сәлем, ӘЛЕМ! 6,5 %", "«Ұлы» дала — 2024"]:
        once = normalize(s)
        assert normalize(once) == once


# --- Hugging Face byte-level BPE shaped like the release tokenizer.json ---------------------

def _build_hf_tokenizer(path):
    """A tiny byte-level BPE: specials at 0,1,2, split on \\x1F then ByteLevel without prefix space."""
    from tokenizers import Tokenizer as HF, decoders, models, pre_tokenizers, trainers
    tok = HF(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split("\x1f", behavior="removed"),
        # use_regex=True (GPT-2 word split) keeps merges inside words, as byte-level BPEs do
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(KAZAKH * 3, trainer=trainer)
    tok.save(str(path))
    return str(path)


@pytest.fixture(scope="module")
def hf_tok(tmp_path_factory):
    return Tokenizer.load(_build_hf_tokenizer(tmp_path_factory.mktemp("hf") / "tokenizer.json"))


@pytest.fixture(scope="module")
def sp_tok(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sp")
    text = folder / "text.txt"
    text.write_text("\n".join(KAZAKH * 5) + "\n", encoding="utf-8")
    return Tokenizer.load(train_sentencepiece(str(text), str(folder / "kk"), vocab_size=340))


def test_hf_specials_and_ids(hf_tok):
    assert hf_tok.backend == "hf"
    assert [hf_tok._impl.token_to_id(t) for t in SPECIALS] == [0, 1, 2]
    assert (hf_tok.eos_id, hf_tok.pad_id, hf_tok.blank_id) == (0, 1, 0)
    assert hf_tok.vocab_size == 400


def test_hf_round_trip_and_no_specials(hf_tok):
    for s in KAZAKH + ["жаңа сөз: хҳ ъ 12", "ӘЛЕМ"]:          # unseen letters go through as bytes
        ids = hf_tok.encode(s)
        assert ids and min(ids) > 2                          # no special token added
        assert hf_tok.decode(ids) == s
    # the merges learned something: a seen word is shorter than its UTF-8 bytes
    assert len(hf_tok.encode("қазақстан")) < len("қазақстан".encode())


def test_hf_decode_skips_specials_and_split_mark(hf_tok):
    ids = hf_tok.encode("ғылым мен өнер")
    assert hf_tok.decode([2] + ids + [0, 1, 1]) == "ғылым мен өнер"
    # \x1F is a morpheme boundary the pre-tokenizer removes (recipe §6)
    assert hf_tok.decode(hf_tok.encode("ғылым\x1fмен")) == "ғылыммен"


def test_sentencepiece_layout(sp_tok):
    sp = sp_tok._impl
    assert sp_tok.backend == "sentencepiece"
    assert [sp.id_to_piece(i) for i in range(4)] == SPECIALS + ["<unk>"]
    assert (sp.eos_id(), sp.pad_id(), sp.bos_id(), sp.unk_id()) == (0, 1, 2, 3)
    assert (sp_tok.eos_id, sp_tok.pad_id, sp_tok.blank_id, sp_tok.vocab_size) == (0, 1, 0, 340)
    assert sp.id_to_piece(4) == "<0x00>"                     # byte fallback pieces follow


def test_sentencepiece_round_trip(sp_tok):
    for s in KAZAKH + ["жаңа сөз хҳ 12", "әғқңөұүһі"]:
        ids = sp_tok.encode(s)
        assert ids and min(ids) > 3
        assert sp_tok.decode(ids) == s
    ids = sp_tok.encode("ел жер")
    assert sp_tok.decode([2] + ids + [0, 1]) == "ел жер"


def test_decode_refuses_ids_outside_vocab(sp_tok, hf_tok):
    for tok in (sp_tok, hf_tok):
        with pytest.raises(ValueError, match="outside the vocabulary"):
            tok.decode([5, tok.vocab_size])


def test_train_sentencepiece_unigram_and_atomic(tmp_path):
    text = tmp_path / "t.txt"
    text.write_text("\n".join(KAZAKH * 5) + "\n", encoding="utf-8")
    path = train_sentencepiece(str(text), str(tmp_path / "uni"), vocab_size=320, model_type="unigram")
    tok = Tokenizer.load(path)
    assert tok.decode(tok.encode(KAZAKH[0])) == KAZAKH[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.txt", "uni.model", "uni.vocab"]   # no temp left


@pytest.mark.parametrize("name, content", [
    ("missing.model", None), ("bad.model", b"not a model"), ("bad.json", b"{\"x\": 1"), ("vocab.txt", b"a\n"),
])
def test_load_errors_name_the_file(tmp_path, name, content):
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(TokenizerError) as e:
        Tokenizer.load(str(path))
    assert str(e.value).startswith(str(path) + ": ") and "\n" not in str(e.value)


def test_load_refuses_wrong_eos_layout(tmp_path):
    text = tmp_path / "t.txt"
    text.write_text("\n".join(KAZAKH * 5) + "\n", encoding="utf-8")
    path = train_sentencepiece(str(text), str(tmp_path / "x"), vocab_size=320,
                               eos_id=2, bos_id=0, eos_piece="</s>", bos_piece="<s>")
    with pytest.raises(TokenizerError, match="eos id is 2"):
        Tokenizer.load(path)
