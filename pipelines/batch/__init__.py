"""Headless batch generation: a job file expands into items with stable ids; a
runner generates them through one resident `Engine`, resumably and with each
bad item isolated; a manifest records what happened (one shard per process
under `accelerate launch`, merged at the end).

    jobfile.py   `load_job`: a job file -> a `Job` of validated `BatchItem`s, through
                 jobspec.py (schema), jobread.py (bounded reading, line-numbered errors),
                 uploads.py (web UI jobs), expansion.py (axes, presets, ids), resources.py
    manifest.py  atomic JSONL appends, torn-line tolerant reads, shard merge
    runner.py    ordering, identities, execution, progress, summary
"""

from __future__ import annotations

from .jobfile import BatchItem, Job, expand, load_job
from .manifest import MANIFEST_NAME, merge_shards, read_manifest
from .runner import BatchReport, run_job

__all__ = [
    "BatchItem", "Job", "expand", "load_job",
    "MANIFEST_NAME", "merge_shards", "read_manifest",
    "BatchReport", "run_job",
]
