"""Observers, SmoothQuant folding and calibration inputs."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from sapiens2_edge.errors import CalibrationError, Sapiens2EdgeError
from sapiens2_edge.quantization import quantize
from sapiens2_edge.quantization.calibration import build_calibration_set
from sapiens2_edge.quantization.observers import ChannelAbsMaxObserver, RangeObserver, attach_input_observers
from sapiens2_edge.quantization.smoothquant import apply_smoothing, find_groups, smoothing_scales
from tests.fixtures.tiny import INPUT, tiny_model


# --- observers ------------------------------------------------------------------------------------
def test_prefix_tokens_are_left_out_of_static_ranges():
    x = torch.rand(2, 30, 16) * 2 - 1
    x[:, :9] = 1e4
    for est in ("minmax", "percentile", "mse"):
        obs = RangeObserver(prefix_tokens=9)
        obs.observe(x)
        assert 0 < obs.range(est) <= 1.0, est
    obs = RangeObserver(prefix_tokens=0)
    obs.observe(x)
    assert obs.range("minmax") == 1e4
    ch = ChannelAbsMaxObserver(prefix_tokens=9)
    ch.observe(x)
    assert ch.amax.max() <= 1.0


def test_range_estimators():
    obs = RangeObserver()
    v = torch.linspace(0, 1, 1_000_001)
    obs.observe(v[None, :, None])
    assert obs.range("minmax") == 1.0
    assert obs.range("percentile", 99.0) == pytest.approx(0.99, abs=1e-3)
    assert obs.range("percentile", 100.0) == 1.0
    # the histogram grows when larger values arrive later
    obs.observe(torch.tensor([[[4.0]]]))
    assert obs.range("minmax") == 4.0
    assert obs.range("percentile", 50.0) == pytest.approx(0.5, abs=5e-3)
    # MSE: its clipping value really has (close to) the least quantization error
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 200_000, 1, generator=g)
    x[0, :20, 0] = 60.0
    obs = RangeObserver()
    obs.observe(x)

    def real_error(clip):
        s = clip / 127
        return float(((torch.round(x / s).clamp(-127, 127) * s - x) ** 2).sum())

    r = obs.range("mse")
    assert r < obs.range("minmax")
    assert real_error(r) <= 1.02 * min(real_error(c) for c in (2.0, 4.0, 8.0, 16.0, 32.0, 60.0))
    assert 0 < obs.range("mse", dtype="fp8") <= 60.0


def test_observer_rejects_nan():
    with pytest.raises(CalibrationError, match="NaN"):
        RangeObserver().observe(torch.tensor([[[float("nan"), 1.0]]]))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_bf16_observer_rejects_non_finite(bad):
    x = torch.ones(1, 12, 4, dtype=torch.bfloat16)
    x[0, 10, 2] = bad
    with pytest.raises(CalibrationError, match="NaN or inf"):
        RangeObserver(prefix_tokens=9).observe(x)


def _histc_reference(inputs, prefix: int = 9, bins: int = 2048) -> list[tuple[float, float, torch.Tensor]]:
    """(amax, histogram top, histogram) after each input, by the widened values and torch.histc."""
    hist, top, amax, out = torch.zeros(bins, dtype=torch.float64), 0.0, 0.0, []
    for x in inputs:
        a = x[:, prefix:].float().abs().flatten()
        m = float(a.max())
        amax = max(amax, m)
        if m > 0:
            top = top or m
            while m > top:
                hist = torch.cat([hist.view(-1, 2).sum(1), torch.zeros(bins // 2, dtype=torch.float64)])
                top *= 2
            hist = hist + torch.histc(a, bins, 0.0, top).double()
        else:
            hist = hist.clone()
            hist[0] += a.numel()
        out.append((amax, top, hist))
    return out


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_observer_histogram_is_histc_on_the_float32_values(dtype):
    """The histogram (bf16: counted by bit pattern; float32: bins computed element-wise, counted on
    several threads), maximum and count are those of torch.histc on the float32 values, observation
    after observation (range doubling included), for values on bin edges, a strided batch and an
    input large enough to be counted on several threads."""
    g = torch.Generator().manual_seed(0)
    top = float(torch.tensor(5.3))  # the histogram's top after the first observation: its maximum
    edge = (torch.arange(2049, dtype=torch.float64) * top / 2048).float()  # the bin edges, and the floats beside them
    edge = torch.cat([edge, torch.nextafter(edge, torch.tensor(0.0)), torch.nextafter(edge, torch.tensor(9.0))])
    edges = torch.stack([edge, -edge]).clamp(-top, top)[:, :, None]  # both signs
    inputs = [torch.zeros(1, 20, 8), edges,
              torch.randn(3, 40, 64, generator=g) * 20,  # rows 9.. of 3 images: not contiguous
              torch.randn(1, 9 + 1100, 1024, generator=g) * 3]  # > 1M patch values
    inputs = [x.to(dtype) for x in inputs]
    fast = RangeObserver(prefix_tokens=9)
    for x, (amax, top, hist) in zip(inputs, _histc_reference(inputs), strict=True):
        fast.observe(x)
        assert fast.amax == amax and fast.hist_max == top
        assert torch.equal(fast.hist, hist)
    assert fast.count == sum(x[:, 9:].numel() for x in inputs) == fast.hist.sum()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_observer_histogram_of_huge_activations_stays_in_range(dtype):
    """Above 1e30, v * bins would overflow float32: those bins are computed in float64."""
    x = torch.tensor([[[0.0], [1e35], [2e37], [3e38]]]).to(dtype)
    obs = RangeObserver()
    obs.observe(x)
    assert obs.hist.sum() == 4 and obs.hist[-1] == 1 and obs.hist[0] == 2


# --- SmoothQuant ----------------------------------------------------------------------------------
def _outlier_model():
    m = tiny_model("seg").set_rope_mode("fp32")
    with torch.no_grad():
        for blk in m.backbone.blocks:
            for ln in (blk.ln1, blk.ln2):
                ln.weight[[3, 17, 40, 61]] *= 50
    return m


def test_smoothquant_folding_keeps_float_model_and_flattens_channels():
    """Folding s into the RMSNorm weight and the linears leaves the float output unchanged (RoPE
    in fp32 mode: the reference's bf16 rounding of q/k would turn last-bit differences into bf16
    steps) and reduces the per-channel activation spread the linears see."""
    m = _outlier_model()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, *INPUT, generator=g)
    groups = find_groups(m)
    assert len(groups) == 2 * len(m.backbone.blocks)
    assert groups[0].norm == "backbone.blocks.0.ln1"
    assert groups[0].linears == ("backbone.blocks.0.attn.wq", "backbone.blocks.0.attn.wk", "backbone.blocks.0.attn.wv")
    assert groups[1].linears == ("backbone.blocks.0.ffn.w12",)

    def stats():
        obs = {gr.linears[0]: ChannelAbsMaxObserver(9) for gr in groups}
        remove = attach_input_observers(m, obs)
        with torch.no_grad():
            out = m.backbone(x)
        remove()
        return out, obs

    before, obs = stats()
    mods = dict(m.named_modules())
    spread_before = {n: float(o.amax.max() / o.amax.median()) for n, o in obs.items()}
    max_before = {n: float(o.amax.max()) for n, o in obs.items()}
    for gr in groups:
        s = smoothing_scales(obs[gr.linears[0]].amax, [mods[n].weight for n in gr.linears], 0.5)
        apply_smoothing(m, gr, s)
    after, obs2 = stats()
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-5 * float(before.abs().max()))
    for n, o in obs2.items():
        assert float(o.amax.max() / o.amax.median()) < spread_before[n] / 3, n
        assert float(o.amax.max()) < max_before[n], n


def test_smoothing_scales_formula():
    act = torch.tensor([4.0, 1.0, 0.0])
    w = torch.tensor([[1.0, 4.0, 2.0], [-0.25, 1.0, 1.0]])
    s = smoothing_scales(act, [w], alpha=0.5)
    torch.testing.assert_close(s, torch.tensor([2.0, 0.5, 1.0]))  # sqrt(4)/sqrt(1), sqrt(1)/sqrt(4), no data -> 1


# --- calibration inputs ---------------------------------------------------------------------------
def _images(n=3, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (40 + 7 * i, 30 + 5 * i, 3), dtype=np.uint8) for i in range(n)]


def test_calibration_folder_and_arrays_use_the_task_pipeline(tmp_path):
    from sapiens2_edge.tasks import get_pipeline

    imgs = _images()
    for i, im in enumerate(imgs):
        cv2.imwrite(str(tmp_path / f"img{i}.png"), cv2.cvtColor(im, cv2.COLOR_RGB2BGR))
    (tmp_path / "notes.txt").write_text("not an image")
    cs = build_calibration_set(tmp_path, "seg", INPUT, limit=32, batch_size=2)
    assert cs.num_samples == 3 and len(cs) == 2 and cs.source == "images"
    want = get_pipeline("seg", input_size=INPUT).preprocess(imgs[0])[0]
    np.testing.assert_array_equal(cs.batches[0][0].numpy(), want[0])
    cs2 = build_calibration_set(imgs, "seg", INPUT, limit=2, batch_size=4)
    assert cs2.num_samples == 2
    np.testing.assert_array_equal(cs2.batches[0].numpy(), cs.batches[0].numpy())


def test_pose_calibration_has_no_flip_copies():
    cs = build_calibration_set(_images(2), "pose", INPUT, limit=32, batch_size=8)
    assert cs.num_samples == 2  # flip_test would give 4


def test_calibration_tensors_limit_and_batches():
    ts = [torch.randn(3, 3, *INPUT) for _ in range(4)]
    cs = build_calibration_set(ts, "seg", INPUT, limit=5, batch_size=2)
    assert cs.num_samples == 5 and [b.shape[0] for b in cs] == [2, 2, 1]
    assert cs.head(3)[1].shape[0] == 1


@pytest.mark.parametrize("bad, match", [
    ([], "calibration set is empty"),
    ([torch.randn(1, 3, 64, 64)], r"shape \(1, 3, 64, 64\); expected \(B, 3, 128, 96\)"),
    ([torch.randn(1, 4, 128, 96)], r"expected \(B, 3, 128, 96\)"),
    ([torch.zeros(1, 3, 128, 96, dtype=torch.int64)], "expected normalised float"),
    ([torch.full((1, 3, 128, 96), float("nan"))], "NaN"),
    ([3.0], "expected an RGB uint8"),
    (42, "got int"),
])
def test_calibration_errors(bad, match):
    with pytest.raises(CalibrationError, match=match) as e:
        build_calibration_set(bad, "seg", INPUT, limit=32, batch_size=4)
    assert isinstance(e.value, (Sapiens2EdgeError, ValueError))


def test_calibration_empty_folder(tmp_path):
    with pytest.raises(CalibrationError, match="holds no images"):
        build_calibration_set(tmp_path, "seg", INPUT, limit=32, batch_size=4)
    with pytest.raises(CalibrationError, match="does not exist"):
        build_calibration_set(tmp_path / "nope", "seg", INPUT, limit=32, batch_size=4)


def test_quantize_reports_calibration_and_empty_set_error():
    m = tiny_model("seg")
    with pytest.raises(CalibrationError, match="empty"):
        quantize(m, "int8", calibration=[], input_size=INPUT)
    with pytest.raises(CalibrationError, match=r"expected \(B, 3, 128, 96\)"):
        quantize(m, "int8", calibration=[torch.randn(1, 3, 64, 48)], input_size=INPUT)
    with pytest.raises(CalibrationError, match="activation_mode='static' needs calibration"):
        quantize(m, "int8", activation_mode="static")
    with pytest.raises(CalibrationError, match="SmoothQuant"):
        quantize(m, "int8", smoothquant_alpha=0.5)
    q, r = quantize(m, "int8")  # default alpha without calibration: skipped, and said so
    assert r.recipe["smoothquant_alpha"] is None and any("SmoothQuant skipped" in n for n in r.notes)
    q, r = quantize(m, "int8", calibration=_images(2), input_size=INPUT, activation_mode="static")
    assert r.calibration["num_samples"] == 2 and r.calibration["source"] == "images"
    assert all(lr.input_range is not None and lr.input_range > 0 for lr in r.layers)
    assert all(float(ql.input_scale) > 0 for ql in q.quantized_layers().values())


def test_progress_bar_only_on_a_terminal():
    from sapiens2_edge.quantization.calibration import progress

    items = [1, 2, 3]
    assert progress(items, 3, "calibrate") is items  # pytest captures stderr: not a TTY
    bar = progress(items, 3, "calibrate", enabled=True)
    assert bar is not items and list(bar) == items
