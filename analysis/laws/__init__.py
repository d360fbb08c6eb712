"""Hyperparameter scaling laws: per-(N, D) optima of the loss landscape, power laws in N and D,
an audit of the published laws on our grid, and the published data (Porian et al. 2024, Zhang
et al. 2024) as baselines.

``landscape``: quadratic fit of the final loss in (log B, log LR) per (N, D) cell, its optimum,
bootstrap over seeds and grid points. ``power``: power laws B_opt(D), LR_opt(N, D), B_crit(D)
with bootstrap intervals. ``audit``: each published law's exponents beside ours and the loss gap
of its prediction after refitting only its constant. ``published_data``: the converted CSVs
(their SHA-256 checked against the committed provenance). ``figures``: matplotlib figures.
``python -m analysis.laws <results dir>`` runs all of it on a results directory.
"""
