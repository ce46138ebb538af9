"""Benchmarks (not part of the app): `python bench/generate.py --help`.

Scripts, each printing one JSON object on stdout:

- generate.py: generation speed, the engine against hand-built diffusers baselines;
- batch.py: batch throughput, the batch runner against a plain diffusers loop;
- train.py: LoRA training speed and memory, our trainer against a plain peft loop.

The parts of generate.py: calls.py (the one call both sides make), prepare.py
(models, settings, folders), baselines.py (one diffusers baseline per method),
speed_setup.py (speed modes by hand), compare.py (cold starts and the interleaved
timing), engine_costs.py and steps.py (costs beyond one image), device_report.py,
timing.py (clock, sync, peak memory). fullsize.py builds the full-size
random-weight packs that --full-size runs on. gpu_check.sh runs them on a GPU and
results/ holds what it measured.
"""
