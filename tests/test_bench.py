"""bench/generate.py: the speed report against plain diffusers (tiny demo models on
CPU), and the full-size dry run's parameter counts. The three benchmark runs
are `slow` (a third of the default suite's time); the dry run and flag check stay. No timing thresholds: only that
the report is complete, its numbers are positive and its ratios come from them."""

from __future__ import annotations

import json
import statistics
from importlib import metadata
from pathlib import Path

import pytest
from conftest import BENCH_GENERATE_FAST, run_bench

REPO = Path(__file__).resolve().parents[1]
METHODS = ["none", "faceid", "instantid"]


def _close(a: float, b: float, rel: float = 2e-3, abs_: float = 2e-4) -> bool:
    return abs(a - b) <= abs_ + rel * abs(b)


@pytest.fixture(scope="module")
def report(tiny_models_dir, tmp_path_factory):
    cwd = tmp_path_factory.mktemp("bench-cwd")
    # the speed modes and batching: tests/test_speed.py
    args = [*BENCH_GENERATE_FAST, "--speeds", "quality", "--batch", "0"]
    return run_bench("generate.py", args, tiny_models_dir, cwd, timeout=600)[0]


@pytest.mark.slow
def test_report_describes_the_run(report):
    assert report["models"] == "tiny demo models: random weights"
    assert report["device"] == "cpu" and report["dtype"] == "float32"
    assert (report["steps"], report["width"], report["height"], report["repeats"]) == (2, 64, 64, 1)
    assert report["torch"].split("+")[0] == metadata.version("torch").split("+")[0]
    assert report["diffusers"] == metadata.version("diffusers")
    assert report["methods"] == METHODS
    assert report["threads"] == 1


@pytest.mark.slow
def test_report_times_and_ratios(report):
    plain = report["plain_seconds"]
    assert plain > 0
    assert report["baseline_seconds"]["none"] == plain  # method none's fair baseline is plain diffusers
    for m in METHODS:
        engine, base = report["engine_seconds"][m], report["baseline_seconds"][m]
        assert engine > 0 and base > 0
        assert _close(report["ratio"][m], engine / plain), (m, report["ratio"][m], engine / plain)
        assert _close(report["ratio_vs_baseline"][m], engine / base), (m, report["ratio_vs_baseline"][m])
        assert isinstance(report["meets_target"][m], bool)
        if abs(engine / base - report["target"]) > 1e-3:  # not decided by rounding
            assert report["meets_target"][m] == (engine / base <= report["target"])
        assert report["baselines"][m]
        assert report["engine_first_call_seconds"][m] > 0
        # the medians are the medians of the samples printed beside them
        assert _close(statistics.median(report["samples"]["engine"][m]), engine)
        assert _close(statistics.median(report["samples"]["baseline"][m]), base)
        assert len(report["samples"]["engine"][m]) == 1
    assert _close(statistics.median(report["samples"]["plain"]), plain)
    assert report["target"] == 1.05
    assert report["cold_start_seconds"] > 0 and report["plain_cold_start_seconds"] > 0
    assert report["cold_start_method"] == "none"
    assert set(report["baseline_load_seconds"]) == {"faceid", "instantid"}


def test_full_size_dry_run_counts_sdxl_parameters(capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(REPO))
    from bench.generate import main

    assert main(["--full-size", "--dry-run"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["models"] == "full-size random weights" and out["dry_run"] is True
    # SDXL base's UNet has ~2.57 B parameters
    assert 2.5e9 < out["unet_parameters"] < 2.7e9
    assert out["parameters"]["unet"] == out["unet_parameters"]
    # every full-size model takes, at its published dtype, the size of the published file (headers aside)
    for name, row in out["files"].items():
        assert row["published_bytes"], name
        assert 0.995 < row["bytes"] / row["published_bytes"] <= 1.0, (name, row)
    assert out["total_parameters"] == sum(out["parameters"].values())


def test_bad_methods_flag_is_rejected(capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(REPO))
    from bench.generate import main

    with pytest.raises(SystemExit) as exc:
        main(["--methods", "none,photomaker"])
    assert exc.value.code == 2
    assert "photomaker" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize("script,args,ratio_key", [
    ("batch.py", ["--items", "2", "--rounds", "1", "--steps", "1", "--size", "64", "--device", "cpu",
                  "--dtype", "float32"], None),
    ("train.py", ["--steps", "2", "--warmup", "1", "--rounds", "1", "--threads", "1"], "speedup"),
])
def test_batch_and_train_benches_print_json(tiny_models_dir, tmp_path, script, args, ratio_key):
    out, _ = run_bench(script, args, tiny_models_dir, tmp_path)
    if ratio_key:
        assert _close(out[ratio_key], out["plain"]["s_per_step"] / out["ours"]["s_per_step"])
    else:
        ratio = next(v for k, v in out.items() if "ratio" in k and isinstance(v, (int, float)))
        assert ratio > 0
