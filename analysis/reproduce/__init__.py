"""Reproduce a published batch-size finding end to end: train, plot, report.

    python -m analysis.reproduce <finding> --scale offline|paper
        [--out DIR] [--seeds N] [--budget-scale S] [--batch-sizes B ...] [--override KEY=VALUE ...]
        [--launcher basic|local|slurm_cpu|slurm_gpu] [--dry-run] [--analyze-only] [--publish DIR]

The findings are the modules of ``analysis.findings`` (``analysis.findings.names()``; the CLI's
choices). ``--scale offline`` runs a scaled-down version here, in this process: the finding's
offline presets in ``conf/experiment/`` (its arms), one ``bench.core.loop.run`` job per swept batch
size (and LR-scaling rule) of each, the learning rates and seeds of a job trained at once as
vmapped replicas. Grids, seeds, budgets and evaluation cadences are the presets'
(``analysis.reproduce.plan``); ``--budget-scale`` multiplies budgets and cadences for smoke runs
(not the reproduction). Into ``--out`` (default ``results/<finding>``):

* ``records/<job>/record_r<k>.json`` (+ ``params_r<k>.npz`` where the preset saves them);
* what the finding computes from the trained records (``Finding.after_training``: e.g. keskar's
  SB -> LB interpolation curves ``interpolation*.csv``);
* ``figures/<name>.png`` (the finding's figures; PNG only);
* ``summary.csv`` (one row per run: batch size, LR, seed, status, final metrics, curvature);
* ``report.md``: how it was produced (command, plan, wall time) followed by
  ``analysis.report.build_report`` (published numbers, ours, verdicts as computed);
* ``reproduce.json``: the plan and the measured wall time of every job.

``--analyze-only`` writes figures, summary and report again from the records in ``--out``
(nothing trained). ``--publish DIR`` copies the small artifacts (report, figures, CSVs; never
records or parameters) to DIR, e.g. ``docs/results/keskar``. ``--scale paper`` launches each
paper preset's own sweep through Hydra (``python -m bench.train -m +experiment=<preset>
hydra/launcher=<launcher> hydra.sweep.dir=...``), then writes figures and a report per preset
(or one over every arm); it needs the TFDS data and (for ``slurm_*``) a cluster: ``--dry-run``
only prints the commands.

This package trains models through ``bench`` (``bench`` never imports ``analysis``).
"""

from analysis.reproduce.plan import JobSpec, Plan, offline_plan, paper_commands

__all__ = ["JobSpec", "Plan", "offline_plan", "paper_commands"]
