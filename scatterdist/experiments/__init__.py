"""End-to-end experiments built on the package (simulate -> scatter -> train -> report).

- :mod:`~scatterdist.experiments.cmb`: the paper's CMB result (Gaussian vs non-Gaussian skies;
  scattering + HybridCNN against a low-resolution CNN and a power-spectrum classifier).
"""

from scatterdist.experiments.cmb import FULL, QUICK, CMBConfig, run_cmb

__all__ = ["CMBConfig", "FULL", "QUICK", "run_cmb"]
