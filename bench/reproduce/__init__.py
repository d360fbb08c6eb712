"""Reproduce a published batch-size finding end to end: train, interpolate, plot, report.

    python -m bench.reproduce keskar|goyal|shallue|edge_of_stability --scale offline|paper
        [--out DIR] [--seeds N] [--budget-scale S] [--batch-sizes B ...] [--override KEY=VALUE ...]
        [--launcher basic|local|slurm_cpu|slurm_gpu] [--dry-run] [--publish DIR]

(``python -m analysis.reproduce`` is the same command.) ``--scale offline`` runs a scaled-down
version here, in this process, on MNIST-1D: the finding's ``*_offline`` preset in
``conf/experiment/``, one ``bench.loop.run`` job per swept batch size (and LR-scaling rule for
goyal), the learning rates and seeds of a job trained at once as vmapped replicas. Grids, seeds,
budgets and evaluation cadences are the preset's (bench.reproduce.plan); ``--budget-scale``
multiplies budgets and cadences for smoke runs (not the reproduction). Into ``--out`` (default
``results/<finding>``):

* ``records/<job>/record_r<k>.json`` (+ ``params_r<k>.npz`` where the preset saves them);
* keskar only: ``interpolation.csv`` (``bench.interpolate.interpolation_curve`` between the SB
  and LB solutions of seed 0, alpha in [-1, 2], BatchNorm statistics interpolated) and
  ``interpolation_bn_recomputed.csv`` (the same with the statistics recomputed per alpha);
* ``figures/<name>.png`` (``analysis.figures.make_figures``; PNG only);
* ``summary.csv`` (one row per run: batch size, LR, seed, status, final metrics, curvature);
* ``report.md``: how it was produced (command, plan, wall time) followed by
  ``analysis.report.build_report`` (published numbers, ours, verdicts as computed);
* ``reproduce.json``: the plan and the measured wall time of every job.

``--publish DIR`` copies the small artifacts (report, figures, CSVs; never records or
parameters) to DIR, e.g. ``docs/results/keskar``. ``--scale paper`` launches each paper preset's
own sweep through Hydra (``python -m bench.train -m +experiment=<preset>
hydra/launcher=<launcher> hydra.sweep.dir=...``), then writes figures and a report per preset;
it needs the TFDS data and (for ``slurm_*``) a cluster: ``--dry-run`` only prints the commands.
"""

from bench.reproduce.plan import FINDINGS, Finding, JobSpec, Plan, offline_plan, paper_commands

__all__ = ["FINDINGS", "Finding", "JobSpec", "Plan", "offline_plan", "paper_commands"]
