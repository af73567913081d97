"""scripts/fill_mask_ood.py: the masked items are what they claim, the accuracy and the constant guess are
recounted independently, the command prints the ratio and fails in one line."""

from collections import Counter

import pytest
from helpers import load_script, make_bertmath_run

from bertmath.fill_mask import FillMask

SENTENCES = ["the cat sat on the mat and the dog ran home .", "my sister laughed at the teacher in the hall .",
             "a dog ran home to the cat and the mat .", "the teacher sat on the chair and laughed ."]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    return make_bertmath_run(tmp_path_factory.mktemp("ood") / "run", train_steps=30)


def test_items_mask_one_single_wordpiece_word(trained_run):
    ood = load_script("fill_mask_ood")
    fill = FillMask.from_pretrained(trained_run)
    items = ood.masked_items(SENTENCES * 3, fill.tokenizer, fill.mask_token, count=10, seed=1)
    assert len(items) == 10
    for item in items:
        assert item.text.split().count("[MASK]") == 1
        assert fill.tokenizer.token_to_id(item.answer) == item.answer_id and not item.answer.startswith("##")
        filled = item.text.replace("[MASK]", item.answer)
        assert filled in [s.lower() for s in SENTENCES]  # the answer is the word that was there
    assert items == ood.masked_items(SENTENCES * 3, fill.tokenizer, fill.mask_token, count=10, seed=1)


def test_accuracy_and_constant_guess_recounted(trained_run):
    ood = load_script("fill_mask_ood")
    fill = FillMask.from_pretrained(trained_run)
    items = ood.masked_items(SENTENCES * 5, fill.tokenizer, fill.mask_token, count=20, seed=0)
    report = ood.evaluate(fill, items)
    predicted = [fill.predict(it.text, top_k=1)[0].masks[0].chosen.token_str for it in items]  # one at a time
    answers = [it.answer for it in items]  # compared as strings here, as ids by the script
    assert report["accuracy"] == sum(p == a for p, a in zip(predicted, answers)) / 20
    assert report["accuracy"] > 0  # the 30-step model names some of these words: a comparison that can succeed
    top, hits = Counter(answers).most_common(1)[0]
    assert (report["constant_guess"], report["constant_accuracy"]) == (top, hits / 20)
    assert report["ratio"] == report["accuracy"] / report["constant_accuracy"]


def test_command_prints_the_ratio_and_fails_in_one_line(trained_run, tmp_path, capsys):
    ood = load_script("fill_mask_ood")
    run = trained_run
    text = tmp_path / "text.txt"
    text.write_text("\n".join(SENTENCES) + "\n")
    assert ood.main([str(run), "--text", str(text), "--sentences", "4"]) == 0
    out = capsys.readouterr().out
    assert "text.txt: 4 sentences" in out and "best constant guess" in out and "x\n" in out
    assert ood.main([str(tmp_path / "missing"), "--text", str(text)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fill_mask_ood: ") and err.count("\n") == 1 and "missing" in err


def test_default_text_is_shipped_and_not_in_the_corpus():
    ood = load_script("fill_mask_ood")
    sentences = ood.read_sentences(ood.DEFAULT_TEXT)
    assert len(sentences) == 2000 and all(6 <= len(s.split()) <= 60 for s in sentences)
    from bertmath.corpus import _embedded_works
    corpus = "\n".join(_embedded_works())
    assert sum(s in corpus for s in sentences[::10]) == 0  # every tenth: each is a scan of 5 MB
