"""What quantization computes, and how often: one calibration pass where the recipe allows it, the
report and the fidelity on shared forwards; each checked against the straightforward procedure
(a pass per statistic, a separate evaluation) written out here."""

from __future__ import annotations

import pytest
import torch

import sapiens2_edge.models.backbone as backbone_mod
from sapiens2_edge.models.model import Sapiens2Model
from sapiens2_edge.quantization import quantize
from sapiens2_edge.quantization.evaluate import evaluate, run_outputs
from sapiens2_edge.quantization.fidelity import output_error
from sapiens2_edge.quantization.measure import LAYER_TOKENS, energies, layer_energies, token_rows
from sapiens2_edge.quantization.model import candidate_linears, float_copy
from sapiens2_edge.quantization.observers import ChannelAbsMaxObserver, RangeObserver, attach_input_observers
from sapiens2_edge.quantization.smoothquant import apply_smoothing, find_groups, smoothing_scales
from sapiens2_edge.spec import NUM_PREFIX_TOKENS
from tests.fixtures.tiny import INPUT, tiny_model

G = torch.Generator().manual_seed(3)
CALIB = [torch.randn(2, 3, *INPUT, generator=G) for _ in range(3)]
HELD_OUT = [torch.randn(2, 3, *INPUT, generator=G) for _ in range(2)]
SMOOTHED = (".attn.wq", ".attn.wk", ".attn.wv", ".ffn.w12")
BATCHES = torch.cat(CALIB).split(4)  # how quantize batches CALIB (batch_size 4): histograms depend on it


@pytest.fixture(scope="module")
def seg():
    return tiny_model("seg")


def _stages():
    seen: list[str] = []

    def hook(iterable, total, desc):
        seen.append(desc)
        return iterable
    return seen, hook


def _two_pass_ranges(model, estimator: str, alpha: float = 0.5) -> dict[str, float]:
    """The reference: SmoothQuant maxima in one full forward pass, fold, then every layer's range
    in a second full pass over the smoothed model, one observer per layer."""
    return {n: o.range(estimator) for n, o in _observe_ranges(_smoothed_copy(model, alpha)).items()}


def _smoothed_copy(model, alpha: float | None = 0.5, bf16: bool = False):
    """A float copy with SmoothQuant folded in, from its own full pass over the calibration batches."""
    base = float_copy(model).eval()
    if alpha is None:
        return base
    groups = find_groups(base)
    obs = {g.linears[0]: ChannelAbsMaxObserver(NUM_PREFIX_TOKENS) for g in groups}
    _observed_pass(base, obs, bf16)
    mods = dict(base.named_modules())
    for g in groups:
        apply_smoothing(base, g, smoothing_scales(obs[g.linears[0]].amax, [mods[n].weight for n in g.linears], alpha))
    return base


def _observe_ranges(base, bf16: bool = False) -> dict:
    """One plain observation pass of every candidate linear's input over the calibration batches."""
    ranges = {n: RangeObserver(NUM_PREFIX_TOKENS) for n in candidate_linears(base)}
    _observed_pass(base, ranges, bf16)
    return ranges


def _observed_pass(base, observers: dict, bf16: bool) -> None:
    """``base`` over the calibration batches with ``observers`` attached; ``bf16``: under an autocast
    context of the pass's own (its weights cast afresh)."""
    remove = attach_input_observers(base, observers)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        for b in BATCHES:
            base(b)
    remove()


@pytest.mark.parametrize("estimator, block_by_block", [("minmax", False), ("percentile", True), ("mse", True)])
def test_static_ranges_equal_the_two_pass_reference(seg, estimator, block_by_block):
    """One calibration pass for every estimator: maxima-only ranges from a whole-model pass, histogram
    ranges of smoothed layers block by block (see quantization/blockwise.py)."""
    seen, hook = _stages()
    _, rep = quantize(seg, "int8", calibration=CALIB, input_size=INPUT, calibration_precision="fp32",
                      activation_mode="static", estimator=estimator, progress=hook)
    stages = [s for s in seen if s.startswith("calibrate")]
    assert len(stages) == 1 and ("block by block" in stages[0]) == block_by_block, seen
    _assert_two_pass_ranges(seg, rep, estimator)


def _assert_two_pass_ranges(seg, rep, estimator: str) -> None:
    want = _two_pass_ranges(seg, estimator)
    for lr in rep.layers:
        # smoothed layers: equal but for a few float32 ulps (max_c(absmax_c / s_c) vs max |x / s|;
        # block by block, their factors come from maxima read behind blocks already smoothed). The
        # others are observed on a model whose smoothing differs by that rounding (or before
        # smoothing, with minmax), which can flip a bf16 RoPE rounding upstream: measured up to
        # 2e-5 (minmax) and 6e-5 (mse, block by block) relative on this model
        rel = 1e-6 if lr.name.endswith(SMOOTHED) else 1e-4
        assert lr.input_range == pytest.approx(want[lr.name], rel=rel), lr.name


@pytest.mark.parametrize("estimator", ["percentile", "mse"])
def test_without_room_for_the_block_boundary_histograms_take_a_second_pass(seg, estimator, monkeypatch):
    """Where the calibration set's block-boundary activations would not fit the memory bound, the
    smoothed model is observed in a second whole pass instead: the same ranges."""
    from sapiens2_edge.quantization import blockwise

    assert blockwise.state_bytes(seg, _calibration_set()) == 6 * (NUM_PREFIX_TOKENS + 8 * 6) * 64 * 4
    monkeypatch.setattr(blockwise, "MAX_STATE_BYTES", 6 * (NUM_PREFIX_TOKENS + 8 * 6) * 64 * 4 - 1)
    seen, hook = _stages()
    _, rep = quantize(seg, "int8", calibration=CALIB, input_size=INPUT, calibration_precision="fp32",
                      activation_mode="static", estimator=estimator, progress=hook)
    assert [s for s in seen if s.startswith("calibrate")] == [
        "calibrate smoothquant (6 images)", "calibrate ranges (6 images)"], seen
    _assert_two_pass_ranges(seg, rep, estimator)


def _calibration_set():
    from sapiens2_edge.quantization.calibration import build_calibration_set

    return build_calibration_set(CALIB, "seg", INPUT, 32, 4, False)


def test_without_smoothquant_every_estimator_takes_one_pass(seg):
    seen, hook = _stages()
    _, rep = quantize(seg, "int8", calibration=CALIB, input_size=INPUT, calibration_precision="fp32",
                      activation_mode="static", estimator="mse", smoothquant_alpha=None, progress=hook)
    assert len([s for s in seen if s.startswith("calibrate")]) == 1, seen
    assert not any(lr.smoothed for lr in rep.layers)
    ranges = _observe_ranges(float_copy(seg).eval())
    for lr in rep.layers:
        assert lr.input_range == pytest.approx(ranges[lr.name].range("mse"), rel=1e-6), lr.name


def _layer_sqnr_reference(base, qmodel, batches) -> dict[str, float]:
    """Per-layer output SQNR with float64 copies of whole activations (the earlier form)."""
    qlayers = qmodel.quantized_layers()
    mods = dict(base.named_modules())
    acc = {n: [0.0, 0.0] for n in qlayers}
    handles = []
    for n, ql in qlayers.items():
        def hook(_m, args, out, _n=n, _ql=ql):
            ref, yq = out.double(), _ql(args[0]).double()
            acc[_n][0] += float((ref * ref).sum())
            acc[_n][1] += float(((ref - yq) ** 2).sum())
        handles.append(mods[n].register_forward_hook(hook))
    with torch.no_grad():
        for b in batches:
            base(b)
    for h in handles:
        h.remove()
    return {n: 10 * torch.log10(torch.tensor(s / e, dtype=torch.float64)).item() for n, (s, e) in acc.items()}


def test_held_out_report_runs_each_model_once_per_batch_and_matches_separate_measurements(seg, tmp_path, monkeypatch):
    from sapiens2_edge.workflows import quantize_and_save

    counts = {"model": 0, "backbone": 0}
    model_forward, backbone_forward = Sapiens2Model.forward, backbone_mod.Sapiens2Backbone.forward

    def counted_model(self, *a, **k):
        counts["model"] += 1
        return model_forward(self, *a, **k)

    def counted_backbone(self, *a, **k):
        counts["backbone"] += 1
        return backbone_forward(self, *a, **k)
    monkeypatch.setattr(Sapiens2Model, "forward", counted_model)
    monkeypatch.setattr(backbone_mod.Sapiens2Backbone, "forward", counted_backbone)
    seen, hook = _stages()
    qmodel, rep = quantize_and_save(seg, "int8", CALIB, tmp_path / "q.safetensors", held_out=HELD_OUT,
                                    held_out_source="test", input_size=INPUT, eval_samples=4,
                                    activation_mode="static", calibration_precision="fp32", estimator="minmax",
                                    progress=hook)
    n_cal, n_held = 2, 1  # 6 calibration and 4 held-out samples in batches of 4
    # one backbone pass over the calibration batches, then float + quantized once per held-out batch
    assert counts == {"model": 2 * n_held, "backbone": n_cal + 2 * n_held}, (counts, seen)
    assert not any(s in ("float", "quantized") for s in seen), seen  # no separate evaluation
    assert rep.calibration["report_on"] == "held-out" and rep.calibration["report_samples"] == 4
    monkeypatch.undo()

    # the fidelity equals a separate evaluation against the caller's float model (to float rounding:
    # the report's float side is the smoothed copy)
    want = evaluate(seg, qmodel, HELD_OUT, input_size=INPUT, samples=4, show=False)
    assert rep.fidelity["samples"] == want["samples"] == 4 and rep.fidelity["evaluated_on"] == "test"
    for key in ("sqnr_db", "cosine", "rel_l2", "seg_agreement", "seg_miou"):
        assert rep.fidelity[key] == pytest.approx(want[key], rel=1e-4, abs=1e-6), key
    ref, test = run_outputs(seg, HELD_OUT, show=False), run_outputs(qmodel, HELD_OUT, show=False)
    assert rep.output_sqnr_db == pytest.approx(output_error(ref, test)["sqnr_db"], abs=1e-3)
    layer_want = _layer_sqnr_reference(_smoothed_copy(seg), qmodel, torch.cat(HELD_OUT).split(4))
    for lr in rep.layers:
        assert lr.smoothed == lr.name.endswith(SMOOTHED)
        # the same smoothing, rebuilt from its own calibration pass: equal but for summation order
        assert lr.output_sqnr_db == pytest.approx(layer_want[lr.name], abs=1e-6), lr.name


def test_held_out_per_layer_sqnr_comes_from_the_first_report_samples(seg):
    """With held-out data, every image gives the fidelity and the output SQNR, and the per-layer SQNR
    comes from the batches that begin within the first report_samples images (here: the first batch
    of 2 of the 4 held-out images)."""
    qmodel, rep = quantize(seg, "int8", calibration=CALIB, input_size=INPUT, calibration_precision="fp32",
                           held_out=HELD_OUT, held_out_samples=4, report_samples=2, batch_size=2, progress=False)
    assert rep.calibration["layer_sqnr_samples"] == 2 and rep.fidelity["samples"] == 4
    base = _smoothed_copy(seg)
    layer_want = _layer_sqnr_reference(base, qmodel, HELD_OUT[:1])
    layer_all = _layer_sqnr_reference(base, qmodel, HELD_OUT)
    assert any(abs(layer_want[n] - layer_all[n]) > 1e-3 for n in layer_want)  # the subset is not the whole set
    for lr in rep.layers:
        assert lr.output_sqnr_db == pytest.approx(layer_want[lr.name], abs=1e-6), lr.name
    ref, test = run_outputs(base, HELD_OUT, show=False), run_outputs(qmodel, HELD_OUT, show=False)
    assert rep.output_sqnr_db == pytest.approx(output_error(ref, test)["sqnr_db"], abs=1e-6)


@pytest.mark.parametrize("alpha", [None, 0.5])
def test_calibration_report_equals_the_float64_reference(seg, alpha):
    """Without held-out data the report measures on the first report_samples calibration inputs: equal
    to the float64 reference but for summation order (dB), with the smoothing rebuilt from its own pass."""
    qmodel, rep = quantize(seg, "int8", calibration=CALIB, input_size=INPUT, calibration_precision="fp32",
                           report_samples=4, progress=False, smoothquant_alpha=alpha)
    assert rep.calibration["report_samples"] == 4 and "report_on" not in rep.calibration and not rep.fidelity
    base = _smoothed_copy(seg, alpha)
    layer_want = _layer_sqnr_reference(base, qmodel, BATCHES[:1])
    for lr in rep.layers:
        assert lr.output_sqnr_db == pytest.approx(layer_want[lr.name], abs=1e-6), lr.name
    ref, test = run_outputs(base, BATCHES[:1], show=False), run_outputs(qmodel, BATCHES[:1], show=False)
    assert rep.output_sqnr_db == pytest.approx(output_error(ref, test)["sqnr_db"], abs=1e-6)


def test_energies_accumulate_in_float64():
    g = torch.Generator().manual_seed(0)
    ref = torch.randn(3, 4097, 64, generator=g) * 1e3
    test = ref + torch.randn(ref.shape, generator=g) * 1e-2
    s, e = energies(ref, test)
    r64, t64 = ref.double(), test.double()
    assert s == pytest.approx(float((r64 * r64).sum()), rel=1e-7)
    assert e == pytest.approx(float(((r64 - t64) ** 2).sum()), rel=1e-5)  # the difference is rounded in float32


@pytest.mark.parametrize("tokens,prefix,rows,weight", [
    (9 + 768, 9, None, 1.0),  # 512x384: every token
    (9 + LAYER_TOKENS, 9, None, 1.0),
    (9 + 3072, 9, 9 + 1024, 3.0),  # 1024x768: every third patch token
    (9 + 3073, 9, 9 + 769, 3073 / 769),  # ceil: a stride of 4
    (17, 1, None, 1.0),  # a 4K tokenizer window
])
def test_per_layer_sqnr_reads_at_most_layer_tokens_patch_tokens(tokens, prefix, rows, weight):
    idx, w = token_rows(tokens, prefix)
    assert w == pytest.approx(weight)
    if rows is None:
        assert idx is None
        return
    assert len(idx) == rows and idx[:prefix].tolist() == list(range(prefix)) and int(idx[-1]) < tokens
    steps = (idx[prefix + 1:] - idx[prefix:-1]).unique()
    assert len(steps) == 1 and len(idx) - prefix <= LAYER_TOKENS  # evenly spaced


def test_per_layer_energies_of_a_token_sample_estimate_the_whole():
    """The sampled rows are the rows of the whole layer output (every row is quantized on its own; the
    prefix rows keep their per-token scales), and the weighted energies estimate the whole: exactly
    when every patch row is alike, closely for random rows."""
    from sapiens2_edge.quantization.config import layer_config
    from sapiens2_edge.quantization.linear import QuantLinear

    g = torch.Generator().manual_seed(0)
    lin = torch.nn.Linear(64, 32)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(32, 64, generator=g) * 0.1)
    q = QuantLinear.from_float(lin, layer_config("int8", activation_mode="static"), 9, torch.tensor([0.03]))
    x = torch.randn(2, 9 + 3072, 64, generator=g)
    x[:, :9] *= 30  # prefix outliers: their own scales, their own (full) weight
    with torch.no_grad():
        ref = lin(x)
        whole = energies(ref, q(x))
        alike = x.clone()
        alike[:, 9:] = x[:, 9:10]
        assert layer_energies(lin(alike), q, alike) == pytest.approx(energies(lin(alike), q(alike)), rel=1e-6)
        s, e = layer_energies(ref, q, x)
    assert s == pytest.approx(whole[0], rel=0.02) and e == pytest.approx(whole[1], rel=0.02)
    small = x[:, :9 + 100]
    with torch.no_grad():
        assert layer_energies(lin(small), q, small) == energies(lin(small), q(small))  # short sequences: all rows


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_max_only_observer_keeps_the_maximum_and_no_histogram(dtype):
    from sapiens2_edge.errors import CalibrationError

    x = torch.randn(2, 40, 8).to(dtype)
    full, lean = RangeObserver(9), RangeObserver(9, histogram=False)
    full.observe(x)
    lean.observe(x)
    assert lean.range("minmax") == full.range("minmax") == float(x[:, 9:].abs().max())
    assert float(lean.hist.sum()) == 0.0 and lean.count == full.count
    with pytest.raises(ValueError, match="histogram"):
        lean.range("percentile")
    x[1, 20, 3] = float("nan")
    with pytest.raises(CalibrationError, match="NaN or inf"):
        lean.observe(x)


@pytest.mark.parametrize("estimator", ["minmax", "percentile"])
def test_non_finite_activations_stop_the_one_pass_calibration_too(estimator):
    from sapiens2_edge.errors import CalibrationError

    bad = tiny_model("seg")
    with torch.no_grad():
        bad.backbone.blocks[3].ln2.weight[5] = float("inf")  # an inf channel reaching a smoothed layer only
    with pytest.raises(CalibrationError, match="NaN or inf activations"):
        quantize(bad, "int8", calibration=CALIB, input_size=INPUT, activation_mode="static", estimator=estimator,
                 progress=False)


@pytest.mark.parametrize("batch, size, want", [(4, (1024, 768), 1), (4, (512, 384), 4), (8, (512, 512), 4),
                                               (4, INPUT, 4), (2, (2048, 1536), 1), (1, (128, 96), 1)])
def test_held_out_report_batches_hold_at_most_a_megapixel(batch, size, want):
    from sapiens2_edge.quantization.convert import report_batch_size

    assert report_batch_size(batch, size) == want


def test_inplace_smooths_the_callers_model_and_quantizes_to_the_same_model(seg):
    """inplace=True folds SmoothQuant into the caller's model instead of a copy: the same quantized
    model, and the caller's model keeps its function (to float rounding) with smoothed weights."""
    x = torch.randn(2, 3, *INPUT, generator=torch.Generator().manual_seed(9))
    own = float_copy(seg)
    with torch.no_grad():
        before = own(x)
    want, _ = quantize(seg, "int8", calibration=CALIB, input_size=INPUT, activation_mode="static", progress=False)
    got, _ = quantize(own, "int8", calibration=CALIB, input_size=INPUT, activation_mode="static", progress=False,
                      inplace=True)
    assert want.state_dict().keys() == got.state_dict().keys()
    for k, v in want.state_dict().items():
        assert torch.equal(v, got.state_dict()[k]), k
    assert not torch.equal(own.backbone.blocks[0].ln1.weight, seg.backbone.blocks[0].ln1.weight)  # smoothed
    with torch.no_grad():
        torch.testing.assert_close(own(x), before, rtol=1e-4, atol=1e-4)
    # what stays float is the caller's own tensors (one copy of the head less); fp16 storage rounds a copy
    assert got.decode_head.conv_seg.weight is own.decode_head.conv_seg.weight
    assert got.backbone.blocks[0].ln1.weight is own.backbone.blocks[0].ln1.weight
    head = own.decode_head.conv_seg.weight.clone()
    half, _ = quantize(own, "int8", calibration=CALIB, input_size=INPUT, activation_mode="static", progress=False,
                       inplace=True, float_storage="fp16")
    assert half.decode_head.conv_seg.weight is not own.decode_head.conv_seg.weight
    assert torch.equal(own.decode_head.conv_seg.weight, head)
    assert torch.equal(half.decode_head.conv_seg.weight, head.half().float())


def test_the_quantized_model_shares_no_tensor_with_the_float_model(seg):
    """The conversion copies what stays float and builds the quantized layers from the float copy,
    without a transient copy of the replaced weights: nothing of the caller's model is aliased."""
    q, _ = quantize(seg, "int8", calibration=CALIB, input_size=INPUT, activation_mode="static", progress=False)
    float_ptrs = {t.untyped_storage().data_ptr() for t in seg.state_dict().values()}
    assert not float_ptrs & {t.untyped_storage().data_ptr() for t in q.state_dict().values()}


def test_float_copy_shares_only_the_named_modules_tensors(seg):
    copy = float_copy(seg, skip=["backbone.blocks.0.attn.wq"])
    assert copy.backbone.blocks[0].attn.wq.weight is seg.backbone.blocks[0].attn.wq.weight
    assert copy.backbone.blocks[0].attn.wk.weight is not seg.backbone.blocks[0].attn.wk.weight
    assert torch.equal(copy.backbone.blocks[0].attn.wk.weight, seg.backbone.blocks[0].attn.wk.weight)


@pytest.mark.parametrize("tokenizer", [False, True])
def test_4k_calibrates_block_by_block_unless_the_tokenizer_is_quantized(tokenizer):
    """The 4K tokenizer's blocks run inside the embedding: with its linears quantized, calibration
    takes the whole-model passes; either way every layer gets a range."""
    from tests.fixtures.tiny import INPUT_4K, TINY_4K

    model = tiny_model("seg", arch=TINY_4K)
    calib = [torch.randn(2, 3, *INPUT_4K, generator=torch.Generator().manual_seed(4))]
    seen, hook = _stages()
    _, rep = quantize(model, "int8", calibration=calib, input_size=INPUT_4K, activation_mode="static",
                      quantize_tokenizer=tokenizer, progress=hook)
    stages = [s for s in seen if s.startswith("calibrate")]
    assert stages == (["calibrate smoothquant (2 images)", "calibrate ranges (2 images)"] if tokenizer else
                      ["calibrate smoothquant + ranges (2 images, block by block)"]), seen
    assert any(lr.name.startswith("backbone.tokenizer.") for lr in rep.layers) == tokenizer
    assert all(lr.input_range is not None and lr.input_range > 0 for lr in rep.layers)


def test_with_held_out_data_the_calibration_images_are_released_after_embedding(seg, monkeypatch):
    from sapiens2_edge.quantization.calibration import CalibrationSet

    released = []
    monkeypatch.setattr(CalibrationSet, "release", lambda self: released.append(self.num_samples) or
                        setattr(self, "batches", []))
    _, rep = quantize(seg, "int8", calibration=CALIB, input_size=INPUT, activation_mode="static", progress=False,
                      held_out=HELD_OUT)
    assert released == [6] and rep.calibration["num_samples"] == 6  # the count outlives the images
    released.clear()
    _, rep = quantize(seg, "int8", calibration=CALIB, input_size=INPUT, activation_mode="static", progress=False)
    assert released == [] and rep.calibration["report_samples"] == 6  # the report reads them again


def test_block_by_block_calibration_keeps_each_image_state_in_its_own_buffer(seg, monkeypatch):
    """The kept block-boundary states are written in place, block after block (fresh buffers
    allocated mid-forward fragmented the reused heap: 0.4b with 32 images peaked at 5.4 GB instead
    of under 4); a result of another dtype or shape replaces the state instead."""
    from sapiens2_edge.quantization import blockwise

    buffers: dict[int, set[int]] = {}
    advance = blockwise._advance

    def watched(states, j, run):
        advance(states, j, run)
        buffers.setdefault(j, set()).add(states[j].data_ptr())
    monkeypatch.setattr(blockwise, "_advance", watched)
    quantize(seg, "int8", calibration=CALIB, input_size=INPUT, calibration_precision="fp32",
             activation_mode="static", estimator="percentile", progress=False)
    batches = -(-sum(b.shape[0] for b in CALIB) // 4)  # the calibration set's batches of 4
    assert len(buffers) == batches and all(len(ptrs) == 1 for ptrs in buffers.values()), buffers

    x = torch.ones(2, 3)
    states = [x]
    advance(states, 0, lambda t: t * 2)
    assert states[0] is x and torch.equal(x, torch.full((2, 3), 2.0))
    advance(states, 0, lambda t: t.double())
    assert states[0] is not x and states[0].dtype == torch.float64


@pytest.mark.parametrize("block_by_block", [True, False])
def test_bf16_calibration_forwards_use_the_smoothed_weights(seg, block_by_block, monkeypatch):
    """bf16 calibration folds SmoothQuant into the float weights between forwards: the forwards after
    it read the smoothed weights, not bf16 copies cast before (autocast caches such copies for as long
    as its context lasts, and keeps them all)."""
    from sapiens2_edge.quantization import blockwise

    if not block_by_block:
        monkeypatch.setattr(blockwise, "MAX_STATE_BYTES", 0)
    seen, hook = _stages()
    _, rep = quantize(seg, "int8", calibration=CALIB, input_size=INPUT, calibration_precision="bf16",
                      activation_mode="static", estimator="percentile", progress=hook)
    assert any("block by block" in s for s in seen) == block_by_block, seen
    want = {n: o.range("percentile") for n, o in _observe_ranges(_smoothed_copy(seg, bf16=True), bf16=True).items()}
    for lr in rep.layers:
        # the bf16 forwards round differently where the folded factors differ by float32 ulps
        # (block by block, the maxima are read behind blocks already smoothed)
        assert lr.input_range == pytest.approx(want[lr.name], rel=2e-2), lr.name


def test_block_by_block_calibration_gives_freed_heap_back_after_embedding_and_each_half_block(seg, monkeypatch):
    """The heap's freed pages go back to the system between the phases of calibration (kept within a
    phase: see sapiens2_edge/heap.py), not after every image."""
    from sapiens2_edge.quantization import blockwise

    calls: list[int] = []
    monkeypatch.setattr(blockwise, "release_freed_heap", lambda: calls.append(1) or True)
    quantize(seg, "int8", calibration=CALIB, input_size=INPUT, calibration_precision="fp32",
             activation_mode="static", estimator="percentile")
    assert len(calls) == 1 + 2 * len(seg.backbone.blocks)


def test_the_report_gives_freed_heap_back_before_each_batch(seg, monkeypatch):
    from sapiens2_edge.quantization import measure

    calls: list[int] = []
    monkeypatch.setattr(measure, "release_freed_heap", lambda: calls.append(1) or True)
    _, rep = quantize(seg, "int8", calibration=CALIB, input_size=INPUT, calibration_precision="fp32",
                      held_out=HELD_OUT, batch_size=1)
    assert rep.fidelity["samples"] == 4 and len(calls) == 4
