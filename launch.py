#!/usr/bin/env python3
"""Likeness command line: parses arguments and dispatches. No side effects at import.

    python launch.py                  # the web UI on 127.0.0.1 (same as `ui`)
    python launch.py models list      # the model catalog and what is on disk
    python launch.py --demo ...       # tiny offline models with random weights

Exit codes: 0 ok, 1 some items failed, 2 bad usage or bad input.
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    from cli.main import run

    return run(sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    sys.exit(main())
