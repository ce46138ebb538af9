"""`launch.py models list|download|verify|register`.

`models download --for faceid|instantid|wplus|pose|restore|preset NAME|all`
fetches everything that choice needs on this machine. Before any byte moves it
prints each model's size and licence, the total and the free disk space; it
takes one licence acceptance for the lot and refuses when the disk is too small.
"""

from __future__ import annotations

import sys


def register(sub) -> None:
    p = sub.add_parser("models", help="list, download and verify models")
    msub = p.add_subparsers(dest="models_command", metavar="ACTION", required=True, parser_class=type(p))
    lp = msub.add_parser("list", help="every catalog entry, its size and local state, and the bundles")
    lp.set_defaults(func=cmd_list)
    dp = msub.add_parser("download", help="download models by name (or 'all'), or a bundle with --for")
    dp.add_argument("names", nargs="*", metavar="NAME")
    dp.add_argument("--for", dest="bundle", nargs="+", metavar="CHOICE",
                    help="everything a choice needs here: an identity method (e.g. faceid), pose, restore, "
                         "preset NAME, all (several may be given)")
    dp.add_argument("--yes", action="store_true", help="do not ask before downloading")
    dp.set_defaults(func=cmd_download)
    vp = msub.add_parser("verify", help="check every present model (or the named ones) against its sha256")
    vp.add_argument("names", nargs="*", metavar="NAME")
    vp.set_defaults(func=cmd_verify)
    rp = msub.add_parser("register", help="register your own single-file SDXL checkpoint (.safetensors) by path")
    rp.add_argument("path", nargs="?")
    rp.add_argument("--found", action="store_true",
                    help="register every SDXL checkpoint in the folders of extra_model_paths.yaml")
    rp.set_defaults(func=cmd_register)


def _store(settings):
    from pipelines.stores import open_store

    return open_store(settings)


def _table(rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[-1])


def cmd_list(args, settings) -> int:
    from pipelines.bundles import bundle_rows, free_space
    from pipelines.models.catalog import human_size

    store = _store(settings)
    rows = [("NAME", "KIND", "SOURCE", "SIZE", "LICENCE", "STATE")]
    for entry in store.catalog:
        st = store.status(entry.name)
        state = "verified" if st.verified else ("present" if st.present else "missing")
        if entry.research_only:
            state += " (research-only)"
        src = entry.repo if entry.source == "hf" else "release URL"
        rows.append((entry.name, entry.kind, src or "", human_size(*entry.planned_size), entry.license, state))
    _table(rows)
    print()
    print("Bundles (models download --for CHOICE; 'preset NAME' too):")
    _table([("BUNDLE", "TOTAL", "TO DOWNLOAD", "MODELS"),
            *((b, total, todo, names) for b, names, total, todo in bundle_rows(store, settings))])
    print(f"free disk space in {store.root}: {human_size(free_space(store.root))} (~ = estimated size)")
    for line in found_lines(store, settings):
        print(line)
    if settings.profile.notice:
        print(f"({settings.profile.notice}; folder {store.root})")
    return 0


def _names(store, names: list[str]) -> list[str]:
    if names == ["all"]:
        return [e.name for e in store.catalog]
    for n in names:
        store.catalog.get(n)  # BadInput for unknown names, before any download
    return names


def resolve_download(args, settings, store) -> list[str]:
    """The models `models download` would fetch for these arguments (validated)."""
    from pipelines.bundles import bundle_choices, choice_models
    from pipelines.errors import BadInput

    names = _names(store, list(args.names or []))
    if args.bundle:
        names += choice_models(args.bundle, settings, store.catalog)
    if not names:
        raise BadInput(f"models download: name the models, or a bundle with --for "
                       f"{'|'.join(bundle_choices())}|preset NAME.")
    return list(dict.fromkeys(names))


def _accept(plan, settings, args) -> bool:
    """One acceptance for every research-only licence in the plan."""
    if not plan.research_only or settings.accept_research_licenses:
        return True
    if not args.yes and sys.stdin.isatty():
        answer = input(f"Accept the research / non-commercial licences of "
                       f"{', '.join(e.name for e in plan.research_only)}? [y/N] ")
        return answer.strip().lower() in ("y", "yes")
    return False


def cmd_download(args, settings) -> int:
    from pipelines.bundles import check_disk, plan
    from pipelines.errors import LicenseNotAccepted, LikenessError

    store = _store(settings)
    todo = plan(store, resolve_download(args, settings, store))
    if not settings.profile.builds_models:  # demo packs are built locally: nothing to plan or accept
        for n in todo.present:
            print(f"{n}: already here")
        if not todo.items:
            return 0
        print("To download:")
        print("\n".join(todo.lines()))
        check_disk(todo)
        if not _accept(todo, settings, args):
            raise LicenseNotAccepted(
                f"{', '.join(e.name for e in todo.research_only)} are licensed for research / non-commercial use "
                "only (see the licences above); accept them with --accept-license "
                "(or LIKENESS_ACCEPT_RESEARCH_LICENSES=1) and run the command again."
            )
    failed = 0
    for name in todo.names:
        try:
            path = store.download(name, accept_license=True)
            print(f"{name}: ok ({path})")
        except LikenessError as exc:
            failed += 1
            print(f"{name}: failed: {exc}", file=sys.stderr)
    return 1 if failed else 0


def cmd_verify(args, settings) -> int:
    from pipelines.bundles import choice_command
    from pipelines.errors import LikenessError

    store = _store(settings)
    names = _names(store, args.names) if args.names else [e.name for e in store.catalog]
    failed = 0
    checked = 0
    for name in names:
        try:
            if settings.profile.builds_models:
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
        print(f"no models are present yet; download them with `{choice_command(['faceid'], settings, store.catalog)}`")
    return 1 if failed else 0


def cmd_register(args, settings) -> int:
    from pipelines.errors import BadInput
    from pipelines.models.external import found_checkpoints

    if bool(args.path) == bool(args.found):
        raise BadInput("models register: give a checkpoint PATH or --found (not both).")
    store = _store(settings)
    paths = [args.path] if args.path else found_checkpoints(settings)
    if not paths:
        print("no SDXL checkpoints found in the folders of extra_model_paths.yaml")
    for path in paths:  # read only: the files stay where they are, as they are
        name = store.register_checkpoint(path)
        print(f"registered {path} as {name!r}; use it with --base-model {name}")
    return 0


def found_lines(store, settings) -> list[str]:
    """Other apps' checkpoints and LoRAs (extra_model_paths.yaml) and how to use them."""
    from pipelines.models.external import extra_paths_file, found_checkpoints, found_files

    source = extra_paths_file(settings)
    if source is None:
        return []
    registered = {p.resolve() for p in store.user_checkpoints().values()}
    new = [p for p in found_checkpoints(settings) if p.resolve() not in registered]
    loras = found_files(settings, "loras")
    lines = [f"Other apps' folders ({source}):"]
    lines.append(f"  {len(new)} SDXL checkpoint(s) not registered yet"
                 + (": `python launch.py models register --found`" if new else ""))
    lines += [f"    {p}" for p in new]
    lines.append(f"  {len(loras)} LoRA file(s), usable by file name: --lora NAME[:WEIGHT] or <lora:NAME:WEIGHT>")
    return lines
