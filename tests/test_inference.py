"""Inference precision: int8 linear against its float formula, the choice of auto per CPU flag set, and every
inference command's --precision.

Bounds (stated once, here). With x̂ = s_x q_x and ŵ = s_w q_w, |x − x̂| ≤ s_x/2 and |w − ŵ| ≤ s_w/2 elementwise, so
for y = x·w + b and ŷ = x̂·ŵ + b (one output, K inputs):
    |y − ŷ| ≤ (s_w/2) Σ_k |x_k| + (s_x/2) Σ_k |w_k| + K s_x s_w / 4                          (exact math)
checked with 1e-5 relative slack for float32 rounding. int8_linear's from-scratch path equals the formula
(s_x s_w)(q_x q_wᵀ) + b evaluated in float64 to float32 rounding (rtol 1e-6); oneDNN's kernel equals the from-scratch
path exactly wherever its products cannot saturate (always with VNNI/AMX; without them only for |q_w| ≤ 63, where a
pair of u8×s8 products stays below 2¹⁵: 255·63·2 = 32,130; hence hardware.int8_weight_max's 7-bit weights there). A tiny model in int8 keeps its fp32 logits' argmax
and a cosine above 0.99 (measured: 0.9999).
"""

import logging

import pytest
import torch
from torch.testing import assert_close

from bertmath import BertForMaskedLM
from bertmath import functional as BF
from bertmath.cli import build_parser, main
from bertmath.errors import ConfigError
from bertmath.hardware import int8_weight_max, resolve_inference_precision
from bertmath.inference import Int8Linear, Precision, joined_qkv, quantize_encoder

CPU = torch.device("cpu")
AVX2 = frozenset({"sse4_2", "avx", "avx2", "fma"})
AVX512_VNNI = AVX2 | {"avx512f", "avx512bw", "avx512vl", "avx512_vnni"}  # Cascade Lake: VNNI, no bf16
AVX_VNNI = AVX2 | {"avx_vnni"}  # Alder Lake / Zen 5 class
AVX512_BF16 = AVX512_VNNI | {"avx512_bf16"}
AMX = AVX512_BF16 | {"amx_tile", "amx_bf16", "amx_int8"}
REAL_WEIGHT_MAX = int8_weight_max(CPU)[0]  # this machine's, before any test pretends to be another (63 without VNNI)


# --- the math -------------------------------------------------------------------------------------------------


def test_quantize_int8_rounds_within_half_a_step():
    x = torch.randn(7, 50) * torch.logspace(-3, 3, 7)[:, None]
    x[3] = 0  # an all-zero row: scale 1, q 0
    q, s = BF.quantize_int8(x)
    assert q.dtype == torch.int8 and s.shape == (7, 1)
    assert int(q.abs().max()) == 127 and int(q.min()) >= -127
    assert bool(((x - s * q.float()).abs() <= s / 2 * (1 + 1e-6)).all())
    assert s[3].item() == 1.0 and bool((q[3] == 0).all())


def test_int8_linear_within_its_error_bound():
    g = torch.Generator().manual_seed(0)
    x, w, b = torch.randn(4, 9, 96, generator=g), torch.randn(40, 96, generator=g) * 0.05, torch.randn(40, generator=g)
    q_w, s_w = BF.quantize_int8(w)
    y = BF.int8_linear(x, q_w, s_w[:, 0], b)
    exact = torch.nn.functional.linear(x.double(), w.double(), b.double())
    _, s_x = BF.quantize_int8(x.reshape(-1, 96))
    s_x = s_x.view(4, 9, 1).double()
    bound = (s_w[:, 0].double() / 2 * x.double().abs().sum(-1, keepdim=True) + s_x / 2 * w.double().abs().sum(-1)
             + 96 * s_x * s_w[:, 0].double() / 4)
    assert y.shape == (4, 9, 40) and y.dtype == torch.float32
    assert bool(((y.double() - exact).abs() <= bound * (1 + 1e-5)).all())
    assert 0 < float((y.double() - exact).abs().max()) < 0.05 * float(exact.abs().max())  # quantised, and close


def test_int8_linear_is_its_integer_formula():
    g = torch.Generator().manual_seed(1)
    x, w = torch.randn(13, 64, generator=g), torch.randn(24, 64, generator=g)
    q_w, s_w = BF.quantize_int8(w)
    q_x, s_x = BF.quantize_int8(x)
    formula = (s_x.double() * s_w[:, 0].double()) * (q_x.double() @ q_w.double().T)  # (s_x s_w)(q_x q_wᵀ)
    assert_close(BF.int8_linear(x, q_w, s_w[:, 0]).double(), formula, rtol=1e-6, atol=0)


def test_onednn_kernel_equals_the_from_scratch_path():
    g = torch.Generator().manual_seed(2)
    x, w, b = torch.randn(37, 96, generator=g), torch.randn(40, 96, generator=g), torch.randn(40, generator=g)
    q_w, s_w = BF.quantize_int8(w, q_max=REAL_WEIGHT_MAX)  # the weight range this CPU's kernel sums exactly
    assert int(q_w.abs().max()) == REAL_WEIGHT_MAX
    packed = torch.ops.onednn.qlinear_prepack(q_w, None)
    assert torch.equal(BF.int8_linear(x, q_w, s_w[:, 0], b, packed), BF.int8_linear(x, q_w, s_w[:, 0], b))


def test_seven_bit_weights_stay_within_their_wider_bound():
    """q_max 63 halves the weight's resolution: the error bound's s_w doubles, and the result stays inside it."""
    g = torch.Generator().manual_seed(3)
    x, w = torch.randn(16, 96, generator=g), torch.randn(40, 96, generator=g) * 0.05
    q_w, s_w = BF.quantize_int8(w, q_max=63)
    assert int(q_w.abs().max()) == 63 and bool((s_w[:, 0] > BF.quantize_int8(w)[1][:, 0]).all())
    y, exact = BF.int8_linear(x, q_w, s_w[:, 0]).double(), x.double() @ w.double().T
    _, s_x = BF.quantize_int8(x)
    s_x, s_w = s_x.double(), s_w[:, 0].double()
    bound = s_w / 2 * x.double().abs().sum(-1, keepdim=True) + s_x / 2 * w.double().abs().sum(-1) + 96 * s_x * s_w / 4
    assert bool(((y - exact).abs() <= bound * (1 + 1e-5)).all())


def test_joined_qkv_quantises_as_three(tiny_config):
    """Per-output-channel scales: Q, K and V from one int8 matrix equal each from its own, bit for bit."""
    from bertmath.model import SelfAttention
    torch.manual_seed(4)
    attention = SelfAttention(tiny_config())
    x = torch.randn(5, attention.query.in_features)
    joint = Int8Linear(joined_qkv(attention), fused=False)(x)
    apart = torch.cat([Int8Linear(m, fused=False)(x) for m in (attention.query, attention.key, attention.value)], -1)
    assert torch.equal(joint, apart)


def test_quantized_tiny_model_keeps_its_predictions(tiny_config):
    torch.manual_seed(0)
    model = BertForMaskedLM(tiny_config(fused=True)).eval()
    ids = torch.randint(1, 99, (3, 12))
    mask = torch.ones(3, 12, dtype=torch.long)
    mask[1, 8:] = 0
    with torch.no_grad():
        reference = model(ids, mask).logits
        quantize_encoder(model, REAL_WEIGHT_MAX)
        quantized = model(ids, mask).logits
    linears = [m for m in model.bert.encoder.modules() if isinstance(m, (torch.nn.Linear, Int8Linear))]
    assert len(linears) == 2 * 4 and all(isinstance(m, Int8Linear) for m in linears)  # QKV, O, up, down
    assert isinstance(model.mlm_head.dense, torch.nn.Linear)  # the head stays fp32
    real = mask.bool()
    cos = torch.nn.functional.cosine_similarity(quantized[real], reference[real], dim=-1)
    assert float(cos.min()) > 0.99
    assert torch.equal(quantized[real].argmax(-1), reference[real].argmax(-1))


# --- the choice -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("flags, expected", [(AVX2, "fp32"), (AVX512_VNNI, "fp32"), (AVX_VNNI, "fp32"),
                                             (AVX512_BF16, "bf16"), (AMX, "bf16"), (frozenset(), "fp32")],
                         ids=["avx2", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx", "unknown"])
def test_auto_picks_bf16_where_native_and_never_int8(machine, flags, expected, caplog):
    machine(flags)
    with caplog.at_level(logging.DEBUG, logger="bertmath.hardware"):
        chosen, why = resolve_inference_precision("auto", CPU)
    assert chosen == expected and why.startswith("auto: ")
    assert f"inference precision {expected} ({why})" in caplog.text  # logged once, with why


def test_auto_is_fp32_when_onednn_is_held_below_bf16(machine):
    machine(AVX512_BF16, onednn_bf16=False)
    assert resolve_inference_precision("auto", CPU)[0] == "fp32"


@pytest.mark.parametrize("flags, weight_max", [(AVX512_VNNI, 127), (AVX_VNNI, 127), (AMX, 127), (AVX2, 63)],
                         ids=["avx512_vnni", "avx_vnni", "amx", "avx2"])
def test_int8_weights_take_the_range_the_cpu_sums_exactly(machine, flags, weight_max):
    machine(flags)
    assert resolve_inference_precision("int8", CPU)[0] == "int8"
    assert int8_weight_max(CPU)[0] == weight_max


def test_precision_quantises_with_the_cpus_weight_range(machine, tiny_config):
    for flags, weight_max in ((AVX2, 63), (AVX512_VNNI, 127)):
        machine(flags)
        model = Precision.of("int8", CPU).prepare(BertForMaskedLM(tiny_config()))
        qkv = model.bert.encoder.layers[0].attention.qkv
        assert qkv.weight_max == weight_max and int(qkv.q_w.abs().max()) == weight_max


@pytest.mark.parametrize("precision, flags, words", [
    ("int8", frozenset({"neon"}), ["precision int8", "no avx2, avx512_vnni, avx_vnni or amx_int8", "use auto or fp32"]),
    ("bf16", AVX2, ["precision bf16", "emulated", "75x slower", "use auto or fp32"]),
    ("bf16", AVX512_VNNI, ["precision bf16", "no avx512_bf16 or amx_bf16"]),
    ("fp16", AMX, ["precision: 'fp16' is not a precision", "auto, fp32, bf16, int8"])])
def test_unavailable_precisions_are_one_line_config_errors(machine, precision, flags, words):
    machine(flags)
    with pytest.raises(ConfigError) as e:
        resolve_inference_precision(precision, CPU)
    assert "\n" not in str(e.value) and all(w in str(e.value) for w in words), str(e.value)


def test_int8_is_cpu_only(machine):
    machine(AMX)
    assert int8_weight_max(torch.device("meta")) == (None, "device meta: int8 runs on the CPU only")


def test_precision_prepares_and_autocasts(machine, tiny_config):
    machine(AMX)
    assert Precision.of("auto", CPU).name == "bf16"
    with Precision.of("bf16", CPU).autocast():
        assert torch.get_autocast_dtype("cpu") == torch.bfloat16 and torch.is_autocast_enabled("cpu")
    model = BertForMaskedLM(tiny_config())
    assert Precision.of("fp32", CPU).prepare(model) is model
    attention = Precision.of("int8", CPU).prepare(model).bert.encoder.layers[0].attention
    assert isinstance(attention.qkv, Int8Linear) and attention.query is None  # Q, K and V as one int8 matrix
    assert Precision.of("fp32", CPU).describe() == "precision fp32 (asked for)"
    assert all(Precision.of(p, CPU).switches() == dict(fused=True, fused_qkv=True) for p in ("fp32", "bf16", "int8"))


# --- the commands ---------------------------------------------------------------------------------------------

COMMANDS = {"fill-mask": ["fill-mask", "CKPT", "a [MASK]"], "classify": ["classify", "CKPT", "a text"],
            "tag": ["tag", "CKPT", "a text"], "answer": ["answer", "CKPT", "--question", "q", "--context", "c"],
            "encode": ["encode", "CKPT", "a text"], "search": ["search", "CKPT", "--docs", "DOCS", "--query", "q"]}


@pytest.mark.parametrize("command", COMMANDS)
def test_every_inference_command_takes_precision(command):
    parser = build_parser()
    assert parser.parse_args(COMMANDS[command]).precision == "auto"
    for precision in ("fp32", "bf16", "int8", "auto"):
        assert parser.parse_args(COMMANDS[command] + ["--precision", precision]).precision == precision


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("precision, flags, words", [("int8", frozenset({"neon"}), ["no avx2"]),
                                                    ("bf16", AVX2, ["emulated"])], ids=["int8", "bf16"])
def test_unavailable_precision_is_a_one_line_error_before_loading(machine, capsys, tmp_path, command, precision, flags,
                                                                  words):
    """int8 on a CPU without avx2 or VNNI, bf16 on an AVX2-only one: exit 2 and one line, before the (missing)
    checkpoint is even looked at."""
    machine(flags)
    (tmp_path / "docs.txt").write_text("a document\n")  # search reads its documents file first
    args = [tmp_path / "missing" if a == "CKPT" else tmp_path / "docs.txt" if a == "DOCS" else a
            for a in COMMANDS[command]]
    assert main([str(a) for a in args] + ["--precision", precision]) == 2
    from helpers import assert_one_line_error
    assert_one_line_error(capsys, command, f"precision {precision}", *words)


def test_fill_mask_precisions_and_summary_line(tmp_path, capsys, machine):
    """fp32 is the reference unchanged; int8 (as on an AVX2 CPU: 7-bit weights, oneDNN's kernel) keeps the tiny
    trained model's top-1; the summary line on stderr names the precision and why."""
    from helpers import make_bertmath_run
    from bertmath.fill_mask import FillMask

    run = make_bertmath_run(tmp_path / "run", seed=0, train_steps=30)
    texts = ["the cat [MASK] on the mat .", "my sister [MASK] at the teacher ."]
    default, fp32 = FillMask.from_pretrained(run), FillMask.from_pretrained(run, precision="fp32")
    assert default.predict(texts) == fp32.predict(texts)
    assert main(["fill-mask", str(run), *texts, "--precision", "fp32", "--json"]) == 0
    err = capsys.readouterr().err
    assert "bertmath fill-mask: 2 texts, precision fp32 (asked for)" in err
    machine(AVX2)  # 7-bit weights: exact on every x86 CPU's oneDNN
    int8 = FillMask.from_pretrained(run, precision="int8")
    assert int8.precision.name == "int8"
    assert isinstance(int8.model.bert.encoder.layers[0].feed_forward.up, Int8Linear)
    assert [r.masks[0].chosen.token for r in int8.predict(texts)] == [r.masks[0].chosen.token for r in fp32.predict(texts)]


def test_embedder_precisions_keep_the_vectors(tmp_path, capsys, machine):
    """encode at int8 (as on an AVX2 CPU: 7-bit weights, oneDNN's kernel) keeps each vector's direction: cosine
    to fp32's above 0.99 on a tiny trained encoder; the command's summary line names the precision."""
    from helpers import make_bertmath_run
    from bertmath.tasks.encode import Embedder

    run = make_bertmath_run(tmp_path / "run", seed=0, train_steps=30)
    texts = ["the cat sat on the mat .", "my sister laughed at the teacher .", "a dog ran home"]
    fp32 = Embedder.from_pretrained(run, precision="fp32").encode(texts, normalize=True)
    assert main(["encode", str(run), *texts, "--precision", "fp32", "--json"]) == 0
    assert "bertmath encode: 3 texts, precision fp32 (asked for)" in capsys.readouterr().err
    machine(AVX2)
    int8 = Embedder.from_pretrained(run, precision="int8")
    assert int8.precision.name == "int8" and isinstance(int8.model.bert.encoder.layers[0].feed_forward.up, Int8Linear)
    cosine = (int8.encode(texts, normalize=True) * fp32).sum(-1)
    assert (cosine > 0.99).all(), cosine
    assert not torch.equal(int8.encode(texts, normalize=True), fp32)  # int8 did run: the vectors moved a little
