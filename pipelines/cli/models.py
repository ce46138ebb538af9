"""`launch.py models list|download|verify`."""

from __future__ import annotations

import sys

from ..settings import DEMO_BANNER


def register(sub) -> None:
    p = sub.add_parser("models", help="list, download and verify models")
    msub = p.add_subparsers(dest="models_command", metavar="ACTION", required=True, parser_class=type(p))
    lp = msub.add_parser("list", help="every catalog entry and its local state")
    lp.set_defaults(func=cmd_list)
    dp = msub.add_parser("download", help="download models by name (or 'all')")
    dp.add_argument("names", nargs="+", metavar="NAME")
    dp.set_defaults(func=cmd_download)
    vp = msub.add_parser("verify", help="check every present model (or the named ones) against its sha256")
    vp.add_argument("names", nargs="*", metavar="NAME")
    vp.set_defaults(func=cmd_verify)
    rp = msub.add_parser("register", help="register your own single-file SDXL checkpoint (.safetensors) by path")
    rp.add_argument("path")
    rp.set_defaults(func=cmd_register)


def _human(n: int | None) -> str:
    if n is None:
        return "?"
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return str(n)


def _store(settings):
    from ..models.store import ModelStore

    return ModelStore(settings)


def cmd_list(args, settings) -> int:
    store = _store(settings)
    rows = [("NAME", "KIND", "SOURCE", "SIZE", "LICENCE", "STATE")]
    for entry in store.catalog:
        st = store.status(entry.name)
        state = "verified" if st.verified else ("present" if st.present else "missing")
        if entry.research_only:
            state += " (research-only)"
        src = entry.repo if entry.source == "hf" else "release URL"
        rows.append((entry.name, entry.kind, src or "", _human(entry.size), entry.license, state))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[-1])
    if settings.demo:
        print(f"({DEMO_BANNER}; folder {store.root})")
    return 0


def _names(store, names: list[str]) -> list[str]:
    if names == ["all"]:
        return [e.name for e in store.catalog]
    for n in names:
        store.catalog.get(n)  # BadInput for unknown names, before any download
    return names


def cmd_download(args, settings) -> int:
    from ..errors import LikenessError

    store = _store(settings)
    failed = 0
    for name in _names(store, args.names):
        try:
            path = store.download(name, accept_license=settings.accept_research_licenses)
            print(f"{name}: ok ({path})")
        except LikenessError as exc:
            failed += 1
            print(f"{name}: failed: {exc}", file=sys.stderr)
    return 1 if failed else 0


def cmd_verify(args, settings) -> int:
    store = _store(settings)
    names = _names(store, args.names) if args.names else [e.name for e in store.catalog]
    failed = 0
    checked = 0
    from ..errors import LikenessError

    for name in names:
        try:
            if settings.demo:
                store.ensure(name)
            elif not args.names and not store.status(name).present:
                continue
            st = store.verify(name)
        except LikenessError as exc:
            failed += 1
            checked += 1
            print(f"{name}: FAILED: {exc}")
            continue
        checked += 1
        if st.verified:
            print(f"{name}: verified")
        else:
            failed += 1
            print(f"{name}: FAILED: {'; '.join(st.problems or ['missing: ' + ', '.join(st.missing)])}")
    if checked == 0:
        print("no models are present yet; download with `python launch.py models download NAME`")
    return 1 if failed else 0


def cmd_register(args, settings) -> int:
    name = _store(settings).register_checkpoint(args.path)
    print(f"registered {args.path} as {name!r}; use it with --base-model {name}")
    return 0
