"""`launch.py eval`: compare identity methods on your own people and prompts
(Face Sim, CLIP-T, face-detection rate, seconds per image, calibration row)."""

from __future__ import annotations

import sys


def register(sub) -> None:
    p = sub.add_parser("eval", help="measure likeness and prompt following of identity methods")
    p.add_argument("--identities", required=True, metavar="DIR",
                   help="a folder with one sub-folder of photos per person")
    p.add_argument("--prompts", required=True, metavar="FILE", help="a text file with one prompt per line")
    p.add_argument("--methods", default="faceid,instantid", help="comma-separated, e.g. faceid,instantid,wplus")
    p.add_argument("--seeds", type=int, default=1, metavar="K", help="images per person and prompt (seeds 0..K-1)")
    p.add_argument("--seed", type=int, default=0, help="first seed")
    p.add_argument("--out", metavar="DIR", help="report folder (default: outputs/eval/<date-time>)")
    p.add_argument("--steps", type=int)
    p.add_argument("--cfg", type=float)
    p.add_argument("--width", type=int)
    p.add_argument("--height", type=int)
    p.add_argument("--base-model", help="SDXL base for SDXL methods (default sdxl-base)")
    p.add_argument("--sd15-base", help="SD1.5 base for SD1.5 methods such as wplus (default sd15-base)")
    p.set_defaults(func=cmd_eval)


def cmd_eval(args, settings) -> int:
    from pipelines.engine import Engine
    from pipelines.eval import EvalRequest, run_eval
    from pipelines.requests import validate_request

    data = dict(identities=args.identities, prompts=args.prompts, methods=args.methods.split(","),
                seeds=args.seeds, seed=args.seed)
    for key in ("steps", "cfg", "width", "height", "base_model", "sd15_base"):
        v = getattr(args, key)
        if v is not None:
            data[key] = v
    if args.out:
        data["out_dir"] = args.out
    req = validate_request(EvalRequest, data, "eval")
    report = run_eval(Engine(settings), req)
    for row in report.rows:
        sim = "n/a" if row.face_sim is None else f"{row.face_sim:.3f}"
        clip = "" if row.clip_t is None else f"  CLIP-T {row.clip_t:.2f}"
        print(f"{row.method:>12} [{row.recognizer}]  Face Sim {sim}{clip}", file=sys.stderr)
    for path in report.files.values():
        print(path)
    return 1 if report.failures else 0
