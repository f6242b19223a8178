"""Re-render a study's ``cmb.md`` from its ``cmb.json`` with the current report code (no recomputation).

A study's page is written by ``scatterdist experiment cmb`` from the records it saves in ``cmb.json``;
this regenerates the page (not the figure) from those same records when only the wording of the
report changed, e.g. for a study whose stores were computed by an earlier version.

    python scripts/cmb_page.py results/nside128-survey
"""

from __future__ import annotations

import argparse
import json
import os

from scatterdist.experiments.report import write_markdown


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dirs", nargs="+", help="study output directories (holding cmb.json)")
    args = ap.parse_args()
    for d in args.dirs:
        with open(os.path.join(d, "cmb.json")) as fh:
            res = json.load(fh)
        figure = "cmb_alpha.png" if os.path.exists(os.path.join(d, "cmb_alpha.png")) else None
        write_markdown(os.path.join(d, "cmb.md"), res["records"], res["settings"], res["timings"], res["command"],
                       figure, res.get("fold_records"))
        print(f"wrote {d}/cmb.md")


if __name__ == "__main__":
    main()
