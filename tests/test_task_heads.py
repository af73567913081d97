"""bertmath's token-classification and span (question-answering) heads against transformers' twins:
BertFor{TokenClassification,QuestionAnswering}, RoFormerFor..., ModernBertFor.... The same random weights give
the same logits, loss and gradients (fp32, ≤ 1e-5), padded and unpadded, with dropout on (one seed: the same
elements drop); a checkpoint exported with `bertmath export` loads into transformers' Auto classes with its
tag names, and a transformers directory imports back to the same weights."""

import json

import pytest
import torch
from torch.testing import assert_close

import bertmath
from bertmath import hf_format
from bertmath.checkpoint import model_files, save_checkpoint
from bertmath.config import Config, TaskConfig
from bertmath.errors import CheckpointError
from bertmath.model import BertForQuestionAnswering, BertForTokenClassification, TokenTransform
from bertmath.pretrained import export_checkpoint, load_model_and_tokenizer, read_checkpoint
from test_model_twins import (GRAD_ATOL, GRAD_RTOL, PARITY_ATOL, PARITY_RTOL, batch, hf_model, modern_config,
                              ours_from, randomize, roformer_config)

transformers = pytest.importorskip("transformers")

TAGS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
TWINS = {
    "Bert": lambda **c: bertmath.ModelConfig(**{**dict(vocab_size=99, hidden_size=32, num_layers=2, num_heads=4,
                                                       intermediate_size=37, max_position_embeddings=64,
                                                       activation="gelu"), **c}),
    "RoFormer": lambda **c: roformer_config(**{"pooler": "tanh", **c}),
    "ModernBert": lambda **c: modern_config(**c),
}
UNPAD = [pytest.param(False, id="padded"), pytest.param(True, id="unpadded")]
# Dropout on where the twins drop the same elements: BERT and RoFormer. ModernBERT drops out other places in its
# layers (hf_format.config_to_hf), so its training-mode parity runs without.
DROPOUT = {"Bert": 0.2, "RoFormer": 0.2, "ModernBert": 0.0}


def twin_model(twin, head, cfg):
    """transformers' `twin` model with the `head` on cfg's twin config, randomised (weights and biases)."""
    if twin == "Bert":
        torch.manual_seed(0)
        hf = {k: v for k, v in hf_format.config_to_hf(cfg).items() if k not in ("architectures", "model_type")}
        config = transformers.BertConfig(**hf, num_labels=len(TAGS) if head == "TokenClassification" else 2)
        config._attn_implementation = "eager"
        return randomize(getattr(transformers, f"BertFor{head}")(config).eval())
    return hf_model(f"{twin}For{head}", cfg, num_labels=len(TAGS) if head == "TokenClassification" else 2)


def inputs_of(cfg, T=20, lengths=(20, 11, 4)):
    ids, mask = batch(cfg.vocab_size, T, lengths)
    out = dict(input_ids=ids, attention_mask=mask)
    if cfg.type_vocab_size:
        out["token_type_ids"] = (torch.arange(T)[None, :] >= 6).long().expand_as(ids) * mask
    return out


def assert_same_gradients(ours, hf):
    theirs = hf_format.state_dict_from_hf({n: p.grad for n, p in hf.named_parameters() if p.grad is not None},
                                          layout=hf_format.family(ours.config),
                                          kind=hf_format.kind_of_architectures({"architectures": [type(hf).__name__]}))
    for name, p in ours.named_parameters():
        assert_close(p.grad, theirs[name], atol=GRAD_ATOL, rtol=GRAD_RTOL, msg=name)


@pytest.mark.parametrize("unpad", UNPAD)
@pytest.mark.parametrize("twin", list(TWINS))
def test_token_classifier_matches_transformers(twin, unpad):
    """z_t = W Drop(u_t) + b over every token; CE over the labelled tokens (-100 ignored)."""
    cfg = TWINS[twin](unpad=unpad, hidden_dropout=DROPOUT[twin], fused=unpad)
    hf = twin_model(twin, "TokenClassification", cfg).train()
    ours = ours_from(BertForTokenClassification, cfg, hf, num_labels=len(TAGS)).train()
    assert (ours.head is not None) == (twin == "ModernBert")
    inputs = inputs_of(cfg)
    g = torch.Generator().manual_seed(3)
    labels = torch.randint(0, len(TAGS), inputs["input_ids"].shape, generator=g)
    labels = labels.masked_fill(torch.rand(labels.shape, generator=g) < 0.3, -100).masked_fill(
        inputs["attention_mask"] == 0, -100)
    torch.manual_seed(7)
    expected = hf(**inputs, labels=labels)
    torch.manual_seed(7)
    got = ours(**inputs, labels=labels)
    real = inputs["attention_mask"].bool()
    assert_close(got.logits[real], expected.logits[real], atol=PARITY_ATOL, rtol=PARITY_RTOL)
    assert_close(got.loss, expected.loss, atol=PARITY_ATOL, rtol=PARITY_RTOL)
    expected.loss.backward()
    got.loss.backward()
    assert_same_gradients(ours, hf)


def masked_span_loss(start_logits, end_logits, mask, start, end):
    """The span loss with padding out of the softmax, computed independently from transformers' logits."""
    T = start_logits.shape[1]
    ce = lambda z, p: torch.nn.functional.cross_entropy(z.masked_fill(mask == 0, float("-inf")), p,  # noqa: E731
                                                        ignore_index=T)
    return (ce(start_logits, start.clamp(0, T)) + ce(end_logits, end.clamp(0, T))) / 2


@pytest.mark.parametrize("padding", [pytest.param((20, 20, 20), id="no_padding"), pytest.param((20, 11, 4), id="padded")])
@pytest.mark.parametrize("unpad", UNPAD)
@pytest.mark.parametrize("twin", list(TWINS))
def test_span_head_matches_transformers(twin, unpad, padding):
    """[s_t, e_t] = u_t W + b; loss = (CE(s, start) + CE(e, end)) / 2, a position beyond the window ignored.
    Without padding the loss is transformers'; with padding, transformers' softmax spans the padding too, and
    bertmath's is compared with the padding-free loss computed from transformers' logits (and its gradients)."""
    cfg = TWINS[twin](unpad=unpad, hidden_dropout=DROPOUT[twin], fused=not unpad)
    hf = twin_model(twin, "QuestionAnswering", cfg).train()
    ours = ours_from(BertForQuestionAnswering, cfg, hf).train()
    inputs = inputs_of(cfg, lengths=padding)
    start, end = torch.tensor([3, 0, 2]), torch.tensor([5, 40, 3])  # 40: outside the window, ignored
    torch.manual_seed(7)
    expected = hf(**inputs, start_positions=start, end_positions=end)
    torch.manual_seed(7)
    got = ours(**inputs, start_positions=start, end_positions=end)
    real = inputs["attention_mask"].bool()
    assert_close(got.start_logits[real], expected.start_logits[real], atol=PARITY_ATOL, rtol=PARITY_RTOL)
    assert_close(got.end_logits[real], expected.end_logits[real], atol=PARITY_ATOL, rtol=PARITY_RTOL)
    theirs = masked_span_loss(expected.start_logits, expected.end_logits, inputs["attention_mask"], start, end)
    if real.all():
        assert_close(theirs, expected.loss, atol=1e-6, rtol=1e-6)  # the same loss where there is no padding
    else:
        assert (theirs - expected.loss).abs() > 1e-3  # the two losses differ with padding: this test can tell
    assert_close(got.loss, theirs, atol=PARITY_ATOL, rtol=PARITY_RTOL)
    theirs.backward()
    got.loss.backward()
    assert_same_gradients(ours, hf)


def test_span_loss_of_a_padded_batch_is_its_examples():
    """Padding takes no probability: an example's loss is the same alone and padded in a batch."""
    cfg = TWINS["Bert"](unpad=False)
    torch.manual_seed(0)
    model = BertForQuestionAnswering(cfg).eval()
    inputs = inputs_of(cfg, T=12, lengths=(12, 5))
    start, end = torch.tensor([2, 1]), torch.tensor([4, 3])
    batch_loss = model(**inputs, start_positions=start, end_positions=end).loss
    alone = [model(**{k: v[i:i + 1, :n] for k, v in inputs.items()}, start_positions=start[i:i + 1],
                   end_positions=end[i:i + 1]).loss for i, n in enumerate((12, 5))]
    assert_close(batch_loss, sum(alone) / 2, atol=1e-6, rtol=1e-6)


def test_token_transform_is_its_formula():
    """ModernBERT's per-token head: u = LN(act(h W + b)), checked against torch.nn.functional."""
    cfg = modern_config(bias=True)
    transform = randomize(TokenTransform(cfg))
    h = torch.randn(2, 5, cfg.hidden_size)
    expected = torch.nn.functional.layer_norm(
        torch.nn.functional.gelu(h @ transform.dense.weight.T + transform.dense.bias), (cfg.hidden_size,),
        transform.norm.weight, transform.norm.bias, cfg.layer_norm_eps)
    assert_close(transform(h), expected, atol=1e-6, rtol=1e-6)


def test_all_ignored_labels_give_zero_loss_not_nan():
    cfg = TWINS["Bert"]()
    model = BertForTokenClassification(cfg, num_labels=3)
    ids = torch.randint(3, cfg.vocab_size, (2, 6))
    loss = model(ids, labels=torch.full_like(ids, -100)).loss
    assert loss.item() == 0.0


def test_modernbert_head_init_scheme():
    """ModernBERT's classifier: N(0, 1/D) truncated at ±2σ; its head's dense: σ/√(2N) truncated."""
    cfg = modern_config(hidden_size=64, num_heads=4, initializer_range=0.02)
    torch.manual_seed(0)
    model = BertForTokenClassification(cfg, num_labels=200)
    w = model.classifier.weight.detach()
    assert w.abs().max() <= 2 * 64 ** -0.5 + 1e-7
    assert abs(float(w.std()) - 64 ** -0.5 * 0.88) < 0.02  # a ±2σ-truncated normal's std is 0.88 σ
    dense = model.head.dense.weight.detach()
    out_std = 0.02 / (2 * cfg.num_layers) ** 0.5
    assert dense.abs().max() <= 2 * out_std + 1e-7


# --- import and export --------------------------------------------------------------------------------------


def save_task_run(directory, model, cfg, task, tokenizer):
    config = Config(model=cfg, task=task)
    save_checkpoint(directory, step=1, files=model_files(model.eval(), config, tokenizer), keep=1)
    return directory


@pytest.fixture(scope="module")
def tokenizer():
    from helpers import sentences
    from bertmath.tokenizer import train_tokenizer
    return train_tokenizer(sentences(), vocab_size=99)


@pytest.mark.parametrize("twin", list(TWINS))
@pytest.mark.parametrize("head", ["TokenClassification", "QuestionAnswering"])
def test_export_loads_into_transformers_and_imports_back(tmp_path, tokenizer, twin, head):
    """bertmath run → `export` → transformers' Auto class (tag names kept) gives the same logits; transformers'
    save_pretrained → bertmath reads the same weights back."""
    cfg = TWINS[twin](vocab_size=tokenizer.get_vocab_size(), pad_token_id=tokenizer.token_to_id("[PAD]"))
    torch.manual_seed(1)
    if head == "TokenClassification":
        model = randomize(BertForTokenClassification(cfg, num_labels=len(TAGS)))
        task = TaskConfig(init="x", train_file="a", eval_file="b", kind="tokens", label_names=TAGS)
        auto = transformers.AutoModelForTokenClassification
    else:
        model = randomize(BertForQuestionAnswering(cfg))
        task = TaskConfig(init="x", train_file="a", eval_file="b", kind="span", max_seq_len=64, max_question_tokens=16)
        auto = transformers.AutoModelForQuestionAnswering
    run = save_task_run(tmp_path / "run", model, cfg, task, tokenizer)
    out = export_checkpoint(run, tmp_path / "export")
    hf_json = json.loads((out / "config.json").read_text())
    assert hf_json["architectures"] == [f"{twin}For{head}"]
    theirs = auto.from_pretrained(out).eval()
    if head == "TokenClassification":
        assert [theirs.config.id2label[i] for i in range(len(TAGS))] == TAGS
    inputs = inputs_of(cfg, T=12, lengths=(12, 5))
    with torch.no_grad():
        expected, got = theirs(**inputs), model.eval()(**inputs)
    real = inputs["attention_mask"].bool()
    names = ["logits"] if head == "TokenClassification" else ["start_logits", "end_logits"]
    for name in names:
        assert_close(getattr(got, name)[real], getattr(expected, name)[real], atol=PARITY_ATOL, rtol=PARITY_RTOL)
    # transformers' own save (its config.json names the class) imports back to the same weights
    theirs.save_pretrained(tmp_path / "saved")
    tokenizer.save(str(tmp_path / "saved" / "tokenizer.json"))
    _, _, state = read_checkpoint(tmp_path / "saved")
    for name, tensor in model.state_dict().items():
        assert torch.equal(state[name], tensor), name
    cls = BertForTokenClassification if head == "TokenClassification" else BertForQuestionAnswering
    loaded, _ = load_model_and_tokenizer(cls, tmp_path / "saved")
    assert type(loaded) is cls


def test_a_task_model_from_another_tasks_checkpoint_is_one_line(tmp_path, tokenizer):
    cfg = TWINS["Bert"](vocab_size=tokenizer.get_vocab_size())
    task = TaskConfig(init="x", train_file="a", eval_file="b", kind="tokens", label_names=TAGS)
    run = save_task_run(tmp_path / "run", BertForTokenClassification(cfg, num_labels=5), cfg, task, tokenizer)
    with pytest.raises(CheckpointError, match="not a fine-tuned question-answering model .*token classifier"):
        load_model_and_tokenizer(BertForQuestionAnswering, run)
    with pytest.raises(CheckpointError, match="not a fine-tuned classifier"):
        load_model_and_tokenizer(bertmath.BertForSequenceClassification, run)


@pytest.mark.parametrize("twin,pooler,word", [("Bert", "act_norm", "directly"), ("ModernBert", "tanh", "ModernBERT")])
def test_export_refuses_a_token_head_its_twin_lacks(tmp_path, tokenizer, twin, pooler, word):
    """The token heads have ModernBERT's transform exactly when the twin is ModernBERT (model.pooler act_norm)."""
    cfg = TWINS[twin](vocab_size=tokenizer.get_vocab_size(), pooler=pooler)
    task = TaskConfig(init="x", train_file="a", eval_file="b", kind="span", max_seq_len=64, max_question_tokens=16)
    run = save_task_run(tmp_path / "run", BertForQuestionAnswering(cfg), cfg, task, tokenizer)
    with pytest.raises(CheckpointError, match=f"model.pooler is '{pooler}'.*{word}"):
        export_checkpoint(run, tmp_path / "export")
