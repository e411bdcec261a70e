"""The main job talks: an estimate up front, each stage announced before its work, progress with
an ETA, a summary for people, everything within 80 columns."""

from __future__ import annotations

import json
import threading
import time

import pytest
from rich.console import Console
from typer.testing import CliRunner

import sapiens2_edge.cli as cli
import sapiens2_edge.demo as demo
from sapiens2_edge.workflows import Talk
from tests.fixtures.tiny import TINY, tiny_model

runner = CliRunner()


@pytest.fixture()
def random_tiny(tmp_path, monkeypatch):
    monkeypatch.setenv("SAPIENS_CHECKPOINT_ROOT", str(tmp_path / "nothing"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr(demo, "RANDOM_DEFAULT", (TINY, (64, 48)))  # a tiny random model keeps it fast


def test_demo_talks_at_80_columns(tmp_path, monkeypatch, random_tiny):
    """Each stage prints before its work starts; the estimate comes first; no line is wider than 80."""
    import sapiens2_edge.exporters
    import sapiens2_edge.runtime.outputs
    import sapiens2_edge.workflows

    console = Console(width=80, highlight=False)
    monkeypatch.setattr(cli, "console", console)
    for module, name in ((sapiens2_edge.workflows, "quantize_and_save"), (sapiens2_edge.exporters, "export"),
                         (sapiens2_edge.runtime.outputs, "run_predictions")):
        real = getattr(module, name)

        def traced(*a, _real=real, _name=name, **k):
            console.print(f"<work {_name}>", markup=False)
            return _real(*a, **k)
        monkeypatch.setattr(module, name, traced)
    out = tmp_path / "d"
    res = runner.invoke(cli.app, ["demo", "--task", "seg", "--output", str(out), "--scheme", "int8-weight",
                                  "--format", "native", "--no-bench"])
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    assert max(len(line) for line in lines) <= 80, [line for line in lines if len(line) > 80]

    def at(text: str) -> int:
        return next(i for i, line in enumerate(lines) if text in line)
    assert at("[1/5] load") < at("estimate for the rest: about") < at("[2/5] quantize") < at("<work quantize_and_save>")
    assert at("<work quantize_and_save>") < at("[3/5] export") < at("export native + verify: started, about") \
        < at("<work export>") < at("[4/5] predict") < at("<work run_predictions>") < at("summary")
    text = " ".join(res.output.split())
    # int8-weight needs no data: no calibration pass, only the comparison with the fp32 model
    assert "weights only: no calibration data needed" in text and "calibrate:" not in text
    assert "evaluate (3 held-out): 0/1 batch" in text and "evaluate (3 held-out): 1 batch in" in text
    # the summary says what each number is measured against
    assert "vs the torch fp32 model on 3 other augmented views of astronaut.jpg" in text
    assert "(native int8-weight," in text and "vs torch int8-weight QuantizedModel" in text
    assert "RANDOM WEIGHTS" in text and "estimated" in text and "summary:" not in text  # no JSON dump
    assert not (out / "bench").exists() and (out / "predictions" / "astronaut_labels.npy").exists()


def test_the_plain_talk_reports_progress_and_eta():
    lines: list[str] = []
    talk = Talk(write=lines.append, every=0.0)
    with talk.bar("stage", 4, "batch") as advance:
        assert lines == ["      stage: 0/4 batches"]  # before any work
        for _ in range(4):
            time.sleep(0.01)
            advance()
    assert any("/4 batches" in line and "left" in line for line in lines[1:-1]), lines
    assert lines[-1].startswith("      stage: 4 batches in ")
    assert list(talk.iterate(iter([1, 2, 3]), 3, "it")) == [1, 2, 3] and lines[-1].startswith("      it: 3 batches in")
    assert all("about" in line for line in lines if "left" in line)


def test_a_stage_that_may_stop_early_gives_its_time_left_as_a_bound_and_ends_where_it_stopped():
    lines: list[str] = []
    talk = Talk(write=lines.append, every=0.0)
    for item in talk.iterate(iter(range(8)), 8, "report (up to 8 held-out)"):
        time.sleep(0.01)
        if item == 2:  # enough after three
            break
    left = [line for line in lines if "left" in line]
    assert left and all("at most" in line and "about" not in line for line in left), lines
    assert lines[-1].startswith("      report (up to 8 held-out): 3 batches in ")


def test_the_timer_talks_while_a_step_is_silent():
    lines: list[str] = []
    talk = Talk(write=lines.append, every=0.05)
    started = threading.Event()
    with talk.timer("export", 100):
        started.set()
        assert lines == ["      export: started, about 1.7 min (estimate)"]
        time.sleep(0.3)
    assert any("s elapsed of about 1.7 min (estimate)" in line for line in lines[1:-1]), lines
    assert lines[-1].startswith("      export: done in 0.")


def test_forward_flops_match_a_flop_counter():
    """The estimate's FLOP count against torch's own count of one backbone forward (which leaves
    out scaled_dot_product_attention on the CPU), and its attention part against a hand count."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    model = tiny_model(None).eval()
    size = (256, 192)
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, 3, *size))
    counted = counter.get_total_flops() / 1e9
    linear = demo.forward_gflop(TINY, size, attention=False)
    assert counted * 0.9 < linear < counted * 1.1, (linear, counted)
    # 201 tokens (12 x 16 patches + 9 prefix); QK^T and AV: 2 x 2 x 201^2 x 64 per block, 18 blocks
    assert demo.forward_gflop(TINY, size) - linear == pytest.approx(18 * 4 * 201**2 * 64 / 1e9)


def test_estimate_skips_calibration_for_weight_only():
    args = dict(arch=TINY, input_size=(64, 48), fmt="native", calib_count=8, bench_runs=3, bench=True, gflops=10.0)
    int8, weight_only = demo.estimate_stages(scheme="int8", **args), demo.estimate_stages(scheme="int8-weight", **args)
    forward_s = demo.forward_gflop(TINY, (64, 48)) / (10.0 * demo.MODEL_EFFICIENCY)
    assert weight_only["quantize"] == pytest.approx(forward_s * demo.HELD_OUT_VIEWS * (1 + demo.QUANT_FORWARD))
    assert int8["quantize"] > weight_only["quantize"] and int8["export"] == weight_only["export"]
    assert set(int8) == {"quantize", "export", "predict", "bench"}


def test_bench_table_fits_80_columns_with_a_legend():
    from sapiens2_edge.bench import BASELINE, bench_legend, bench_table

    row = {"backend": "onnxruntime", "input": "1024x768", "batch": 1, "count": 5, "load_s": 123.45, "median_s": 12.345,
           "p90_s": 13.0, "throughput_img_s": 1234.56, "peak_rss_mb": 123456.0, "size_mb": 12345.6,
           "fidelity_rel_l2": 1.23e-05, "fidelity_reference": "torch int8 QuantizedModel (same recipe) eager",
           "speedup": 12.34}
    rows = [{**row, "artifact": BASELINE, "fidelity_rel_l2": None, "fidelity_reference": None, "speedup": 1.0},
            {**row, "artifact": "a-very-long-artifact-directory-name-for-the-demo (openvino int8)"}]
    console = Console(width=80, record=True)
    console.print(bench_table(rows))
    table = console.export_text().splitlines()
    assert max(len(line) for line in table) <= 80 and "…" not in "".join(table)
    assert "load s" in table[1] and "speed-up" in table[1] and "rel L2" in table[1]
    legend = bench_legend(rows)
    assert max(len(line) for line in legend) <= 80
    assert legend[0].startswith("1: torch fp32 eager") and "a-very-long-artifact-directory-name" in legend[2]
    assert any("rel L2: relative L2 error of the artifact's outputs vs torch int8 QuantizedModel" in line
               for line in legend)


def test_bench_progress_counts_every_call_of_the_child(tmp_path):
    import sapiens2_edge as s2e
    from sapiens2_edge import bench

    q, _ = s2e.quantize(tiny_model("seg"), scheme="int8-weight", progress=False)
    root = s2e.export(q, tmp_path / "n", format="native", input_size=(64, 48), max_batch=1)
    lines: list[str] = []
    rows = bench.run([root], ["native"], warmup=1, runs=2, baseline=False, talk=Talk(write=lines.append))
    assert lines[0] == "      bench: 1 rows x (load + 1 warm-up + 2 timed): 0/4 steps"
    assert lines[-1].startswith("      bench: 1 rows x (load + 1 warm-up + 2 timed): 4 steps in ")
    assert rows[0]["count"] == 2 and json.loads(json.dumps(rows))[0]["artifact"] == "n (native int8-weight)"


def test_the_terminal_talk_draws_bars_with_an_eta():
    import io

    from sapiens2_edge.workflows import RichTalk

    buf = io.StringIO()
    talk = RichTalk(Console(file=buf, force_terminal=True, width=80, color_system=None))
    assert list(talk.iterate(iter(range(3)), 3, "calibrate")) == [0, 1, 2]
    with talk.timer("export", 0.2):
        time.sleep(0.6)
    talk.say("[2/5] quantize: [bold]not markup[/bold]")
    text = buf.getvalue()
    assert "calibrate (batches)" in text and "3/3" in text and "eta" in text
    assert "export (seconds, estimated)" in text and "[2/5] quantize: [bold]not markup[/bold]" in text


def test_demo_judges_a_bf16_run_of_its_int8_artifact_against_the_float_model(tmp_path, monkeypatch, random_tiny):
    """The demo hands the float model to the export, so an int8 IR's bf16 run (which flips int8
    roundings) is judged by its distance to the float model; each verified precision is reported."""
    import sapiens2_edge.exporters

    seen = {}
    real = sapiens2_edge.exporters.export

    def traced(model, *a, **k):
        seen["float_model"] = k.get("float_model")
        seen["quantized"] = model
        return real(model, *a, **k)
    monkeypatch.setattr(sapiens2_edge.exporters, "export", traced)
    monkeypatch.setattr(cli, "console", Console(width=80, highlight=False))
    out = tmp_path / "d"
    res = runner.invoke(cli.app, ["demo", "--task", "seg", "--output", str(out), "--scheme", "int8",
                                  "--format", "openvino", "--no-bench"])
    assert res.exit_code == 0, res.output
    assert seen["float_model"] is not None and not hasattr(seen["float_model"], "recipe_dict")
    assert hasattr(seen["quantized"], "recipe_dict")
    policy = json.loads((out / "openvino-int8" / "manifest.json").read_text())["options"]["inference_precision"]
    text = " ".join(res.output.split())
    f32 = policy["fidelity"]["f32"]
    assert f32["against"] == "torch QuantizedModel" and f"f32 run: rel L2 {f32['rel_l2']:.3g}" in text
    bf16 = policy["fidelity"]["bf16"]
    if "rel_l2" in bf16:  # a CPU with native bf16
        assert bf16["against"] == "float model"
        assert bf16["tolerance"] > f32["rel_l2_vs_float"]
        assert f"bf16 run: rel L2 {bf16['rel_l2']:.3g} vs float model" in text
    else:
        assert "bf16 run: not checked here" in text


VNNI, AVX2_ONLY = (True, "this CPU has avx512_vnni"), (False, "this CPU has no VNNI or AMX")


def test_auto_scheme_is_int8_only_where_int8_kernels_make_it_the_fastest():
    from sapiens2_edge.artifact.formats import FORMATS
    from sapiens2_edge.workflows import check_scheme_format

    for fmt in ("openvino", "native", "torch"):
        assert demo.scheme_reason("auto", fmt, VNNI) == (
            "int8", "auto: this CPU has avx512_vnni, so int8 kernels make an int8 artifact the fastest here")
        scheme, why = demo.scheme_reason("auto", fmt, AVX2_ONLY)
        assert scheme == "fp32" and why.startswith("auto: this CPU has no VNNI or AMX (no int8 dot products)")
        assert f"so {fmt} computes int8 no faster than float here and an fp32 artifact is its fastest" in why
    # ONNX Runtime has int8 kernels on AVX2 too
    assert demo.scheme_reason("auto", "onnx", VNNI)[0] == demo.scheme_reason("auto", "onnx", AVX2_ONLY)[0] == "int8"
    # formats made for phones do not depend on this CPU
    assert demo.scheme_reason("auto", "coreml", AVX2_ONLY)[0] == "int8"
    assert demo.scheme_reason("auto", "litert", VNNI)[0] == "int8-weight"  # takes no int8 activations
    assert demo.scheme_reason("auto", "executorch", VNNI)[0] == "int8-weight"  # no static ranges
    assert demo.scheme_reason("int8", "openvino", AVX2_ONLY) == ("int8", "asked for")
    for fmt in FORMATS:  # auto never picks what the format refuses
        for cpu in (VNNI, AVX2_ONLY):
            scheme, _ = demo.scheme_reason("auto", fmt, cpu)
            check_scheme_format(scheme, fmt, static=scheme in demo.CALIBRATED_SCHEMES)


@pytest.mark.parametrize("installed,cpu,fmt,why", [
    ({"openvino", "onnxruntime"}, VNNI, "openvino", "auto: OpenVINO is installed (its int8 kernels"),
    ({"openvino", "onnxruntime"}, AVX2_ONLY, "onnx", "auto: this CPU has no VNNI or AMX, so OpenVINO has no int8 "
                                                     "kernels here while ONNX Runtime's int8 kernels make"),
    ({"openvino"}, AVX2_ONLY, "openvino", "auto: OpenVINO is installed"),
    ({"onnxruntime"}, VNNI, "onnx", "auto: OpenVINO is not installed, ONNX Runtime runs ONNX"),
])
def test_auto_format_is_the_runtime_with_int8_kernels_on_this_cpu(monkeypatch, installed, cpu, fmt, why):
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object() if name in installed else None)
    assert demo.format_reason("auto", cpu)[0] == fmt and demo.format_reason("auto", cpu)[1].startswith(why)
    assert demo.format_reason("native", cpu) == ("native", "asked for")
    # the seg head has no 3x3 convolutions: Winograd changes nothing for it
    assert demo.format_reason("auto", cpu, "seg", winograd=True)[0] == fmt


@pytest.mark.parametrize("task", ["normal", "pointmap", "albedo"])
def test_auto_format_of_a_dense_task_is_native_where_winograd_beats_int8_kernels(task):
    """Without int8 dot products the native engine's Winograd 3x3 convolutions make its fp32 artifact the
    fastest for the dense tasks (benchmarks/results/cpu_peers.md); with them, or without oneDNN for the
    engine, the choice is the one above."""
    fmt, why = demo.format_reason("auto", AVX2_ONLY, task, winograd=True)
    assert fmt == "native" and why.startswith(f"auto: this CPU has no VNNI or AMX, and a {task} head is 3x3 "
                                              "convolutions, which the native engine runs by Winograd")
    assert "native fp32 2.77 s, ONNX Runtime int8 3.41 s" in why
    scheme, why = demo.scheme_reason("auto", fmt, AVX2_ONLY, task)
    assert scheme == "fp32" and why.endswith("an fp32 artifact is its fastest (0.1b normal at 512x384: native fp32 "
                                             "2.77 s, ONNX Runtime int8 3.41 s, OpenVINO fp32 3.70 s, torch 4.45 s)")
    assert demo.format_reason("auto", VNNI, task, winograd=True)[0] != "native"
    assert demo.format_reason("auto", AVX2_ONLY, task, winograd=False)[0] != "native"


@pytest.mark.parametrize("cpu", [VNNI, AVX2_ONLY], ids=["int8-dot", "avx2-only"])
def test_the_demo_default_scheme_follows_the_cpu(tmp_path, monkeypatch, random_tiny, cpu):
    """By default the demo quantizes to int8 where the CPU has int8 dot products and exports the fp32
    model unquantized where it has none, saying why in both cases."""
    import sapiens2_edge.cpu_features

    monkeypatch.setattr(sapiens2_edge.cpu_features, "int8_dot_products", lambda cpuinfo=None: cpu)
    monkeypatch.setattr(cli, "console", Console(width=80, highlight=False))
    out = tmp_path / "d"
    res = runner.invoke(cli.app, ["demo", "--task", "seg", "--output", str(out), "--format", "native", "--no-bench"])
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())
    scheme = "int8" if cpu[0] else "fp32"
    manifest = json.loads((out / f"native-{scheme}" / "manifest.json").read_text())
    assert manifest["precision"] == scheme
    if cpu[0]:
        assert "[2/5] quantize: int8 (static activations" in text and (out / "model_int8.safetensors").exists()
        assert "int8: auto: this CPU has avx512_vnni, so int8 kernels" in text
    else:
        assert "[2/5] quantize: none, the fp32 model goes to the export (auto: this CPU has no VNNI or AMX" in text
        assert "quantized: no: auto: this CPU has no VNNI or AMX" in text
        assert not list(out.glob("model_*.safetensors")) and "estimate for the rest" in text
        assert "quantize ~" not in text  # nothing to quantize, nothing estimated for it
    assert (out / "predictions" / "astronaut_labels.npy").exists()


def test_precision_checks_text_names_each_check():
    lines = demo.precision_checks_text({"fidelity": {
        "f32": {"rel_l2": 0.0078, "tolerance": 0.05, "passed": True, "against": "torch QuantizedModel"},
        "bf16": {"rel_l2": 0.2, "tolerance": 0.14, "passed": False, "against": "float model"}}})
    assert lines == ["bf16 run: rel L2 0.2 vs float model (tolerance 0.14) failed: not used",
                     "f32 run: rel L2 0.0078 vs torch QuantizedModel (tolerance 0.05) passed"]
    assert demo.precision_checks_text({"fidelity": {"bf16": {"passed": False, "not_checked": "no avx512_bf16"}}}) \
        == ["bf16 run: not checked here (no avx512_bf16)"]
