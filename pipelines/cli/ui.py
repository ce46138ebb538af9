"""`launch.py ui`: the local web UI (imports gradio only when run)."""

from __future__ import annotations

import sys


def register(sub) -> None:
    p = sub.add_parser("ui", help="start the web UI (default command)")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--listen", action="store_true", help="listen on all interfaces (needs --auth)")
    p.add_argument("--auth", metavar="USER:PASS", help="require this login")
    p.add_argument("--insecure-no-auth", action="store_true", help="allow --listen without a login (dangerous)")
    p.add_argument("--share", action="store_true", help="create a public gradio share link (needs --auth)")
    p.add_argument("--no-browser", action="store_true", help="do not open a browser window")
    p.set_defaults(func=cmd_ui)


def cmd_ui(args, settings) -> int:
    from app.security import resolve_launch

    cfg = resolve_launch(
        listen=args.listen, port=args.port, auth=args.auth,
        insecure_no_auth=args.insecure_no_auth, share=args.share,
    )
    for w in cfg.warnings:
        print(f"warning: {w}", file=sys.stderr)
    from app.server import serve

    serve(settings, cfg, open_browser=not args.no_browser)
    return 0
