"""Results of the CMB experiment: summary statistics, ``cmb.md`` and the accuracy-vs-alpha figure.

Everything here is generated from the list of per-run records that
:func:`scatterdist.experiments.cmb.run_cmb` produces (also saved as ``cmb.json``); nothing is
edited by hand.
"""

from __future__ import annotations

import math
import os
import platform
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["MODELS", "PAPER", "compare", "first_alpha_95", "machine_info", "mcnemar", "paired_test", "summarise",
           "write_markdown", "plot_accuracy"]

#: model key -> (table heading, plot label)
MODELS: dict[str, tuple[str, str]] = {
    "recommended": ("recommended (val-selected)", "recommended scattering model (chosen on validation)"),
    "scattering": ("scattering + HybridCNN", "scattering + hybrid CNN (paper)"),
    "scattering_signed": ("signed scattering + HybridCNN", "signed scattering + hybrid CNN"),
    "signed_invariants": ("signed-path invariants (logistic)", "means of the signed paths, logistic"),
    "scattering_invariants": ("all invariants, signed transform (logistic)", "means of all signed-transform paths, logistic"),
    "modulus_invariants": ("modulus invariants (logistic)", "means of the paper's (modulus) paths, logistic"),
    "covariance_invariants": ("scattering covariances (logistic)", "scattering covariance invariants, logistic"),
    "covariance_cnn": ("covariances + HybridCNN", "scattering covariance maps + hybrid CNN"),
    "lowpass": ("low-res HybridCNN", "low-resolution CNN (raw map at nside_out)"),
    "power_spectrum": ("power spectrum (logistic)", "power-spectrum classifier"),
    "pixel_moments": ("pixel moments (logistic)", "pixel skewness + kurtosis"),
    "wavelet_moments": ("wavelet moments (logistic)", "wavelet skewness + kurtosis per scale"),
    "cubic": ("optimal cubic T (logistic)", "optimal cubic statistic T (KSW-type)"),
}
#: the moment and spectrum baselines (the recommended model is compared with the one best on validation).
BASELINE_MODELS = ("power_spectrum", "pixel_moments", "wavelet_moments")
#: the optimal statistic of the model: the yardstick every model is also compared with.
YARDSTICK = "cubic"
#: accuracies (%) reported by McEwen, Wallis & Mavor-Parker (ICLR 2022) at L = 1024 (shown for nside 512 runs).
PAPER = {"scattering": 95.3, "lowpass": 53.1}
#: a difference counts when it exceeds this many combined standard errors and the paired test agrees.
SE_RULE = 2.0
#: significance level of the paired (McNemar) test.
P_RULE = 0.05


def machine_info() -> dict[str, Any]:
    """Where the run happened: platform, processor, ``os.cpu_count()``, Python and torch versions."""
    import torch

    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
    }


def summarise(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean accuracy and its standard error per (alpha, model), sorted by alpha.

    ``se`` = the larger of the seed-to-seed error (sample std (ddof=1) / sqrt(n_seeds); 0 with a single
    seed) and the binomial floor ``sqrt(p (1 - p) / n)`` of the pooled test skies (n over all seeds,
    ``p = (k + 1) / (n + 2)``, never 0), so agreeing seeds never give "± 0.0"; a pooled ``--folds`` record
    brings its bootstrap error over skies (``se_bootstrap``), which enters the maximum too. ``n_test`` is the mean
    number of held-out maps per seed; ``val_mean`` the mean validation accuracy (what choices use).
    """
    groups: dict[tuple[float, str], list[dict[str, Any]]] = {}
    for r in records:
        groups.setdefault((float(r["alpha"]), str(r["model"])), []).append(r)
    rows = []
    for (alpha, model), rs in sorted(groups.items(), key=lambda kv: (kv[0][0], list(MODELS).index(kv[0][1]))):
        acc = np.array([r["accuracy"] for r in rs], dtype=np.float64)
        se_seeds = float(acc.std(ddof=1) / math.sqrt(acc.size)) if acc.size > 1 else 0.0
        n = int(sum(r["n_test"] for r in rs))
        k = float(sum(r["accuracy"] * r["n_test"] for r in rs))
        p = (k + 1.0) / (n + 2.0)
        se_binomial = math.sqrt(p * (1.0 - p) / max(n, 1))
        val = np.array([r.get("val_accuracy", float("nan")) for r in rs], dtype=np.float64)
        se_boot = max((float(r["se_bootstrap"]) for r in rs if r.get("se_bootstrap") is not None), default=0.0)
        rows.append({
            "alpha": alpha, "model": model, "mean": float(acc.mean()), "se": max(se_seeds, se_binomial, se_boot),
            "se_bootstrap": se_boot,
            "se_seeds": se_seeds, "se_binomial": se_binomial, "n_seeds": int(acc.size),
            "min": float(acc.min()), "max": float(acc.max()), "n_test": float(np.mean([r["n_test"] for r in rs])),
            "n_test_total": n, "val_mean": float(np.nanmean(val)) if np.isfinite(val).any() else float("nan"),
        })
    return rows


def _pct(mean: float, se: float) -> str:
    if math.isnan(se):
        return f"{100 * mean:.1f}%"
    return f"{100 * mean:.1f} ± {100 * se:.1f}%"


def _fmt_seconds(s: float | None) -> str:
    if s is None:
        return "not recorded (computed before step timings were kept)"
    if isinstance(s, str):
        return s
    return f"{s:.0f} s" if s < 120 else f"{s / 60:.1f} min"


def write_markdown(
    path: str | os.PathLike,
    records: Sequence[dict[str, Any]],
    settings: dict[str, Any],
    timings: dict[str, float],
    command: str,
    figure: str | None,
    fold_records: Sequence[dict[str, Any]] | None = None,
) -> None:
    """Write the results page: table per alpha (mean ± SE over seeds), settings, timings, machine.

    With ``fold_records`` (a ``--folds`` study: ``records`` are the pooled ones), the table is the
    pooled accuracy over every sky and the per-round records are listed instead of the per-seed ones.
    """
    rows = summarise(records)
    folds = settings.get("folds")
    by = {(r["alpha"], r["model"]): r for r in rows}
    alphas = sorted({r["alpha"] for r in rows})
    models = [m for m in MODELS if any(r["model"] == m for r in rows)]
    n_seeds = max((r["n_seeds"] for r in rows), default=0)
    lines = [
        "# CMB experiment: Gaussian vs non-Gaussian skies",
        "",
        "Generated by `scatterdist experiment cmb`; do not edit (rerun the command below).",
        "",
        "```",
        command,
        "```",
        "",
        (f"Accuracy on held-out skies, mean over {n_seeds} seeds ± standard error (the larger of the seed-to-seed "
         f"error and the binomial error of the pooled test skies). Each (alpha, seed) has its own skies, "
         f"train/val/test split and model initialisation. "
         f"nside = {settings['nside']} (L = {2 * settings['nside']}), N = {settings['n_per_class']} skies per class, "
         f"~{rows[0]['n_test']:.0f} test skies per seed." if not folds else
         f"Accuracy on held-out skies, {folds}-fold: one independent set of {settings['n_per_class']} skies per class "
         f"at each alpha (its own simulation seed), dealt into {folds} folds balanced per class; round k trains on "
         f"the other folds but k + 1, validates on fold k + 1 (mod {folds}) and tests on fold k, so every sky is "
         f"tested exactly once ({rows[0]['n_test']:.0f} test predictions per model and alpha). ± is the larger of "
         f"the bootstrap standard error over skies ({records[0].get('bootstrap_resamples', '?')} resamples) and the "
         f"binomial error. Choices made on validation (recommended model, best baseline) are made per round. "
         f"nside = {settings['nside']} (L = {2 * settings['nside']}).") if rows else "No results.",
        "",
        "| alpha | " + " | ".join(MODELS[m][0] for m in models) + " |",
        "|---|" + "---|" * len(models),
    ]
    for a in alphas:
        cells = [_pct(by[(a, m)]["mean"], by[(a, m)]["se"]) if (a, m) in by else "-" for m in models]
        lines.append(f"| {a:g} | " + " | ".join(cells) + " |")
    if settings.get("nside") == 512 and any(m in PAPER for m in models):
        paper = [f"{PAPER[m]}%" if m in PAPER else "-" for m in models]
        lines.append("| paper (L = 1024; its own skies and alpha) | " + " | ".join(paper) + " |")
    lines.append("")
    lines += _findings(by, alphas, records)
    if figure:
        lines += [f"![accuracy vs alpha]({figure})", ""]
    lines += _split_section(settings.get("splits", {}))
    unit = "seed" if not fold_records else "fold"
    lines += [
        f"## Per {unit}",
        "",
        "`val` is the accuracy on the validation split (used to choose the recommended model); "
        "`predicted 0/1` counts the test skies the model assigned to each class (a collapsed model "
        "predicts one class only).",
        "",
        f"| alpha | {unit} | model | test accuracy | val accuracy | test skies | predicted 0/1 | train/eval time |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted(fold_records or records, key=lambda r: (r["alpha"], r.get(unit, r["seed"]), list(MODELS).index(r["model"]))):
        pred = r.get("predicted") or {}
        name = MODELS[r["model"]][0] + (f" = {MODELS[r['choice']][0]}" if r.get("choice") else "")
        val = r.get("val_accuracy")
        lines.append(
            f"| {r['alpha']:g} | {r.get(unit, r['seed'])} | {name} | {100 * r['accuracy']:.1f}% | "
            f"{'-' if val is None or val != val else f'{100 * val:.1f}%'} | {r['n_test']} | "
            f"{pred.get('0', '-')}/{pred.get('1', '-')} | "
            f"{'-' if r.get('choice') else _fmt_seconds(r['seconds'])} |"
        )
    machine = settings.get("machine", {})
    lines += [
        "",
        "## Settings",
        "",
        f"- skies: `SimulationSpec(kind=\"mixed\", nside={settings['nside']}, n={2 * settings['n_per_class']}, "
        f"seed={settings.get('sky_seed_rule', 'SEED')}, alpha=ALPHA)`, generated inside the Dask tasks from their seeds "
        f"(Gaussian LCDM skies vs local quadratic non-Gaussian skies with the same expected C_l)",
        f"- survey conditions: {settings.get('survey') or 'none (clean full skies)'}{_noise_note(settings)}",
        f"- scattering: `{settings['scattering_config']}` ({settings['n_paths']} paths at nside_out "
        f"{settings['nside_out']}); signed option: `{settings.get('signed_config')}` "
        f"({settings.get('n_signed_paths')} paths: adds ((f*Psi_j)|f*Psi_j|)*Phi per scale); "
        f"low-resolution baseline: `{settings['lowpass_config']}`; scattering covariances: "
        f"`{settings.get('covariance_config')}` ({settings.get('n_covariance_paths')} statistics: mean, S1, S2, S3, S4)",
        f"- recommended model: per (alpha, {unit}), the candidate among "
        f"{', '.join(MODELS[m][0] for m in settings.get('candidates', []))} with the best validation accuracy "
        "(ties: the first listed); its test accuracy is reported",
        f"- trainer: HybridCNN, epochs {settings['epochs']}, batch size {settings['batch_size']}, lr "
        f"{settings['lr']}, hidden {settings['hidden']}, layers {settings['layers']}, "
        f"{settings['ranks']} rank(s); split val {settings['val_fraction']}, test {settings['test_fraction']} "
        "(stratified per class, maps ranked by the hash of their id: `scatterdist.train.data.split_of`)",
        f"- power spectrum: log C_l in bins of {settings['bin_width']} multipoles from l = 2 to 2*nside-1; "
        "pixel moments: skewness and excess kurtosis of the map; wavelet moments: skewness and excess kurtosis "
        "of every wavelet scale f*Psi_j (the scattering wavelets, each on its own grid); invariants: "
        "spherical means of the signed paths only (signed-path), of every path of the signed transform (all), "
        "or of the paper's modulus paths only (modulus), read from the signed store; scattering covariances: "
        "spherical means of every statistic of the covariance store; optimal cubic T: one number per sky "
        "(`scatterdist.experiments.cubic`). All: L2 logistic "
        "regression (standardised features, penalty 1) fitted on the train split; per-sky test predictions "
        "in `predictions.csv`",
        f"- Dask: {settings['dask_workers']} worker process(es) x {settings['dask_threads']} thread(s)",
        "",
        "## Wall time",
        "",
        "Each step's time is what computing it cost, summed over the invocations that did the work",
        "(a repeated command reuses finished stores, spectra and runs from the work directory);",
        "`this invocation` is the wall time of the command that wrote this page.",
        "",
    ]
    for name, seconds in timings.items():
        lines.append(f"- {name}: {_fmt_seconds(seconds)}")
    lines += [
        "",
        "## Machine",
        "",
        f"- {machine.get('platform', '?')}, processor {machine.get('processor', '?')}, "
        f"os.cpu_count() = {machine.get('cpu_count', '?')}",
        f"- Python {machine.get('python', '?')}, torch {machine.get('torch', '?')}",
        "",
    ]
    with open(path, "w") as fh:
        fh.write("\n".join(lines))


def _noise_note(settings: dict[str, Any]) -> str:
    """Where the survey's white noise overtakes the beamed CMB (``scripts/cmb_noise_crossing.py``), or ''."""
    survey = settings.get("survey") or {}
    if "noise_uK_arcmin" not in survey and "fwhm_arcmin" not in survey:
        return ""
    from scatterdist.sims.observe import beam_window
    from scatterdist.sims.spectrum import cmb_cl

    lmax = 2 * int(settings["nside"]) - 1
    beam2 = beam_window(survey.get("fwhm_arcmin", 0.0), lmax) ** 2
    n_l = (survey.get("noise_uK_arcmin", 0.0) * math.pi / 10800.0) ** 2
    signal = beam2 * cmb_cl(lmax)
    over = np.flatnonzero((signal < n_l) & (np.arange(lmax + 1) >= 2))
    where = (f"the noise N_l exceeds b_l^2 C_l from l = {over[0]}" if over.size else
             f"the noise stays below b_l^2 C_l up to l = {lmax} (b_l^2 C_l / N_l = {signal[-1] / max(n_l, 1e-300):.3g} there)")
    return (f"; at L = {lmax + 1}: b_l^2 = {beam2[-1]:.3f} at l = {lmax}, {where} "
            "(`python scripts/cmb_noise_crossing.py`)")


def compare(rec: dict[str, Any], best: dict[str, Any], p_value: float | None = None) -> tuple[float, float, str]:
    """Difference of two summary rows' means, its combined standard error and the verdict.

    "above" / "below" when the difference exceeds :data:`SE_RULE` combined SE and, where a paired
    test was possible (``p_value`` not None), its p-value is below :data:`P_RULE`; otherwise
    "not distinguishable".
    """
    diff = rec["mean"] - best["mean"]
    se = math.sqrt(sum(0.0 if r["se"] is None or math.isnan(r["se"]) else r["se"] ** 2 for r in (rec, best)))
    significant = abs(diff) > SE_RULE * se and (p_value is None or p_value < P_RULE)
    return diff, se, ("above" if diff > 0 else "below") if significant else "not distinguishable"


def mcnemar(b: int, c: int) -> float:
    """Exact two-sided McNemar p-value for ``b`` and ``c`` discordant pairs (binomial, p = 1/2)."""
    from scipy.stats import binom

    n = b + c
    if n == 0:
        return 1.0
    return float(min(1.0, 2.0 * binom.cdf(min(b, c), n, 0.5)))


def paired_test(records: Sequence[dict[str, Any]], alpha: float, model_a: str, model_b: str) -> dict[str, Any] | None:
    """McNemar test of two models on the same test skies of every seed at ``alpha`` (pooled).

    Returns ``{"b": a right and b wrong, "c": a wrong and b right, "n": skies, "p": p-value}``, or None when
    either model has no per-sky predictions (the CNNs) or they were not scored on the same skies.
    """
    b = c = n = 0
    seeds = sorted({r["seed"] for r in records if float(r["alpha"]) == alpha})
    for seed in seeds:
        pair = {r["model"]: r for r in records if float(r["alpha"]) == alpha and r["seed"] == seed
                and r["model"] in (model_a, model_b)}
        if len(pair) < 2 or any("test_ids" not in r for r in pair.values()):
            return None
        ra, rb = pair[model_a], pair[model_b]
        if ra["test_ids"] != rb["test_ids"]:
            return None
        ok_a = np.array(ra["test_predicted"]) == np.array(ra["test_labels"])
        ok_b = np.array(rb["test_predicted"]) == np.array(rb["test_labels"])
        b += int(np.sum(ok_a & ~ok_b))
        c += int(np.sum(~ok_a & ok_b))
        n += ok_a.size
    if not seeds:
        return None
    return {"b": b, "c": c, "n": n, "p": mcnemar(b, c)}


def best_on_validation(by: dict, alpha: float, models: Sequence[str]) -> dict[str, Any] | None:
    """Summary row of the model among ``models`` with the best mean validation accuracy at ``alpha``."""
    rows = [by[(alpha, m)] for m in models if (alpha, m) in by]
    if not rows:
        return None
    return max(rows, key=lambda r: (np.nan_to_num(r.get("val_mean", float("nan")), nan=-1.0), -models.index(r["model"])))


def first_alpha_95(by: dict, alphas: Sequence[float], model: str) -> str:
    """Smallest swept alpha whose mean *validation* accuracy is >= 95%, with the test accuracy there."""
    for a in alphas:
        r = by.get((a, model))
        if r is not None and r.get("val_mean", float("nan")) >= 0.95:
            return f"{a:g} (test {_pct(r['mean'], r['se'])})"
    return f"not reached (alpha <= {alphas[-1]:g})" if alphas else "-"


def _verdict_row(records: Sequence[dict[str, Any]], by: dict, a: float, model: str, other: dict[str, Any]) -> str:
    rec = by[(a, model)]
    test = paired_test(records, a, model, other["model"])
    diff, se, verdict = compare(rec, other, None if test is None else test["p"])
    paired = "n/a (no per-sky predictions)" if test is None else f"{test['b']}/{test['c']}, p = {test['p']:.3g}"
    return (f"| {a:g} | {_pct(rec['mean'], rec['se'])} | {MODELS[other['model']][0]}: {_pct(other['mean'], other['se'])} "
            f"| {100 * diff:+.1f} ({SE_RULE:g} SE: {100 * SE_RULE * se:.1f}) | {paired} | {verdict} |")


def _findings(by: dict, alphas: list[float], records: Sequence[dict[str, Any]] = ()) -> list[str]:
    """The recommended model against the best baseline (chosen on validation) and against T, per alpha,
    with McNemar tests on the same skies; where each first reaches 95% on validation."""
    if not any((a, "recommended") in by for a in alphas):
        return []
    head = ["| alpha | recommended | other | difference | McNemar (rec. right only / other right only) | verdict |",
            "|---|---|---|---|---|---|"]
    lines = ["## Recommended model against the best baseline", "",
             f"The best baseline of each alpha is the one with the best mean validation accuracy among "
             f"{', '.join(MODELS[m][0] for m in BASELINE_MODELS)}. A difference counts when it exceeds "
             f"{SE_RULE:g} combined SE and the paired McNemar test (test skies of every seed pooled) gives "
             f"p < {P_RULE:g}.", "", *head]
    for a in alphas:
        best = best_on_validation(by, a, BASELINE_MODELS)
        if (a, "recommended") in by and best is not None:
            lines.append(_verdict_row(records, by, a, "recommended", best))
    models_vs_t = [m for m in ("recommended", "covariance_invariants") if any((a, m) in by for a in alphas)]
    if any((a, YARDSTICK) in by for a in alphas):
        lines += ["", "## Against the optimal cubic statistic T", "",
                  "| alpha | model | T | difference | McNemar (model right only / T right only) | verdict |",
                  "|---|---|---|---|---|---|"]
        for a in alphas:
            for m in models_vs_t:
                if (a, m) in by and (a, YARDSTICK) in by:
                    row = _verdict_row(records, by, a, m, by[(a, YARDSTICK)])
                    lines.append(row.replace(f"| {a:g} | ", f"| {a:g} | {MODELS[m][0]}: ", 1))
    lines += ["", "Smallest swept alpha whose mean validation accuracy is >= 95%: "
              + "; ".join(f"{MODELS[m][0]} {first_alpha_95(by, alphas, m)}"
                          for m in ("recommended", "covariance_invariants", YARDSTICK, *BASELINE_MODELS)
                          if any((a, m) in by for a in alphas)) + ".", ""]
    return lines


def _split_section(splits: dict[str, dict[str, dict[str, int]]]) -> list[str]:
    """Table of the maps of each class in each split, per (alpha, seed)."""
    if not splits:
        return []
    lines = ["## Class counts per split", "",
             "Maps of class 0 (Gaussian) / class 1 (non-Gaussian) in each split (stratified per class).", "",
             "| cell | train | val | test |", "|---|---|---|---|"]
    for cell, counts in splits.items():
        cells = [f"{c.get('0', 0)}/{c.get('1', 0)}" for c in (counts.get(s, {}) for s in ("train", "val", "test"))]
        lines.append(f"| {cell} | " + " | ".join(cells) + " |")
    return lines + [""]


def plot_accuracy(path: str | os.PathLike, records: Sequence[dict[str, Any]], title: str) -> None:
    """Accuracy vs alpha (error bars: SE over seeds) for every model; chance and paper lines."""
    from matplotlib.figure import Figure  # no pyplot: the caller's backend is left alone

    rows = summarise(records)
    fig = Figure(figsize=(7.2, 6.4), layout="constrained")
    ax = fig.subplots()
    markers = {"recommended": "*", "scattering": "o", "scattering_signed": "P", "signed_invariants": "X",
               "scattering_invariants": "h", "modulus_invariants": "x", "covariance_invariants": "p",
               "covariance_cnn": "H", "lowpass": "s", "power_spectrum": "^", "pixel_moments": "v",
               "wavelet_moments": "D", "cubic": "d"}
    for model, (_, label) in MODELS.items():
        rs = [r for r in rows if r["model"] == model]
        if not rs:
            continue
        x = np.array([r["alpha"] for r in rs])
        y = 100 * np.array([r["mean"] for r in rs])
        e = 100 * np.nan_to_num(np.array([r["se"] for r in rs]))
        ax.errorbar(x, y, yerr=e, marker=markers[model], capsize=3, label=label,
                    lw=2.2 if model == "recommended" else 1.2, ms=9 if model == "recommended" else 5)
    ax.axhline(50, color="0.6", ls=":", lw=1, label="chance")
    ax.axhline(PAPER["scattering"], color="0.3", ls="--", lw=0.8, alpha=0.6, label=f"paper, scattering, L = 1024 ({PAPER['scattering']}%)")
    ax.axhline(PAPER["lowpass"], color="0.5", ls="-.", lw=0.8, alpha=0.6, label=f"paper, low-res CNN, L = 1024 ({PAPER['lowpass']}%)")
    alphas = sorted({r["alpha"] for r in rows})
    if alphas and alphas[0] > 0 and alphas[-1] / alphas[0] >= 5:
        ax.set_xscale("log")
    ax.set_xlabel("non-Gaussianity amplitude alpha")
    ax.set_ylabel("test accuracy (%)")
    ax.set_ylim(40, 101)
    ax.set_title(title, fontsize=10)
    fig.legend(fontsize=8, loc="outside lower center", ncol=2)
    fig.savefig(path, dpi=120)
