"""Held-out evaluations that stop once the task's headline metric is known to its 95 % interval:
the interval against hand-computed values and its coverage by simulation, the reading order, and
the stop in ``evaluate``, ``quantize`` and the ``quantize`` command."""

from __future__ import annotations

import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import sapiens2_edge as s2e
from sapiens2_edge.cli import app
from sapiens2_edge.quantization.enough import HEADLINE, headline_interval, ratio_interval, reading_order, t975
from sapiens2_edge.quantization.evaluate import evaluate
from sapiens2_edge.quantization.fidelity import FidelityAccumulator
from tests.fixtures.synthetic import VISIBLE_KEYPOINTS, make_people
from tests.fixtures.tiny import save, tiny_model

SIZE = (64, 48)


def test_student_t_quantiles():
    assert t975(1) == 12.706 and t975(3) == 3.182 and t975(30) == 2.042
    for df, exact in ((40, 2.021), (60, 2.000), (120, 1.980), (1000, 1.962)):  # printed tables
        assert abs(t975(df) - exact) < 0.003
    with pytest.raises(ValueError, match="at least 1 degree of freedom, got 0"):
        t975(0)


def test_ratio_interval_by_hand():
    value, half = ratio_interval([1, 2, 3], [1, 1, 1])  # mean 2, sd 1, m 3
    assert value == 2.0 and half == pytest.approx(4.303 / math.sqrt(3))
    # unequal counts: R = 4/3, residuals -1/3 and 1/3, mean count 1.5
    value, half = ratio_interval([1, 3], [1, 2])
    assert value == pytest.approx(4 / 3) and half == pytest.approx(12.706 * math.sqrt((2 / 9) / (2 * 1 * 1.5 ** 2)))
    assert ratio_interval([5], [10]) == (0.5, math.inf)
    assert ratio_interval([0, 0], [0, 0]) == (0.0, 0.0)


def test_decibel_metrics_carry_the_interval_through_the_logarithm():
    got = headline_interval(None, [1.0, 1.0, 1.0], [100.0, 100.0, 100.0])  # noise / signal = 0.01 each
    assert got["metric"] == "sqnr_db" and got["value"] == pytest.approx(20.0) and got["half_width_95"] == 0.0
    ratio, half = ratio_interval([0.9, 1.1], [100.0, 100.0])
    got = headline_interval("albedo", [0.9, 1.1], [100.0, 100.0])
    assert got["half_width_95"] == pytest.approx(10 / math.log(10) * half / ratio)
    assert headline_interval("albedo", [0.0, 0.0], [1.0, 1.0])["value"] == math.inf


def test_stop_targets_take_the_larger_of_absolute_and_relative():
    assert headline_interval("seg", [0.9, 0.9], [1, 1])["target_half_width_95"] == 0.005
    assert headline_interval("pose", [3.0, 3.0], [1, 1])["target_half_width_95"] == pytest.approx(0.3)
    assert headline_interval("pose", [0.1, 0.1], [1, 1])["target_half_width_95"] == 0.05


def test_the_interval_covers_the_true_mean_95_percent_of_the_time():
    """Simulated per-image agreements (pixels agreeing out of a varying count): over 2000 evaluations
    of 8 images, the 95 % interval holds the true agreement in 93-97 % of them."""
    rng = np.random.default_rng(0)
    hits = 0
    for _ in range(2000):
        counts = rng.integers(2000, 4000, size=8).astype(float)
        p = np.clip(rng.normal(0.9, 0.03, size=8), 0, 1)
        value, half = ratio_interval(rng.binomial(counts.astype(int), p).astype(float), counts)
        hits += abs(value - 0.9) <= half
    assert 0.93 <= hits / 2000 <= 0.97


def test_reading_order_is_a_fixed_shuffle():
    assert reading_order(16) == reading_order(16) != list(range(16))
    for n in range(1, 40):
        assert sorted(reading_order(n)) == list(range(n))
    firsts = reading_order(16)[:4]  # interleaved pairs (left, right, left, ...): both kinds come early
    assert {i % 2 for i in firsts} == {0, 1}


SHAPES = {"seg": [(29, 64, 48)], "pose": [(17, 16, 12)], "normal": [(3, 64, 48)], "albedo": [(3, 64, 48)],
          "pointmap": [(3, 64, 48), (1,)], None: [(8, 4, 3)]}


@pytest.mark.parametrize("task", list(SHAPES))
def test_the_interval_is_centred_on_the_reported_metric(task):
    """The headline's pooled value over the per-image terms is the metric the report prints."""
    rng = np.random.default_rng(3)
    acc = FidelityAccumulator(task, SIZE)
    for n in (1, 3, 2):
        ref = tuple(rng.standard_normal((n, *s)).astype(np.float32) + (2.0 if len(s) == 1 else 0.0) for s in SHAPES[task])
        acc.add(ref, tuple((r + 0.3 * rng.standard_normal(r.shape)).astype(np.float32) for r in ref))
    got, metric = acc.interval(), HEADLINE[task][0]
    assert acc.images == 6 and got["images"] == 6 and got["metric"] == metric
    assert got["value"] == pytest.approx(acc.result()[metric], rel=1e-9)
    assert 0 < got["half_width_95"] < math.inf


class _Seg(torch.nn.Module):
    """A seg 'model' whose logits are the input's channels (pixel (0, 0) carries an image's marker and
    is ignored); the 'quantized' one adds noise scaled by the marker of each image, and records the markers."""

    task, input_size = "seg", SIZE

    def __init__(self, noisy: bool = False):
        super().__init__()
        self.noisy, self.seen = noisy, []

    def forward(self, x):
        marker = x[:, 0, 0, 0].clone()
        x = x.clone()
        x[:, :, 0, 0] = 0
        logits = torch.cat([x, torch.zeros_like(x[:, :1])], 1)
        if self.noisy:
            self.seen += marker.tolist()
            noise = logits.flip(-1).roll(1, dims=1)  # of each image alone: the same in any batch
            logits = logits + marker.abs().view(-1, 1, 1, 1) * noise
        return logits


def _images(levels, same_content: bool = True) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    base = torch.randn(1, 3, *SIZE, generator=gen)
    out = []
    for level in levels:
        x = base.clone() if same_content else torch.randn(1, 3, *SIZE, generator=gen)
        x[0, 0, 0, 0] = level
        out.append(x)
    return out


def test_evaluate_stops_at_the_minimum_when_every_image_agrees_alike_and_reads_them_shuffled():
    q = _Seg(noisy=True)
    levels = [0.5 + i / 10000 for i in range(16)]
    fid = evaluate(_Seg(), q, _images(levels), input_size=SIZE, samples=16,
                   min_samples=4, batch_size=2, show=False)
    # the same content and nearly the same noise level: the interval is tight at once
    assert fid["samples"] == 4 and fid["samples_available"] == 16 and fid["stopped"] == "the interval was tight enough"
    assert q.seen == pytest.approx([levels[i] for i in reading_order(16)[:4]])
    assert fid["interval"]["images"] == 4 and fid["interval"]["half_width_95"] <= 0.005


def test_evaluate_reads_every_image_while_the_interval_is_wide():
    levels = [0.05, 3.0] * 8  # images alternately near-perfect and far off
    fid = evaluate(_Seg(), _Seg(noisy=True), _images(levels, same_content=False), input_size=SIZE, samples=16,
                   min_samples=4, show=False)
    assert fid["samples"] == 16 and fid["stopped"].startswith("every image was read")
    assert fid["interval"]["half_width_95"] > fid["interval"]["target_half_width_95"]
    everything = evaluate(_Seg(), _Seg(noisy=True), _images(levels, same_content=False), input_size=SIZE, samples=16,
                          show=False)
    assert "stopped" not in everything and everything["samples"] == 16
    assert everything["seg_agreement"] == fid["seg_agreement"]  # the same images, read in another order


def test_pose_reads_every_image_whatever_the_minimum():
    """The trained pose fixture: its int8 displacement has one image with a flipped peak among 16; the
    first few images alone would report a fraction of the mean."""
    pose = s2e.load_model(Path(__file__).parent / "fixtures" / "data" / "trained_tiny_pose.safetensors")
    size = (128, 96)
    q, _ = s2e.quantize(pose, "int8", calibration=list(make_people(16, seed=1001, size=size)[0]), input_size=size,
                        calibration_precision="fp32", progress=False)  # the same ranges on every CPU
    held_out = list(make_people(16, seed=2002, size=size)[0])
    fid = evaluate(pose, q, held_out, input_size=size, samples=16, min_samples=4, keypoints=VISIBLE_KEYPOINTS,
                   show=False)
    assert fid["samples"] == 16 and fid["stopped"].startswith("every image was read (pose: one keypoint")
    assert "target_half_width_95" not in fid["interval"]  # nothing stops a pose evaluation
    first4 = evaluate(pose, q, [held_out[i] for i in reading_order(16)[:4]], input_size=size, samples=4,
                      keypoints=VISIBLE_KEYPOINTS, show=False)
    # what stopping after 4 would have said: tight by the rule's pose half-width, and far below the whole set's mean
    _, absolute, relative = HEADLINE["pose"]
    assert first4["interval"]["half_width_95"] <= max(absolute, relative * first4["pose_mean_px"])
    assert first4["pose_mean_px"] < 0.5 * fid["pose_mean_px"]


def _people(n: int) -> list[np.ndarray]:
    one = make_people(1, seed=7, size=(128, 96))[0][0]
    return [one] * n


def test_quantize_reports_the_images_it_read():
    model = tiny_model("seg")
    calib = list(make_people(4, seed=1, size=(128, 96))[0])
    _, report = s2e.quantize(model, "int8", calib, input_size=(128, 96), activation_mode="static", progress=False,
                             batch_size=2, held_out=_people(6), held_out_samples=6, held_out_min_samples=2)
    assert report.fidelity["samples"] == 2 and report.fidelity["samples_available"] == 6
    assert report.calibration["report_samples"] == 2 and report.fidelity["interval"]["half_width_95"] == 0.0


def test_cli_quantize_prints_the_images_it_read(tmp_path):
    images = tmp_path / "imgs"
    images.mkdir()
    for i, image in enumerate(make_people(4, seed=1, size=(128, 96))[0]):
        cv2.imwrite(str(images / f"c{i}.png"), image[:, :, ::-1])
    held = tmp_path / "held"
    held.mkdir()
    for i, image in enumerate(_people(5)):
        cv2.imwrite(str(held / f"h{i}.png"), image[:, :, ::-1])
    ckpt = save(tiny_model("seg"), tmp_path / "seg.safetensors")
    out, report = tmp_path / "q.safetensors", tmp_path / "q.json"
    args = ["quantize", str(ckpt), "--calib", str(images), "--holdout", str(held), "--calib-size", "4",
            "--activation-mode", "static", "-o", str(out), "--report", str(report), "--input-size", "128x96"]
    res = CliRunner().invoke(app, [*args, "--eval-min-samples", "3"])  # read by batches of 4 at this size
    assert res.exit_code == 0, res.output
    assert "report + fidelity (up to 5 held-out): 1 batch in" in res.output  # the bar ends where reading did
    assert "held-out images read" in res.output and "4 of 5" in res.output and "seg_agreement 95 % interval" in res.output
    assert json.loads(Path(report).read_text())["fidelity"]["stopped"] == "the interval was tight enough"
    res = CliRunner().invoke(app, [*args, "--eval-min-samples", "5"])  # as many as there are: all of them
    assert res.exit_code == 0, res.output
    fidelity = json.loads(Path(report).read_text())["fidelity"]
    assert fidelity["samples"] == 5 and "stopped" not in fidelity
