"""`launch.py ui`: the local web UI (imports gradio only when run)."""

from __future__ import annotations

import sys


def register(sub) -> None:
    p = sub.add_parser("ui", help="start the web UI (default command)")
    p.add_argument("--port", type=int, default=7860,
                   help="port to serve on (default: 7860); a port in use is refused with a message before start")
    p.add_argument("--listen", action="store_true", help="listen on all interfaces (needs --auth)")
    p.add_argument("--auth", metavar="USER:PASS", help="require this login")
    p.add_argument("--insecure-no-auth", action="store_true", help="allow --listen without a login (dangerous)")
    p.add_argument("--share", action="store_true", help="create a public gradio share link (needs --auth)")
    p.add_argument("--no-browser", action="store_true", help="do not open a browser window")
    p.set_defaults(func=cmd_ui)


def check_port_free(host: str, port: int) -> None:
    """`BadInput` when `port` cannot be bound on `host` (another server has it),
    checked before gradio starts so the advice names the flag that works."""
    import errno
    import socket

    from pipelines.errors import BadInput

    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as s:
        # as a server binds it: a port in TIME_WAIT is free, a listening one is not
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                why = "is in use" if exc.errno == errno.EADDRINUSE else "needs privileges"
                raise BadInput(f"port {port} {why}; choose another with --port.") from exc
            raise BadInput(f"port {port} on {host} cannot be used ({exc.strerror}); choose another with --port.") \
                from exc


def cmd_ui(args, settings) -> int:
    from app.security import resolve_launch

    cfg = resolve_launch(
        listen=args.listen, port=args.port, auth=args.auth,
        insecure_no_auth=args.insecure_no_auth, share=args.share,
    )
    for w in cfg.warnings:
        print(f"warning: {w}", file=sys.stderr)
    check_port_free(cfg.host, cfg.port)
    from app.server import serve

    serve(settings, cfg, open_browser=not args.no_browser)
    return 0
