"""Argument parsing, settings, error → exit-code mapping."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import traceback

from pipelines.errors import LikenessError
from pipelines.settings import load_settings

# command modules, registered in this order; each adds its own sub-commands
COMMAND_MODULES = (
    "cli.ui",
    "cli.models",
    "cli.generate",
    "cli.poses",
    "cli.presets",
    "cli.train",
    "cli.batch",
    "cli.evaluate",
    "cli.wplus",
)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2
        self.exit(2, f"{self.prog}: error: {message}\n")


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="launch.py", description="Likeness: personalised portraits from a few photos.")
    _add_global_flags(p, suppress=False)
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for mod in COMMAND_MODULES:
        importlib.import_module(mod).register(sub)
    _global_flags_on_subcommands(p)
    return p


# (flags, add_argument keywords): accepted before the sub-command and after it
# (`launch.py --demo models list` = `launch.py models list --demo`)
GLOBAL_FLAGS: tuple[tuple[tuple[str, ...], dict], ...] = (
    (("--demo",), dict(action="store_true", help="use tiny offline models with random weights (also LIKENESS_DEMO=1)")),
    (("--debug",), dict(action="store_true", help="show tracebacks on errors")),
    (("--models-dir",), dict(help="where models are stored (LIKENESS_MODELS_DIR)")),
    (("--loras-dir",), dict(help="LoRA folder (LIKENESS_LORAS_DIR)")),
    (("--outputs-dir",), dict(help="output folder (LIKENESS_OUTPUTS_DIR)")),
    (("--device",), dict(help="auto, cuda, mps or cpu (LIKENESS_DEVICE)")),
    (("--dtype",), dict(help="auto, float16, bfloat16 or float32 (LIKENESS_DTYPE)")),
    (("--offload",), dict(help="auto (from the free VRAM, the default), none, model or sequential "
                                "(LIKENESS_OFFLOAD)")),
    (("--accept-license",), dict(action="store_true", help="accept research-only / non-commercial model licences")),
)


def _add_global_flags(parser: argparse.ArgumentParser, suppress: bool) -> None:
    for flags, kwargs in GLOBAL_FLAGS:
        if any(f in parser._option_string_actions for f in flags):
            continue  # a sub-command's own option of that name wins
        # on sub-commands the default is "not given", so a value set before the
        # sub-command is kept unless the flag is repeated after it
        parser.add_argument(*flags, **({**kwargs, "default": argparse.SUPPRESS} if suppress else kwargs))


def _global_flags_on_subcommands(parser: argparse.ArgumentParser) -> None:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in dict.fromkeys(action.choices.values()):  # aliases map to the same parser
                _add_global_flags(child, suppress=True)
                _global_flags_on_subcommands(child)


def settings_from_args(args: argparse.Namespace):
    demo = bool(args.demo) or _truthy(os.environ.get("LIKENESS_DEMO"))
    return load_settings(
        demo=demo or None,
        models_dir=args.models_dir,
        loras_dir=args.loras_dir,
        outputs_dir=args.outputs_dir,
        device=args.device,
        dtype=args.dtype,
        offload=args.offload,
        accept_research_licenses=True if args.accept_license else None,
    )


def quiet_libraries() -> None:
    """Keep library chatter (load progress bars, deprecation notes) off the
    terminal; --debug shows everything. Runs when a command runs, never at import."""
    import warnings

    for var in ("DIFFUSERS_VERBOSITY", "TRANSFORMERS_VERBOSITY"):
        os.environ.setdefault(var, "error")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    for cat in (FutureWarning, DeprecationWarning, UserWarning):
        warnings.filterwarnings("ignore", category=cat)


def run(argv: list[str]) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.debug:
        quiet_libraries()
    if args.command is None:  # `python launch.py` = the web UI
        args = parser.parse_args([*argv, "ui"])
    try:
        settings = settings_from_args(args)
        if settings.profile.notice:
            print(f"[{settings.profile.notice}]", file=sys.stderr)
        return int(args.func(args, settings) or 0)
    except LikenessError as exc:
        if args.debug:
            traceback.print_exc()
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # unexpected: one line unless --debug
        if args.debug:
            traceback.print_exc()
        else:
            msg = " ".join(str(exc).split())[:300]
            print(f"error: unexpected {type(exc).__name__}: {msg} (run with --debug for a traceback)", file=sys.stderr)
        return 1
