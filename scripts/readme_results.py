"""The README's CMB result tables, generated from the studies' ``cmb.json`` files (never typed by hand).

Every block of README.md between ``<!-- results: DIR -->`` and ``<!-- /results -->`` is the
summary of ``DIR/cmb.json`` (written by ``scatterdist experiment cmb --out DIR``): the exact
command, the size of the study, its wall time and machine, the accuracy of every model per alpha
(mean ± standard error, recomputed from the per-seed records with the report's rule: the larger of
the seed-to-seed error and the binomial error of the pooled test skies), the recommended model
against the best baseline chosen on validation (with the McNemar test where per-sky predictions
exist) and against the optimal cubic statistic T, where each first reaches 95% on validation, and
the figure. No cell is bold: a maximum picked on test numbers is not a finding.

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

from scatterdist.experiments.report import (
    BASELINE_MODELS,
    YARDSTICK,
    best_on_validation,
    compare,
    first_alpha_95,
    paired_test,
    summarise,
)

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
    "covariance_invariants": "scattering covariances",
    "covariance_cnn": "covariances + CNN",
    "lowpass": "low-res CNN",
    "power_spectrum": "power spectrum",
    "pixel_moments": "pixel moments",
    "wavelet_moments": "wavelet moments",
    "cubic": "optimal cubic T",
}


def _pct(row: dict) -> str:
    se = row["se"]
    return f"{100 * row['mean']:.1f}%" if se is None or math.isnan(se) else f"{100 * row['mean']:.1f} ± {100 * se:.1f}%"


def _minutes(seconds: float | None) -> str:
    return "not recorded" if seconds is None else f"{seconds / 60:.0f} min"


def block(result_dir: str) -> str:
    """The markdown summary of ``result_dir/cmb.json`` (paths relative to the repository root)."""
    with open(os.path.join(ROOT, result_dir, "cmb.json")) as fh:
        res = json.load(fh)
    st, records, timings = res["settings"], res["records"], res["timings"]
    rows = summarise(records)
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
    design = (f"{len(alphas)} alpha(s) x {seeds} seed(s), ~{n_test:.0f} test skies per seed" if not st.get("folds") else
              f"{len(alphas)} alpha(s), one independent set of skies per alpha, {st['folds']}-fold (every sky tested once: "
              f"{n_test:.0f} test predictions per alpha; ± the larger of the bootstrap error over skies and the binomial error)")
    lines = [
        f"nside {st['nside']} (L = {2 * st['nside']}), {conditions}; N = {st['n_per_class']} skies per class, "
        f"{design} "
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
        cells = ["-" if (a, m) not in by else _pct(by[(a, m)]) for m in models]
        lines.append(f"| {a:g} | " + " | ".join(cells) + " |")
    verdicts = []
    for a in alphas:
        rec = by.get((a, "recommended"))
        best = best_on_validation(by, a, BASELINE_MODELS)
        if rec is None or best is None:
            continue
        test = paired_test(records, a, "recommended", best["model"])
        diff, _, word = compare(rec, best, None if test is None else test["p"])
        paired = "" if test is None else f", McNemar p = {test['p']:.2g}"
        verdicts.append(f"{a:g}: {word} ({100 * diff:+.1f} vs {COLUMNS[best['model']]}{paired})")
    if verdicts:
        lines += ["", "Recommended model against the best baseline (chosen on validation), per alpha: "
                  + "; ".join(verdicts) + "."]
    against_t = []
    for a in alphas:
        t_row = by.get((a, YARDSTICK))
        for m in ("recommended", "covariance_invariants"):
            if t_row is None or (a, m) not in by:
                continue
            test = paired_test(records, a, m, YARDSTICK)
            diff, _, word = compare(by[(a, m)], t_row, None if test is None else test["p"])
            paired = "" if test is None else f", McNemar p = {test['p']:.2g}"
            against_t.append(f"{a:g} {COLUMNS[m]}: {word} ({100 * diff:+.1f}{paired})")
    if against_t:
        lines += ["", "Against the optimal cubic statistic T: " + "; ".join(against_t) + "."]
    firsts = [f"{COLUMNS[m]} {first_alpha_95(by, alphas, m)}" for m in
              ("recommended", "covariance_invariants", YARDSTICK, *BASELINE_MODELS) if any((a, m) in by for a in alphas)]
    lines += ["", "First alpha whose validation accuracy is >= 95%: " + "; ".join(firsts) + "."]
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
