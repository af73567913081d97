"""bertmath.viz.attention and `bertmath attention`: the weights drawn are those of every layer and head (equal
to transformers' output_attentions on the MiniLM weights; tests/test_model.py checks BertModel.attention_weights
against torch); the command writes a PNG and gives one-line errors."""

import sys

import pytest
import torch
from torch.testing import assert_close

from bertmath import BertModel
from bertmath.viz.attention import AttentionMaps, attention_maps, check_index, draw_attention
from bertmath.cli import main
from bertmath.errors import ConfigError, InputError
from bertmath.pretrained import load_model_and_tokenizer

from helpers import assert_one_line_error, assert_png, minilm_dir

pytest.importorskip("matplotlib")

# float32, 6 layers of MiniLM against transformers' eager attention: the hidden states agree within ~1e-5
# (tests/test_pretrained.py), so the weights computed from them do too
HF_ATOL = 1e-5


def test_attention_weights_match_transformers_on_minilm():
    transformers = pytest.importorskip("transformers")
    directory = minilm_dir()
    ours, tokenizer = load_model_and_tokenizer(BertModel, directory)
    theirs = transformers.BertModel.from_pretrained(str(directory), local_files_only=True,
                                                    attn_implementation="eager").eval()
    ids = torch.tensor([tokenizer.encode("The bank of the river was covered in flowers.").ids])
    with torch.no_grad():
        expected = theirs(ids, output_attentions=True).attentions
        maps = attention_maps(ours, tokenizer, "The bank of the river was covered in flowers.")
    assert maps.weights.shape == (6, 12, ids.shape[1], ids.shape[1])
    for layer, w in enumerate(expected):
        assert_close(maps.weights[layer], w[0], atol=HF_ATOL, rtol=0)


def test_attention_maps_of_a_text(tiny_run):
    model, tokenizer = load_model_and_tokenizer(BertModel, tiny_run)
    maps = attention_maps(model, tokenizer, "the cat sat on the mat")
    assert maps.tokens[0] == "[CLS]" and maps.tokens[-1] == "[SEP]"
    assert maps.weights.shape == (2, 4, len(maps.tokens), len(maps.tokens))
    assert_close(maps.weights.sum(-1), torch.ones(2, 4, len(maps.tokens)))
    with pytest.raises(InputError, match="no tokens"):
        attention_maps(model, tokenizer, "   ")
    with pytest.raises(InputError, match="more than the model's limit of 64"):
        attention_maps(model, tokenizer, "the cat " * 40)


def test_check_index():
    assert check_index("layer", None, 3, "ckpt") == [0, 1, 2]
    assert check_index("head", 2, 3, "ckpt") == [2]
    for bad in (3, -1):
        with pytest.raises(ConfigError, match=rf"layer: {bad} is out of range; ckpt has 3 layers, numbered 0 to 2"):
            check_index("layer", bad, 3, "ckpt")


def test_draw_attention_grids():
    weights = torch.softmax(torch.randn(3, 2, 5, 5, generator=torch.Generator().manual_seed(0)), dim=-1)
    maps = AttentionMaps(["[CLS]", "a", "b", "c", "[SEP]"], weights)
    grid = draw_attention(maps, [0, 1, 2], [0, 1], "test")  # one row per layer, one column per head
    assert [ax.get_title() for ax in grid.axes if ax.get_title()][:3] == ["layer 0, head 0", "layer 0, head 1",
                                                                          "layer 1, head 0"]
    single = draw_attention(maps, [2], [1], "test")
    image = single.axes[0].images[0]
    assert_close(torch.tensor(image.get_array().data, dtype=torch.float32), weights[2, 1])  # the weights drawn
    assert len(single.axes[0].texts) == 25  # every value written in its cell


# --- the command line -------------------------------------------------------------------------------------


def test_cli_attention(tiny_run, tmp_path, capsys):
    out = tmp_path / "attention.png"
    assert main(["attention", str(tiny_run), "the cat sat on the mat", "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == f"wrote {out}"
    assert_png(out)
    assert main(["attention", str(tiny_run), "the cat sat on the mat", "--out", str(out), "--layer", "1",
                 "--head", "3"]) == 0
    assert_png(out)


def test_cli_attention_errors(tiny_run, tmp_path, capsys, monkeypatch):
    out = str(tmp_path / "a.png")
    assert main(["attention", str(tmp_path / "nowhere"), "text", "--out", out]) == 1
    assert_one_line_error(capsys, "attention", str(tmp_path / "nowhere"), "checkpoint not found")
    assert main(["attention", str(tiny_run), "the cat", "--out", out, "--layer", "2"]) == 2
    assert_one_line_error(capsys, "attention", "layer: 2 is out of range", "2 layers, numbered 0 to 1")
    assert main(["attention", str(tiny_run), "the cat", "--out", out, "--head", "4"]) == 2
    assert_one_line_error(capsys, "attention", "head: 4 is out of range", "4 heads, numbered 0 to 3")
    assert main(["attention", str(tiny_run), "", "--out", out]) == 1
    assert_one_line_error(capsys, "attention", "no tokens")
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` now raises ImportError
    assert main(["attention", str(tiny_run), "the cat", "--out", out]) == 1
    assert_one_line_error(capsys, "attention", "matplotlib", "pip install 'bertmath[plot]'")
    assert not (tmp_path / "a.png").exists()
