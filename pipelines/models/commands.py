"""The command lines the app prints as "run this" hints for missing models.

Every hint comes from `download_command`, so each one is a command the real
parser accepts (tests parse them all).
"""

from __future__ import annotations

from .catalog import Catalog


def download_command(names=(), choice=(), accept_license: bool = False) -> str:
    """The command line that downloads `names` or the bundle `choice` (tokens
    such as ("faceid",) or ("preset", "studio-headshot"))."""
    parts = ["python", "launch.py", "models", "download", *names]
    if choice:
        parts += ["--for", *choice]
    if accept_license:
        parts.append("--accept-license")
    return " ".join(parts)


def model_command(*names: str, catalog: Catalog | None = None) -> str:
    """The command that downloads catalog models `names` (with --accept-license
    when one of them is research-only)."""
    from .catalog import load_catalog

    catalog = catalog or load_catalog()
    research = any(catalog.get(n).research_only for n in names)
    return download_command(names, accept_license=research)
