"""`launch.py train-wplus`: train a W+ adapter (adapter only, base frozen) on a
folder of faces, for SD1.5 or SDXL (no public SDXL weights exist).
`launch.py wplus edits`: every attribute edit the downloaded direction files hold
(each usable as `generate --edit NAME=STRENGTH`)."""

from __future__ import annotations

import sys


def register(sub) -> None:
    p = sub.add_parser("train-wplus", help="train a W+ adapter on a folder of face photos")
    p.add_argument("--faces", required=True, metavar="DIR", help="folder of face photos")
    p.add_argument("--base", choices=["sd15", "sdxl"], default="sd15")
    p.add_argument("--name", required=True, help="adapter name (letters, digits, '.', '_', '-')")
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--min-face-px", type=float, help="smallest face kept (default 160; 64 in demo mode)")
    p.set_defaults(func=cmd_train_wplus)

    w = sub.add_parser("wplus", help="W+ adapter tools: list the attribute edits")
    wsub = w.add_subparsers(dest="wplus_command", metavar="ACTION", required=True, parser_class=type(w))
    e = wsub.add_parser("edits", help="every attribute edit in the downloaded direction files (for --edit)")
    e.set_defaults(func=cmd_edits)


def cmd_edits(args, settings) -> int:
    """One line per edit: the name --edit takes, its set, the W+ rows it moves."""
    from pipelines.stores import open_store
    from pipelines.wplus.edits import MAX_STRENGTH, edit_catalog, load_directions

    store = open_store(settings)
    rows = edit_catalog(load_directions(store.ensure("wplus-directions")))
    width = max(len(r["name"]) for r in rows)
    for r in rows:
        also = f"  (also {r['qualified']})" if r["qualified"] != r["name"] else ""
        print(f"{r['name'].ljust(width)}  {r['set']:<12}  rows {r['rows']:<5}{also}")
    counts = {s: sum(r["set"] == s for r in rows) for s in ("interfacegan", "latent", "ganspace")}
    print(f"{len(rows)} edits ({counts['interfacegan']} InterFaceGAN, {counts['latent']} latent directions, "
          f"{counts['ganspace']} GANSpace); use --edit NAME=STRENGTH, strength -{MAX_STRENGTH:g} to "
          f"{MAX_STRENGTH:g} (GANSpace: the target position along its component)", file=sys.stderr)
    return 0


def cmd_train_wplus(args, settings) -> int:
    from pipelines.errors import BadInput
    from pipelines.paths import check_name, confine
    from pipelines.stores import open_store
    from pipelines.wplus.adapter import load_adapter_file
    from pipelines.wplus.align import MIN_FACE_PX
    from pipelines.wplus.train import train_wplus

    check_name(args.name, "--name")
    if not 1 <= args.steps <= 1_000_000:
        raise BadInput(f"--steps {args.steps} is out of range 1-1000000.")
    out_dir = settings.models_dir / "wplus-trained"
    out = confine(out_dir, f"{args.name}.safetensors", "--name")
    min_px = args.min_face_px if args.min_face_px is not None else settings.profile.training_face_px(MIN_FACE_PX)
    result = train_wplus(args.faces, args.base, args.steps, out, open_store(settings), settings,
                         lr=args.lr, seed=args.seed, min_face_px=min_px,
                         progress=lambda d: print(f"step {d.get('step')}/{d.get('steps')} loss {d.get('loss', 0):.4f}",
                                                  file=sys.stderr))
    for ex in result.excluded:
        print(f"left out {ex.get('file', ex)}: {ex.get('reason', '')}", file=sys.stderr)
    keys = load_adapter_file(result.path)  # proves the result loads
    print(f"trained {result.steps} steps on {len(result.used)} faces; {len(keys)} tensors", file=sys.stderr)
    print(result.path)
    return 0
