"""Sweeps: many runs of one base recipe with different overrides, and their comparison.

* :mod:`modulm.sweep.spec` reads a sweep file (TOML, data only) into points with stable run ids
  and validates every point before anything runs.
* :mod:`modulm.sweep.runner` runs the points as ``modulm run`` child processes, one or N at a time,
  skipping finished points and resuming interrupted ones; it keeps ``sweep.json`` in the sweep directory.
* :mod:`modulm.sweep.search` runs an Optuna study over the same runner (the ``optuna`` extra).
* :mod:`modulm.sweep.results` reads run directories into one comparison table (markdown, CSV, JSON)
  and draws their validation curves on one figure.
"""

from modulm.sweep.spec import Point, SweepSpec, load_sweep

__all__ = ["Point", "SweepSpec", "load_sweep"]
