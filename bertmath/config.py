"""Configuration: frozen dataclasses mirrored one-to-one by YAML sections `model:`, `data:`, `train:`
(and `task:` for fine-tuning).

Precedence: dataclass defaults < YAML file < overrides (`--set train.lr=3e-4`, parsed as YAML scalars). Two keys
that decide one thing (a fine-tuning run's length: task.epochs, train.max_steps) follow the same rule, the
command line over the file (run_length); the config remembers which keys `--set` gave for that (Config.set_keys).
Unknown keys, wrong types and out-of-range values raise `ConfigError` naming the file and key path.
This is the only module that reads YAML.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from .errors import ConfigError

Activation = Literal["relu", "gelu", "gelu_tanh"]
PositionEncoding = Literal["learned", "alibi", "rope"]
Norm = Literal["post", "pre"]
FeedForwardKind = Literal["mlp", "glu"]
RopeStyle = Literal["interleaved", "half"]
PoolerKind = Literal["tanh", "act", "act_norm"]
Pooling = Literal["cls", "mean"]
SentencePooling = Literal["mean", "cls", "max"]  # functional.POOLING
InitScheme = Literal["bert", "modernbert"]


@dataclass(frozen=True)
class ModelConfig:
    """The BERT encoder's shape. Defaults are BERT-base except `activation` (ReLU, the design choice)."""

    vocab_size: int = 30522  # tokens in the WordPiece vocabulary
    hidden_size: int = 768  # D, width of every token vector
    num_layers: int = 12  # N encoder layers
    num_heads: int = 12  # H attention heads; head size D/H
    intermediate_size: int = 3072  # feed-forward inner width (4D in BERT)
    max_position_embeddings: int = 512  # learned: rows of the position table; alibi/rope: longest input the tools accept
    type_vocab_size: int = 2  # segment ids (sentence A / B); 0: no segment embeddings (ModernBERT), ids ignored
    activation: Activation = "relu"  # feed-forward and MLM-head nonlinearity; BERT's checkpoints use gelu
    hidden_dropout: float = 0.1  # dropout on embeddings and on each residual branch
    attention_dropout: float = 0.1  # dropout on the attention weights
    layer_norm_eps: float = 1e-12
    initializer_range: float = 0.02  # std of the normal init of weights
    tie_word_embeddings: bool = True  # MLM decoder shares the token-embedding matrix
    pad_token_id: int = 0
    fused: bool = False  # route softmax/attention/layer_norm/... to torch's fused kernels
    fused_qkv: bool = False  # one (D, 3D) matmul for Q, K, V instead of three (D, D)
    sparse_mlm: bool = False  # in training, project to the vocabulary only at masked positions
    unpad: bool = True  # padded batches: every layer but the attention runs on the real tokens only (same math)
    # How the model knows token order. learned: BERT's absolute position table (Devlin+19); alibi: a bias
    # -m_h·|i-j| on the attention logits (Press+22); rope: q and k rotated by their position (Su+21).
    # alibi and rope have no parameters, give every head a sense of distance from step 0, and extrapolate
    # to inputs longer than the training length; transformers' BERT (export) knows only "learned".
    position_encoding: PositionEncoding = "learned"
    rope_base: float = 10000.0  # rope: θ_i = base^(-2i/d_head), the rotation frequencies (of the global layers)
    # rope: which dimensions form the rotated pairs. interleaved: (x_2i, x_2i+1), RoFormer's (Su+21) and
    # transformers' RoFormer; half: (x_i, x_i+d/2), GPT-NeoX's and ModernBERT's (Warner+24). Same math, permuted.
    rope_style: RopeStyle = "interleaved"
    # Where the LayerNorms sit. post: h = LN(x + Attn(x)), BERT's (Devlin+19). pre: h = x + Attn(LN(x)), with one
    # more LN after the last layer (Xiong+20; ModernBERT, whose first layer reads the embeddings' LN directly).
    norm: Norm = "post"
    # The feed-forward. mlp: act(x W₁) W₂ (BERT). glu: (act(x W_in) ⊙ x W_gate) W_out, GeGLU with gelu
    # (Shazeer 2020; ModernBERT): a third F×D matrix; ModernBERT keeps the parameters level with F ≈ 1.5 D.
    ffn: FeedForwardKind = "mlp"
    bias: bool = True  # biases in the linear layers and LayerNorms (false: ModernBERT; the decoder keeps its own)
    # Sliding-window attention (Beltagy+20; ModernBERT: 128): local layers see only keys with |i - j| <= w/2.
    # null: every layer global, as BERT. Layer l is global when l % global_every == 0 (ModernBERT: every 3rd).
    local_attention: int | None = None
    global_every: int = 3
    local_rope_base: float | None = None  # rope base of the local layers; null = rope_base (ModernBERT: 10000)
    # A classifier's pooler u (z = W_c Drop(u) + b_c, BertForSequenceClassification): tanh: tanh(W h_[CLS] + b)
    # (BERT); act: act(W Drop(h_[CLS]) + b) (transformers' RoFormer); act_norm: LN(act(W h + b)) (ModernBERT).
    pooler: PoolerKind = "tanh"
    pooling: Pooling = "cls"  # the h the pooler reads: [CLS]'s, or the mean over real tokens (act_norm only)
    # bert: N(0, initializer_range²). modernbert: truncated at ±2σ, σ = initializer_range, and σ/√(2·num_layers)
    # for the layers' output projections and the heads' dense layer (Warner+24, after Megatron's scaled init).
    init_scheme: InitScheme = "bert"

    def __post_init__(self):
        for name in ("vocab_size", "hidden_size", "num_layers", "num_heads", "intermediate_size",
                     "max_position_embeddings"):
            _require(getattr(self, name) > 0, f"model.{name}", f"must be positive, got {getattr(self, name)}")
        _require(self.type_vocab_size >= 0, "model.type_vocab_size",
                 f"must be >= 0 (0: no segment embeddings), got {self.type_vocab_size}")
        _require(self.hidden_size % self.num_heads == 0, "model.hidden_size",
                 f"hidden_size ({self.hidden_size}) must be divisible by num_heads ({self.num_heads})")
        for name in ("hidden_dropout", "attention_dropout"):
            _require_probability(getattr(self, name), f"model.{name}")
        _require(self.layer_norm_eps > 0, "model.layer_norm_eps", f"must be positive, got {self.layer_norm_eps}")
        _require(self.initializer_range > 0, "model.initializer_range",
                 f"must be positive, got {self.initializer_range}")
        _require(0 <= self.pad_token_id < self.vocab_size, "model.pad_token_id",
                 f"must be a token id in [0, {self.vocab_size}), got {self.pad_token_id}")
        rope = self.position_encoding == "rope"
        _require(not rope or self.head_size % 2 == 0, "model.rope_style" if self.rope_style == "half" else
                 "model.position_encoding", f"rope ({self.rope_style}) rotates pairs of dimensions, so the head size "
                 f"must be even; hidden_size/num_heads = {self.hidden_size}/{self.num_heads} = {self.head_size}")
        _require(self.rope_base > 1, "model.rope_base", f"must be greater than 1, got {self.rope_base}")
        _require(rope or self.rope_style == "interleaved", "model.rope_style",
                 f"'{self.rope_style}' applies to rotary positions; model.position_encoding is '{self.position_encoding}'")
        _require(self.local_rope_base is None or rope, "model.local_rope_base",
                 f"applies to rotary positions; model.position_encoding is '{self.position_encoding}'")
        _require(self.local_rope_base is None or self.local_rope_base > 1, "model.local_rope_base",
                 f"must be greater than 1, got {self.local_rope_base}")
        _require(self.local_rope_base is None or self.local_attention is not None, "model.local_rope_base",
                 "is the base of the local layers; set model.local_attention (the window) too")
        if self.local_attention is not None:
            _require(2 <= self.local_attention <= self.max_position_embeddings, "model.local_attention",
                     f"the window must be between 2 and max_position_embeddings ({self.max_position_embeddings}) "
                     f"tokens, got {self.local_attention}")
        _require(self.global_every >= 1, "model.global_every", f"must be at least 1, got {self.global_every}")
        _require(self.pooling == "cls" or self.pooler == "act_norm", "model.pooling",
                 f"'mean' pooling goes with model.pooler 'act_norm' (ModernBERT's head), not '{self.pooler}'")

    @property
    def head_size(self) -> int:
        return self.hidden_size // self.num_heads

    def is_local(self, layer: int) -> bool:
        """Whether layer `layer` (0-based) attends within the sliding window: all but every global_every-th."""
        return self.local_attention is not None and layer % self.global_every != 0


@dataclass(frozen=True)
class DataConfig:
    """Where the text comes from, how it is tokenised, packed and masked."""

    source: Literal["embedded", "text", "jsonl", "parquet", "hub"] = "embedded"
    paths: list[str] = field(default_factory=list)  # files or globs for text / jsonl / parquet
    documents: Literal["file", "paragraph"] = "paragraph"  # text files: one document per file or per blank-line block
    text_column: str = "text"  # jsonl / parquet / hub column holding the text
    hub_dataset: str | None = None  # e.g. "wikimedia/wikipedia" (needs internet)
    hub_config: str | None = None  # e.g. "20231101.en"
    hub_split: str = "train"
    max_documents: int | None = None  # take only the first N documents (quick runs)
    eval_fraction: float = 0.02  # share of documents held out for evaluation (fixed by content hash)
    tokenizer: str | None = None  # tokenizer.json or vocab.txt to load; None trains one on the corpus
    # bytes of text a trained tokenizer learns from: the whole corpus up to this size, else an even sample of
    # it (the first share of every 64 MB piece), so training the vocabulary costs the same at 1 GB and 100 GB
    tokenizer_sample_bytes: int = 1_000_000_000
    lowercase: bool = True
    max_seq_len: int = 128  # tokens per packed block, [CLS] and [SEP] included
    mlm_probability: float = 0.15  # share of non-special tokens chosen for prediction
    mask_token_probability: float = 0.8  # chosen tokens replaced by [MASK]
    random_token_probability: float = 0.1  # chosen tokens replaced by a random token (the rest stay)
    whole_word_masking: bool = False  # choose whole words, not word pieces
    cache_dir: str | None = None  # tokenised pieces and packed blocks (about twice the corpus's size); None = out_dir/cache

    def __post_init__(self):
        for name in ("eval_fraction", "mlm_probability", "mask_token_probability", "random_token_probability"):
            _require_probability(getattr(self, name), f"data.{name}")
        _require(self.mask_token_probability + self.random_token_probability <= 1.0, "data.random_token_probability",
                 "mask_token_probability + random_token_probability must be at most 1")
        _require(self.max_seq_len >= 8, "data.max_seq_len", f"must be at least 8, got {self.max_seq_len}")
        _require(self.source not in ("text", "jsonl", "parquet") or bool(self.paths), "data.paths",
                 f"data.source '{self.source}' needs at least one path")
        for number, path in enumerate(self.paths, start=1):  # "" would name the current directory, or glob "/"
            _require(bool(path.strip()), "data.paths", f"entry {number} is an empty path; name a file or a glob")
        _require(self.source in ("text", "jsonl", "parquet") or not self.paths, "data.paths",
                 f"data.source is '{self.source}', which reads no paths (set data.source: text, jsonl or parquet)")
        _require(self.source != "hub" or bool(self.hub_dataset), "data.hub_dataset",
                 "data.source 'hub' needs data.hub_dataset")
        _require(self.max_documents is None or self.max_documents > 0, "data.max_documents", "must be positive")
        _require(self.tokenizer_sample_bytes > 0, "data.tokenizer_sample_bytes", "must be positive")


@dataclass(frozen=True)
class TrainConfig:
    """The optimisation: AdamW, warm-up + decay, precision, checkpoints, evaluation."""

    out_dir: str = "checkpoints/run"
    max_steps: int = 1000  # optimizer steps
    batch_size: int = 32  # sequences per micro-batch, all processes together (each of P takes batch_size / P)
    grad_accum_steps: int = 1  # micro-batches per optimizer step: batch_size · grad_accum_steps sequences per step
    lr: float = 1e-4  # peak learning rate
    min_lr_ratio: float = 0.0  # final lr = lr * min_lr_ratio
    # the last fraction of the steps after warm-up over which the lr decays; before it the peak holds. 1: decay
    # from the warm-up's end (BERT); 0.2: warmup-stable-decay (Hägele et al. 2024, arXiv 2405.18392)
    decay_fraction: float = 1.0
    warmup_steps: int = 100
    schedule: Literal["linear", "cosine", "constant"] = "linear"  # decay after warm-up
    # What the decay runs towards. max_steps: step max_steps. time: the last step that max_time_minutes
    # allows (Cramming's budgeted schedule, Geiping & Goldstein 2023), estimated from the step time measured
    # over steps 10-50, then again at each checkpoint (save_every) from the steps since the last; saved in the
    # checkpoint, so a resumed run keeps the schedule it was on.
    schedule_horizon: Literal["max_steps", "time"] = "max_steps"
    weight_decay: float = 0.01  # not applied to biases and LayerNorm
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_eps: float = 1e-6
    grad_clip: float = 1.0  # max global grad norm; 0 disables
    # autocast dtype; weights stay fp32. auto: bf16 where the hardware multiplies it natively (CUDA, a CPU
    # with AVX512-BF16 or AMX), else fp32 (bertmath/hardware.py); bf16 on an AVX2-only CPU is ~75x slower.
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    seed: int = 0
    eval_every: int = 200  # steps between held-out evaluations (and one at the end)
    eval_batches: int = 20  # batches per evaluation (a fixed set, same masks each time)
    save_every: int = 200  # steps between checkpoints (and one at the end)
    keep_checkpoints: int = 2  # older step-XXXXXXX/ copies kept besides the latest
    resume: Literal["never", "auto", "required"] = "auto"  # auto: continue if out_dir has a checkpoint
    # A resume compares the data the checkpoint was trained on (the corpus's files, data.max_seq_len,
    # data.eval_fraction, the masking settings) with today's and refuses a change; true continues on the new
    # data (with a warning): the step and the batch order go on, over the new blocks.
    allow_data_change: bool = False
    compile: bool = False  # torch.compile the model
    activation_checkpointing: bool = False  # recompute each layer in backward: less memory, ~1/3 more compute
    max_time_minutes: float | None = None  # stop (and save) after this wall time
    num_threads: int | None = None  # torch CPU threads; None = torch's default
    parallel: Literal["auto", "ddp", "fsdp"] = "auto"  # under torchrun: auto = ddp; ddp/fsdp also demand torchrun
    timeout_minutes: float = 10.0  # a collective waiting longer (a hung or lost process) aborts the job
    plot: bool = True  # draw out_dir/training.png at the end of a run (where matplotlib is installed)

    def __post_init__(self):
        for name in ("max_steps", "batch_size", "grad_accum_steps", "eval_every", "save_every", "eval_batches"):
            _require(getattr(self, name) > 0, f"train.{name}", f"must be positive, got {getattr(self, name)}")
        _require(self.lr > 0, "train.lr", f"must be positive, got {self.lr}")
        _require(self.warmup_steps >= 0, "train.warmup_steps", "must be >= 0")
        _require(self.keep_checkpoints >= 0, "train.keep_checkpoints", "must be >= 0")
        _require(self.grad_clip >= 0, "train.grad_clip", "must be >= 0 (0 disables clipping)")
        _require(self.weight_decay >= 0, "train.weight_decay", "must be >= 0")
        for name in ("adam_beta1", "adam_beta2", "min_lr_ratio"):
            _require_probability(getattr(self, name), f"train.{name}")
        _require(0 < self.decay_fraction <= 1, "train.decay_fraction", f"must be in (0, 1], got {self.decay_fraction}")
        _require(self.max_time_minutes is None or self.max_time_minutes > 0, "train.max_time_minutes",
                 "must be positive")
        _require(self.num_threads is None or self.num_threads > 0, "train.num_threads", "must be positive")
        _require(self.timeout_minutes > 0, "train.timeout_minutes", "must be positive")
        _require(self.schedule_horizon != "time" or self.max_time_minutes is not None, "train.schedule_horizon",
                 "'time' needs train.max_time_minutes, the budget the schedule runs on")


TaskKind = Literal["sequence", "tokens", "span", "embedding"]
TaskMetric = Literal["accuracy", "f1", "matthews", "pearson", "spearman", "precision", "recall", "exact_match",
                     "ndcg@10", "mrr@10", "map@100", "recall@1", "recall@5", "recall@10"]
# The scores each kind of task reports (its task.metric picks one); the first is the default. An embedding task is
# scored as similarity (an eval file of scored pairs: the cosine's correlation with the scores) or as retrieval
# (an eval file of anchor/positive pairs: each anchor a query, the positives its relevant documents).
TASK_METRICS = {"classification": ("accuracy", "f1", "matthews"), "regression": ("pearson", "spearman"),
                "tokens": ("f1", "precision", "recall", "accuracy"), "span": ("f1", "exact_match"),
                "similarity": ("spearman", "pearson"),
                "retrieval": ("ndcg@10", "mrr@10", "map@100", "recall@1", "recall@5", "recall@10")}
EmbeddingLoss = Literal["mnrl", "cached_mnrl", "cosent"]


@dataclass(frozen=True)
class TaskConfig:
    """A fine-tuning task (`bertmath finetune`): labelled examples, the checkpoint to start from, the score.
    The model's shape comes from `init`; `train:` holds the optimisation as for pretraining. BERT's four task
    shapes (Devlin et al. 2019, Figure 4) are three kinds: a sentence or a pair classified or scored (sequence),
    a label per token (tokens), an answer span in a passage (span); a fourth, embedding, trains a text's vector
    (Sentence-BERT, Reimers & Gurevych 2019) on pairs."""

    # sequence: one label (or score) per text or pair (.csv/.tsv/.jsonl); tokens: a tag per word (CoNLL column
    # files, or .jsonl with `tokens` and `tags`); span: the answer's start and end in a passage (SQuAD JSON);
    # embedding: a text → a vector (.csv/.tsv/.jsonl of anchor/positive[/negative] or sentence1/sentence2/score)
    kind: TaskKind = "sequence"

    # bertmath run or step directory, or a transformers BERT, RoFormer or ModernBERT directory (e.g. MiniLM's)
    init: str = ""
    train_file: str | None = None  # .csv, .tsv or .jsonl with a header / keys naming the columns
    eval_file: str | None = None
    hub_dataset: str | None = None  # instead of files (needs internet): e.g. "glue"
    hub_config: str | None = None  # e.g. "sst2"
    hub_splits: list[str] = field(default_factory=lambda: ["train", "validation"])  # train split, eval split
    text_columns: list[str] = field(default_factory=lambda: ["sentence"])  # one column, or two for sentence pairs
    label_column: str = "label"
    # sequence: classes (1 = regression, a real-valued score, mean-squared error); null = len(label_names) or 2.
    # tokens: the tags, len(label_names); span: 2 (a start and an end logit per token)
    num_labels: int | None = None
    # names of labels 0..num_labels-1; files may use them. tokens: the tag set, e.g. [O, B-PER, I-PER]
    label_names: list[str] = field(default_factory=list)
    # the score that picks the best step and leads the report; null: accuracy (classification), pearson
    # (regression), f1 (tokens: entity-level, CoNLL's; span: SQuAD's token F1)
    metric: TaskMetric | None = None
    max_seq_len: int = 128  # tokens per example (span: per window), [CLS] and [SEP]s included; longer are truncated
    # span: tokens of passage two windows share, when a passage needs several (run_qa.py's stride); null: 128,
    # or half a window when the window is shorter than 256 tokens
    doc_stride: int | None = None
    max_question_tokens: int = 64  # span: a longer question is cut to this many tokens
    max_answer_tokens: int = 30  # span: the longest answer predicted, in tokens
    # passes over the training set; when given it sets train.max_steps, unless `--set train.max_steps=N` is on the
    # command line and task.epochs is not: the command line wins over the file; from the file, task.epochs wins
    # (both given with --set: an error). The run logs which one decided (run_length)
    epochs: float | None = None
    fused: bool = True  # torch's fused kernels for the model from init (same math; model.fused)
    # The classifier's pooler and what it reads (model.pooler, model.pooling); null: the init checkpoint's
    # (tanh for BERT and bertmath's own runs, act for RoFormer, act_norm for ModernBERT). A rope model fine-tuned
    # with pooler act exports as transformers' RoFormerForSequenceClassification.
    pooler: PoolerKind | None = None
    pooling: Pooling | None = None
    # embedding: a text's vector e = pool(h) over the encoder's last hidden states (model.BertForSentenceEmbedding):
    # mean of the real tokens (Sentence-BERT, Reimers & Gurevych 2019), [CLS]'s, or the per-dimension max
    sentence_pooling: SentencePooling = "mean"
    normalize: bool = True  # embedding: ê = e / ‖e‖₂, so that a dot product is the cosine similarity
    # embedding: the training loss (bertmath/tasks/contrastive.py). mnrl: in-batch negatives, the CE of
    # scale·cos(a_i, c_j) against the anchor's own positive among every positive and hard negative of the batch
    # (InfoNCE, van den Oord et al. 2018; Henderson et al. 2017); train file: anchor/positive[/negative] pairs.
    # cached_mnrl: the same loss and gradients in the memory of task.mini_batch_size texts (GradCache, Gao et
    # al. 2021). cosent: log(1 + Σ_{s_i > s_j} e^{scale·(cos_j − cos_i)}) over scored pairs (Su 2022); train
    # file: sentence1/sentence2/score
    loss: EmbeddingLoss = "mnrl"
    scale: float = 20.0  # embedding: the similarities' scale (1/temperature; 20 = sentence-transformers' for both)
    symmetric: bool = False  # mnrl, cached_mnrl: also the CE of each positive against every anchor, averaged
    mini_batch_size: int = 32  # cached_mnrl: texts per forward pass
    # embedding: the scale of scored pairs' scores (STS-B: 0 to 5); a score outside it is an error naming its
    # line; scores are kept as (s − low) / (high − low), in [0, 1]
    score_range: list[float] = field(default_factory=lambda: [0.0, 5.0])
    # embedding: unsupervised SimCSE (Gao et al. 2021): every document of the data: section (the corpus, read as
    # for pretraining) paired with itself, two forward passes whose dropout masks are the only noise, loss mnrl.
    # Needs task.eval_file alone (no task.train_file)
    simcse: bool = False

    def __post_init__(self):
        _require(bool(self.init), "task.init", "needs the checkpoint to fine-tune (a bertmath run or step "
                 "directory, or a transformers BERT, RoFormer or ModernBERT directory)")
        if self.simcse:
            _require(self.kind == "embedding", "task.simcse", f"trains sentence embeddings (task.kind: embedding), "
                     f"not task.kind '{self.kind}'")
            _require(self.train_file is None and self.hub_dataset is None, "task.train_file",
                     "task.simcse trains on the corpus of the data: section; leave task.train_file out")
            _require(self.eval_file is not None, "task.eval_file",
                     "task.simcse needs task.eval_file (scored pairs, or anchor/positive pairs)")
            _require(self.loss != "cosent", "task.loss", "task.simcse pairs each text with itself: use mnrl or "
                     "cached_mnrl, not cosent (which needs scored pairs)")
        else:
            has_files = self.train_file is not None or self.eval_file is not None
            _require(has_files != (self.hub_dataset is not None), "task.train_file",
                     "give task.train_file and task.eval_file, or task.hub_dataset (not both)")
            _require(not has_files or (self.train_file is not None and self.eval_file is not None), "task.eval_file",
                     "give both task.train_file and task.eval_file")
        _require(len(self.hub_splits) == 2, "task.hub_splits", f"expected [train, eval], got {self.hub_splits}")
        _require(len(self.text_columns) in (1, 2), "task.text_columns",
                 f"expected one column (single sentences) or two (pairs), got {self.text_columns}")
        # num_labels and metric left out (null) are resolved here, once: the recorded config says what ran
        if self.kind == "tokens":
            _require(len(self.label_names) >= 2, "task.label_names",
                     f"a tagging task needs its tag set, e.g. [O, B-PER, I-PER], got {self.label_names}")
            _require(self.num_labels in (None, len(self.label_names)), "task.num_labels",
                     f"is {self.num_labels}, but task.label_names has {len(self.label_names)} tags (leave it out)")
            object.__setattr__(self, "num_labels", len(self.label_names))
        elif self.kind == "span":
            _require(self.num_labels in (None, 2), "task.num_labels",
                     f"a span task has 2 outputs per token (start, end), got {self.num_labels} (leave it out)")
            _require(not self.label_names, "task.label_names", "a span task has no labels (leave it out)")
            object.__setattr__(self, "num_labels", 2)
        elif self.kind == "embedding":
            self._check_embedding()
        elif self.num_labels is None:
            object.__setattr__(self, "num_labels", len(self.label_names) or 2)
        if self.kind != "embedding":
            _require(self.num_labels >= 1, "task.num_labels",
                     f"must be at least 1 (1 = regression), got {self.num_labels}")
        _require(not self.label_names or len(self.label_names) == self.num_labels, "task.label_names",
                 f"has {len(self.label_names)} names for {self.num_labels} labels")
        # a name twice would be two labels to the export's label2id (its last index) but one to training (its first)
        twice = next((name for n, name in enumerate(self.label_names) if name in self.label_names[:n]), None)
        _require(twice is None, "task.label_names", f"'{twice}' appears twice; give every label its own name")
        scoring = self.scoring
        if self.metric is None and self.kind != "embedding":  # embedding: the eval file's kind decides (pairs.py)
            object.__setattr__(self, "metric", TASK_METRICS[scoring][0])
        _require(self.metric is None or self.metric in TASK_METRICS[scoring], "task.metric",
                 f"'{self.metric}' does not score {scoring}" +
                 (f" (num_labels {self.num_labels})" if self.kind == "sequence" else "") +
                 f": use {', '.join(TASK_METRICS[scoring][:-1])} or {TASK_METRICS[scoring][-1]}")
        _require(self.max_seq_len >= 4, "task.max_seq_len", f"must be at least 4, got {self.max_seq_len}")
        if self.doc_stride is None:
            object.__setattr__(self, "doc_stride", max(1, min(128, (self.max_seq_len - self.max_question_tokens - 3) // 2)))
        for name in ("doc_stride", "max_question_tokens", "max_answer_tokens"):
            _require(getattr(self, name) >= 1, f"task.{name}", f"must be positive, got {getattr(self, name)}")
        if self.kind == "span":
            _require(self.max_question_tokens + 3 < self.max_seq_len, "task.max_question_tokens",
                     f"{self.max_question_tokens} question tokens leave no room for the passage in "
                     f"task.max_seq_len ({self.max_seq_len}) tokens")
            _require(self.doc_stride < self.max_seq_len - self.max_question_tokens - 3, "task.doc_stride",
                     f"windows of at most {self.max_seq_len - self.max_question_tokens - 3} passage tokens cannot "
                     f"overlap by {self.doc_stride}: lower task.doc_stride or raise task.max_seq_len")
        _require(self.epochs is None or self.epochs > 0, "task.epochs", "must be positive")


    def _check_embedding(self) -> None:
        """An embedding task has no labels and no classifier pooler; its loss's keys are in range."""
        _require(self.num_labels is None and not self.label_names, "task.num_labels",
                 "an embedding task has no labels (leave task.num_labels and task.label_names out)")
        for key in ("pooler", "pooling"):
            _require(getattr(self, key) is None, f"task.{key}", "is the classifier's pooler; an embedding task "
                     "pools with task.sentence_pooling (mean, cls or max)")
        _require(self.scale > 0, "task.scale", f"must be positive, got {self.scale}")
        _require(self.mini_batch_size >= 1, "task.mini_batch_size", f"must be positive, got {self.mini_batch_size}")
        _require(not self.symmetric or self.loss != "cosent", "task.symmetric", "applies to mnrl and cached_mnrl")
        _require(len(self.score_range) == 2 and self.score_range[0] < self.score_range[1], "task.score_range",
                 f"expected [low, high] with low < high, got {self.score_range}")
        scorings = ("similarity", "retrieval")
        _require(self.metric is None or any(self.metric in TASK_METRICS[k] for k in scorings), "task.metric",
                 f"'{self.metric}' does not score embeddings: use "
                 f"{', '.join(TASK_METRICS['similarity'] + TASK_METRICS['retrieval'])}")

    @property
    def scoring(self) -> str:
        """Which scores apply: classification, regression (sequence tasks), tokens, span, or for embeddings
        similarity (scored eval pairs) or retrieval (anchor/positive eval pairs), as task.metric says."""
        if self.kind == "embedding":
            return "retrieval" if self.metric in TASK_METRICS["retrieval"] else "similarity"
        if self.kind != "sequence":
            return self.kind
        return "regression" if self.num_labels == 1 else "classification"


@dataclass(frozen=True)
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    task: TaskConfig | None = None  # fine-tuning only (bertmath finetune)
    # Not a setting but where settings came from: the keys `--set` gave ("train.max_steps"), for the settings
    # whose precedence is the command line's over the file's (run_length). Neither read from nor written to YAML.
    set_keys: frozenset[str] = field(default=frozenset(), compare=False, repr=False, metadata={"yaml": False})


# The two settings that decide a fine-tuning run's length.
LENGTH_KEYS = ("task.epochs", "train.max_steps")


def run_length(config: Config) -> tuple[str, str]:
    """(the key that decides a fine-tuning run's length, why): task.epochs or train.max_steps. One rule, as for
    every override: the command line (`--set`) wins over the file. From the file alone task.epochs wins: it is
    the unit a fine-tuning recipe is written in, while train.max_steps has a default. Both given with --set are
    refused when the config loads (config_from_dict)."""
    if config.task is None or config.task.epochs is None:
        return "train.max_steps", "task.epochs is not set"
    if "task.epochs" in config.set_keys:
        return "task.epochs", "given with --set, which wins over train.max_steps from the file"
    if "train.max_steps" in config.set_keys:
        return "train.max_steps", "given with --set, which wins over task.epochs from the file"
    return "task.epochs", "from the file, task.epochs wins over train.max_steps"


def _require(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"{key}: {message}")


def _require_probability(value: float, key: str) -> None:
    _require(0.0 <= value <= 1.0, key, f"must be a probability in [0, 1], got {value}")


# --- YAML <-> dataclasses -------------------------------------------------------------------------


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads `3e-4` as a float (YAML 1.1 wants `3.0e-4`)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:\d[\d_]*)?(?:\.\d*)?[eE][-+]?\d+$|^[-+]?\d[\d_]*\.\d*$|^[-+]?\.\d+$"
               r"|^[-+]?\.(?:inf|Inf|INF)$|^\.(?:nan|NaN|NAN)$"),
    list("-+0123456789."),
)


def _parse_yaml(text: str, where: str) -> Any:
    try:
        return yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{where}:{line}: YAML syntax error: {problem}") from None


_UNION = (typing.Union, types.UnionType)


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if typing.get_origin(tp) in _UNION:
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if typing.get_origin(tp) is list:
        return f"list of {_type_name(typing.get_args(tp)[0])}"
    return "null" if tp is type(None) else tp.__name__


def _check_value(value: Any, tp: Any, key: str, where: str) -> Any:
    """Return `value` as type `tp` (int accepted for float) or raise a one-line ConfigError."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        if value in typing.get_args(tp) and isinstance(value, str):
            return value
    elif origin in _UNION:
        for option in typing.get_args(tp):
            try:
                return _check_value(value, option, key, where)
            except ConfigError:
                pass
    elif origin is list:
        if isinstance(value, list):
            return [_check_value(v, typing.get_args(tp)[0], key, where) for v in value]
        if isinstance(value, str):  # a single path is a list of one
            return [_check_value(value, typing.get_args(tp)[0], key, where)]
    elif tp is type(None):
        if value is None:
            return None
    elif tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    raise ConfigError(f"{where}: {key}: expected {_type_name(tp)}, got {value!r}")


# Keys earlier versions read, and why they went: a YAML written for them gets this, not "unknown key".
REMOVED_KEYS = {
    "data.num_proc": "removed: tokenising uses every core through the tokenizer's own threads (and every "
                     "torchrun process, which share the pieces); delete the key",
}


def _yaml_keys(cls: type) -> list[str]:
    """The fields of a config dataclass that YAML holds (all but Config.set_keys)."""
    return [f.name for f in dataclasses.fields(cls) if f.metadata.get("yaml", True)]


def _build(cls: type, values: dict, prefix: str, where: str):
    hints = typing.get_type_hints(cls)
    names = _yaml_keys(cls)
    kwargs = {}
    for key, value in values.items():
        path = f"{prefix}{key}"
        if path in REMOVED_KEYS:
            raise ConfigError(f"{where}: {path}: {REMOVED_KEYS[path]}")
        if key not in names:
            raise ConfigError(f"{where}: unknown key '{path}'; valid keys: {', '.join(names)}")
        section = _section_type(hints[key])
        if section is not None:
            if value is None and hints[key] is not section:  # an optional section left out
                kwargs[key] = None
                continue
            if not isinstance(value, dict):
                raise ConfigError(f"{where}: {path}: expected a mapping of keys, got {value!r}")
            kwargs[key] = _build(section, value, f"{path}.", where)
        else:
            kwargs[key] = _check_value(value, hints[key], path, where)
    try:
        return cls(**kwargs)
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None


def _section_type(tp: Any) -> type | None:
    """The dataclass of a config section typed `Section` or `Section | None`, else None."""
    if dataclasses.is_dataclass(tp):
        return tp
    if typing.get_origin(tp) in _UNION:
        return next((a for a in typing.get_args(tp) if dataclasses.is_dataclass(a)), None)
    return None


def _apply_override(tree: dict, override: str) -> None:
    if "=" not in override:
        raise ConfigError(f"--set {override}: expected KEY=VALUE, e.g. train.lr=3e-4")
    key, _, raw = override.partition("=")
    parts = key.strip().split(".")
    node = tree
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {override}: '{part}' is not a section")
    node[parts[-1]] = _parse_yaml(raw, f"--set {key}") if raw.strip() else None


def config_from_dict(tree: dict, overrides: list[str] = (), where: str = "config") -> Config:
    """Build a validated `Config` from a nested dict (the YAML's structure) plus `a.b=v` overrides."""
    tree = _deep_copy(tree or {})
    if not isinstance(tree, dict):  # checked before the overrides, which need a dict to write into
        raise ConfigError(f"{where}: expected sections model:, data:, train:, got {type(tree).__name__}")
    for override in overrides:
        _apply_override(tree, override)
    set_keys = frozenset(override.partition("=")[0].strip() for override in overrides)
    if set(LENGTH_KEYS) <= set_keys:  # the one case the command-line-wins rule cannot settle
        raise ConfigError(f"--set {LENGTH_KEYS[0]} and --set {LENGTH_KEYS[1]} both decide the run's length; "
                          f"give one of them")
    return dataclasses.replace(_build(Config, tree, "", where), set_keys=set_keys)


def load_config(path: str | Path | None = None, overrides: list[str] = ()) -> Config:
    """Read a YAML config file (or only defaults when `path` is None) and apply overrides."""
    if path is None:
        return config_from_dict({}, overrides)
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: cannot read config file ({e.__class__.__name__})") from None
    tree = _parse_yaml(text, str(path))
    return config_from_dict(tree if tree is not None else {}, overrides, where=str(path))


def config_to_dict(config) -> dict:
    """The config as nested dicts, as YAML holds it; an optional section that is not set (a pretraining run's
    `task`) is left out."""
    tree = dataclasses.asdict(config)
    return {k: tree[k] for k in _yaml_keys(type(config)) if not (k == "task" and tree[k] is None)}


def config_to_yaml(config: Config) -> str:
    return yaml.safe_dump(config_to_dict(config), sort_keys=False)


def _deep_copy(tree):
    if isinstance(tree, dict):
        return {k: _deep_copy(v) for k, v in tree.items()}
    if isinstance(tree, list):
        return [_deep_copy(v) for v in tree]
    return tree
