"""`launch.py batch JOBFILE`: many portraits from a job file, unattended.

Exit codes: 0 every item ok, 1 some item failed (see the summary and
manifest.jsonl), 2 bad job file. Rerunning the same job skips finished items.
Scale out with `accelerate launch --num_processes N launch.py batch JOBFILE`.
"""

from __future__ import annotations

import sys


def register(sub) -> None:
    p = sub.add_parser(
        "batch", help="generate many portraits from a job file (resumable)",
        description="Run a YAML/JSON job file: identities x presets/prompts x methods x seeds. "
                    "Rerun to resume; items already done are skipped.",
    )
    p.add_argument("jobfile", metavar="JOBFILE", help="job file (.yaml, .yml or .json)")
    p.add_argument("--out", metavar="DIR", help="output folder (default: outputs/batch-<job name>)")
    p.add_argument("--dry-run", action="store_true", help="print the expanded items and write nothing")
    p.set_defaults(func=cmd_batch)


def cmd_batch(args, settings) -> int:
    from pipelines.batch.jobfile import check_resources, load_job
    from pipelines.batch.runner import print_items, run_job
    from pipelines.outputs import check_output_dir

    if args.out:
        check_output_dir(args.out, "--out")
    from pipelines.presets import user_presets_dir

    job = load_job(args.jobfile, settings.profile, presets_dir=user_presets_dir(settings))
    check_resources(job, settings)  # in --dry-run too: it fails where the run would
    if args.dry_run:
        from pipelines.processes import is_main_process

        if is_main_process():  # one listing under accelerate launch
            print_items(job, sys.stdout)
        return 0
    report = run_job(job, settings, args.out)
    return report.exit_code
