"""The ``scatterdist`` command.

Subcommands live in the modules of this package: every module that defines
``register(subparsers)`` adds its own parser(s), each with ``set_defaults(func=...)``
where ``func(args) -> int`` returns the exit status. Modules are found with pkgutil,
so adding a command never touches this file.
"""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import sys

from scatterdist import __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="scatterdist",
        description="Spherical wavelet scattering transforms of HEALPix maps at survey scale.",
    )
    parser.add_argument("--version", action="version", version=f"scatterdist {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        register = getattr(module, "register", None)
        if register is not None:
            register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except ValueError as exc:
        # Bad input the user can fix: say what, without a traceback (SCATTERDIST_DEBUG=1 shows it).
        if os.environ.get("SCATTERDIST_DEBUG"):
            raise
        print(f"scatterdist: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
