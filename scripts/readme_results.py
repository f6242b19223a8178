"""The README's CMB result tables, generated from the studies' ``cmb.json`` files (never typed by hand).

Every block of README.md between ``<!-- results: DIR -->`` and ``<!-- /results -->`` is the
summary of ``DIR/cmb.json`` (written by ``scatterdist experiment cmb --out DIR``): the exact
command, the size of the study, its wall time and machine, the accuracy of every model per alpha
(mean ± standard error over seeds, the best mean of each row in bold), the recommended model
against the best baseline, and the figure.

    python scripts/readme_results.py            # rewrite the blocks of README.md
    python scripts/readme_results.py --check    # exit 1 if README.md is not current (run by the tests)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys

from scatterdist.experiments.report import compare

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BLOCK = re.compile(r"(<!-- results: (?P<dir>[^ ]+) -->\n)(?P<body>.*?)(<!-- /results -->)", re.S)

#: model key -> short README column heading, in column order.
COLUMNS = {
    "recommended": "recommended",
    "scattering": "scattering + CNN (paper)",
    "scattering_signed": "signed scattering + CNN",
    "signed_invariants": "signed-path means",
    "scattering_invariants": "all means (signed transform)",
    "modulus_invariants": "modulus-path means",
    "lowpass": "low-res CNN",
    "power_spectrum": "power spectrum",
    "pixel_moments": "pixel moments",
    "wavelet_moments": "wavelet moments",
}
BASELINES = ("power_spectrum", "pixel_moments", "wavelet_moments")


def _pct(row: dict) -> str:
    se = row["se"]
    return f"{100 * row['mean']:.1f}%" if se is None or math.isnan(se) else f"{100 * row['mean']:.1f} ± {100 * se:.1f}%"


def _minutes(seconds: float | None) -> str:
    return "not recorded" if seconds is None else f"{seconds / 60:.0f} min"


def block(result_dir: str) -> str:
    """The markdown summary of ``result_dir/cmb.json`` (paths relative to the repository root)."""
    with open(os.path.join(ROOT, result_dir, "cmb.json")) as fh:
        res = json.load(fh)
    st, rows, timings = res["settings"], res["summary"], res["timings"]
    by = {(r["alpha"], r["model"]): r for r in rows}
    alphas = sorted({r["alpha"] for r in rows})
    models = [m for m in COLUMNS if any(r["model"] == m for r in rows)]
    seeds = max(r["n_seeds"] for r in rows)
    n_test = rows[0]["n_test"]
    survey = st.get("survey") or {}
    conditions = ("clean full sky" if not survey else
                  ", ".join(f"{k} {v:g}" for k, v in survey.items()).replace("fwhm_arcmin", "beam FWHM (arcmin)")
                  .replace("noise_uK_arcmin", "white noise (uK-arcmin)").replace("galactic_cut", "Galactic cut |b| >"))
    steps = {k: v for k, v in timings.items() if k.startswith(("simulate", "train"))}
    sim = sum(v for k, v in steps.items() if k.startswith("simulate") and v is not None)
    cnn = sum(v for k, v in steps.items() if k.startswith("train") and v is not None)
    machine = st.get("machine", {})
    training = f", {_minutes(cnn)} training and evaluating the CNNs" if any(k.startswith("train") for k in steps) else ""
    lines = [
        f"nside {st['nside']} (L = {2 * st['nside']}), {conditions}; N = {st['n_per_class']} skies per class, "
        f"{len(alphas)} alpha(s) x {seeds} seed(s), ~{n_test:.0f} test skies per seed "
        f"([`{result_dir}/cmb.md`]({result_dir}/cmb.md)). Wall time: {_minutes(timings.get('total'))} "
        f"({_minutes(sim)} simulating, scattering and computing features on {st['dask_workers']} Dask workers x "
        f"{st['dask_threads']} thread{training}) on a machine with os.cpu_count() = {machine.get('cpu_count', '?')}:",
        "",
        "```",
        res["command"],
        "```",
        "",
        "| alpha | " + " | ".join(COLUMNS[m] for m in models) + " |",
        "|---|" + "---|" * len(models),
    ]
    for a in alphas:
        present = [by[(a, m)]["mean"] for m in models if (a, m) in by and m != "recommended"]
        top = max(present, default=None)
        cells = []
        for m in models:
            r = by.get((a, m))
            text = "-" if r is None else _pct(r)
            cells.append(f"**{text}**" if r is not None and m != "recommended" and r["mean"] == top else text)
        lines.append(f"| {a:g} | " + " | ".join(cells) + " |")
    verdicts = []
    for a in alphas:
        rec = by.get((a, "recommended"))
        base = [by[(a, m)] for m in BASELINES if (a, m) in by]
        if rec is None or not base:
            continue
        best = max(base, key=lambda r: r["mean"])
        diff, _, word = compare(rec, best)
        verdicts.append(f"{a:g}: {word} ({100 * diff:+.1f} vs {COLUMNS[best['model']]})")
    if verdicts:
        def first(ms):
            hit = [a for a in alphas if any((a, m) in by and by[(a, m)]["mean"] >= 0.95 for m in ms)]
            return f"{hit[0]:g}" if hit else f"not reached (alpha <= {alphas[-1]:g})"
        lines += ["", "Recommended model against the best baseline, per alpha: " + "; ".join(verdicts) + ". "
                  f"First alpha at >= 95%: recommended {first(['recommended'])}, best baseline {first(BASELINES)}."]
    lines += ["", f"![accuracy vs alpha]({result_dir}/cmb_alpha.png)", ""]
    return "\n".join(lines)


def render(text: str) -> str:
    """``text`` with every results block regenerated."""
    return BLOCK.sub(lambda m: m.group(1) + block(m.group("dir")) + m.group(4), text)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="exit 1 if README.md differs from the generated blocks")
    ap.add_argument("--readme", default=os.path.join(ROOT, "README.md"))
    args = ap.parse_args()
    with open(args.readme) as fh:
        text = fh.read()
    new = render(text)
    if args.check:
        if new != text:
            print(f"{args.readme} is out of date: run python scripts/readme_results.py", file=sys.stderr)
            return 1
        return 0
    with open(args.readme, "w") as fh:
        fh.write(new)
    return 0


if __name__ == "__main__":
    sys.exit(main())
