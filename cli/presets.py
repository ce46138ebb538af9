"""`launch.py presets list|show`: the one-click portrait presets."""

from __future__ import annotations

import json


def register(sub) -> None:
    p = sub.add_parser("presets", help="list the portrait presets")
    psub = p.add_subparsers(dest="presets_command", metavar="ACTION", required=True, parser_class=type(p))
    lp = psub.add_parser("list", help="every preset (validated) and its main settings")
    lp.set_defaults(func=cmd_list)
    sp = psub.add_parser("show", help="the generate settings a preset resolves to")
    sp.add_argument("name", metavar="NAME")
    sp.add_argument("--subject", help="fills the prompt's {subject} (default: a person)")
    sp.set_defaults(func=cmd_show)


def cmd_list(args, settings) -> int:
    from pipelines.presets import all_presets, user_presets_dir

    rows = [("NAME", "METHOD", "SIZE", "STEPS", "CFG", "POSE", "RESTORE", "TITLE")]
    for p, mine in all_presets(user_presets_dir(settings)):
        w, h = p.width_height
        rows.append((p.name, p.method, f"{p.size} {w}x{h}", str(p.steps), f"{p.cfg:g}",
                     p.pose or "-", p.restore, p.title + (" (yours)" if mine else "")))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[-1])
    return 0


def cmd_show(args, settings) -> int:
    from pipelines.presets import load_preset, user_presets_dir

    print(json.dumps(load_preset(args.name, subject=args.subject, profile=settings.profile,
                                 user_dir=user_presets_dir(settings)), indent=2))
    return 0
