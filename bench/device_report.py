"""The device report of bench/generate.py (--device-report): GPU name, dtype,
peak VRAM and seconds per 1024² image per speed mode and method, as a table on
stderr and the same numbers under the report's `device_report`.

Seconds per 1024² image are scaled linearly in pixels from the measured size:
exact only when the run was at 1024x1024 (`scaled_to_1024` says when they are
not). Peak VRAM is CUDA's max allocated during one engine call (None elsewhere).
"""

from __future__ import annotations

import sys


def device_name(device: str) -> str:
    """The GPU's name on CUDA, else the CPU's."""
    import platform

    if device == "cuda":
        import torch

        return torch.cuda.get_device_name()
    return platform.processor() or platform.machine()


def device_report(report: dict) -> dict:
    """GPU name, dtype, peak VRAM and seconds per 1024² image per mode and method;
    also printed as a table on stderr."""
    scale = 1024 * 1024 / (report["width"] * report["height"])
    rows = []
    for s, r in report["speeds"].items():
        for m, sec in r["engine_seconds"].items():
            rows.append({"speed": s, "method": m, "steps": r["steps"], "seconds_per_image": sec,
                         "seconds_per_1024_image": round(sec * scale, 4),
                         "plain_seconds_per_1024_image": round(r["baseline_seconds"][m] * scale, 4),
                         "peak_vram_gb": r["peak_vram_gb"].get(m)})
    out = {"device_name": report["device_name"], "dtype": report["dtype"], "models": report["models"],
           "size": f"{report['width']}x{report['height']}", "scaled_to_1024": scale != 1.0, "rows": rows}
    _print_table(out)
    return out


def _print_table(out: dict) -> None:
    print(f"\n{out['device_name']} · {out['dtype']} · {out['models']} · measured at {out['size']}", file=sys.stderr)
    print(f"{'speed':8} {'method':10} {'steps':>5} {'s/1024² img':>12} {'plain s':>9} {'peak GB':>8}", file=sys.stderr)
    for r in out["rows"]:
        peak = "-" if r["peak_vram_gb"] is None else f"{r['peak_vram_gb']:.2f}"
        print(f"{r['speed']:8} {r['method']:10} {r['steps']:>5} {r['seconds_per_1024_image']:>12.4f} "
              f"{r['plain_seconds_per_1024_image']:>9.4f} {peak:>8}", file=sys.stderr)
