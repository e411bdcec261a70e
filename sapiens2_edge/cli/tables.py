"""Tables the commands print (rich)."""

from __future__ import annotations

from rich.table import Table


def report_table(report) -> Table:
    """The end-of-run table: sizes, whole-model and task fidelity, the weakest layers."""
    table = Table(title=f"quantization: {report.scheme}", show_header=True)
    table.add_column("metric", style="bold")
    table.add_column("value", justify="right")
    table.add_row("size", f"{report.size_before_bytes / 1e6:.2f} MB -> {report.size_after_bytes / 1e6:.2f} MB "
                          f"({report.size_after_bytes / max(report.size_before_bytes, 1):.3f}x)")
    calibration = report.calibration or {}
    if calibration.get("input_size"):
        table.add_row("calibration", f"{calibration.get('num_samples')} images at {'x'.join(map(str, calibration['input_size']))}")
    if report.output_sqnr_db is not None:
        table.add_row("output SQNR (calibration)", f"{report.output_sqnr_db:.1f} dB")
    for k, v in report.fidelity.items():
        if isinstance(v, float):
            table.add_row(f"{k} (held-out)", f"{v:.4f}" if abs(v) < 1e4 else f"{v:.3g}")
        elif k in ("budget", "evaluated_on", "stopped"):
            table.add_row(k, str(v))
        elif k == "samples":
            table.add_row("held-out images read", f"{v} of {report.fidelity.get('samples_available', v)}")
        elif k == "interval":
            target = v.get("target_half_width_95")
            table.add_row(f"{v['metric']} 95 % interval", f"+/- {v['half_width_95']:.4g}"
                          + (f" (stops at +/- {target:.4g})" if target is not None else ""))
    worst = sorted((lr for lr in report.layers if lr.output_sqnr_db is not None), key=lambda lr: lr.output_sqnr_db)
    for lr in worst[:5]:
        table.add_row(f"weak layer {lr.name}", f"{lr.scheme}, {lr.output_sqnr_db:.1f} dB")
    for note in report.notes:
        table.add_row("note", note)
    return table
