"""Write docs/api.md, the API reference, from the package's docstrings.

    python scripts/make_api_docs.py          # rewrite docs/api.md
    python scripts/make_api_docs.py --check  # exit 1 if docs/api.md is out of date (CI)

Documents every name in each module's ``__all__`` (or its public functions and classes
defined there), with signatures, in the order the modules are listed below.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import sys
from pathlib import Path

MODULES = [
    "scatterdist",
    "scatterdist.wavelets",
    "scatterdist.sphere",
    "scatterdist.sphere.torch_sht",
    "scatterdist.sphere.mask",
    "scatterdist.sphere.spin",
    "scatterdist.scattering",
    "scatterdist.scattering.backend",
    "scatterdist.wavelet_transform",
    "scatterdist.equivariance",
    "scatterdist.stability",
    "scatterdist.sims",
    "scatterdist.inputs",
    "scatterdist.store",
    "scatterdist.pipeline",
    "scatterdist.feed",
    "scatterdist.cluster",
    "scatterdist.tls",
    "scatterdist.train",
    "scatterdist.experiments",
    "scatterdist.testing",
]
OUT = Path(__file__).resolve().parents[1] / "docs" / "api.md"


def public_names(module) -> list[str]:
    names = getattr(module, "__all__", None)
    if names is None:
        names = [n for n, obj in vars(module).items()
                 if not n.startswith("_") and (inspect.isfunction(obj) or inspect.isclass(obj))
                 and getattr(obj, "__module__", "") == module.__name__]
    return sorted(n for n in names if not n.startswith("__"))


def signature(obj) -> str:
    try:
        return str(inspect.signature(obj))
    except (TypeError, ValueError):
        return ""


def document(obj, name: str, level: int = 3) -> list[str]:
    lines = [f"{'#' * level} `{name}{signature(obj) if callable(obj) else ''}`", ""]
    doc = inspect.getdoc(obj)
    if doc and (callable(obj) or inspect.ismodule(obj)):
        lines += [doc, ""]
    if inspect.isclass(obj):
        for attr, member in sorted(vars(obj).items()):
            if attr.startswith("_") and attr != "__call__":
                continue
            if inspect.isfunction(member) or isinstance(member, (property, classmethod, staticmethod)):
                target = member.__func__ if isinstance(member, (classmethod, staticmethod)) else member
                target = target.fget if isinstance(target, property) else target
                sig = "" if isinstance(member, property) else signature(target)
                lines.append(f"- **`{attr}{sig}`**" + (f": {inspect.getdoc(target).splitlines()[0]}" if inspect.getdoc(target) else ""))
        lines.append("")
    return lines


def render() -> str:
    out = ["# API reference", "", "Generated from the docstrings by `python scripts/make_api_docs.py`; do not edit.", ""]
    for modname in MODULES:
        try:
            module = importlib.import_module(modname)
        except ModuleNotFoundError as exc:
            if exc.name == modname:
                continue  # module not part of this version
            raise
        out += [f"## `{modname}`", ""]
        if inspect.getdoc(module):
            out += [inspect.getdoc(module), ""]
        for name in public_names(module):
            obj = getattr(module, name)
            if inspect.ismodule(obj):
                continue
            out += document(obj, name)
    return "\n".join(out).rstrip() + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args()
    text = render()
    if args.check:
        if not OUT.exists() or OUT.read_text() != text:
            print(f"{OUT} is out of date: run python scripts/make_api_docs.py", file=sys.stderr)
            return 1
        return 0
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(text)
    print(f"wrote {OUT} ({len(text.splitlines())} lines)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
