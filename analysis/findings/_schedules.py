"""What the batch-schedule findings (batch_warmup, seesaw) share: the figure of each arm's
loss vs steps and vs tokens beside its batch size vs tokens. Not a finding (the registry skips
modules whose name starts with ``_``)."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd
from matplotlib.figure import Figure

from analysis.plotting import new_figure


def schedule_figure(curves: Sequence[tuple[str, pd.DataFrame]], title: str, *,
                    seed_band: bool = False) -> Figure:
    """``curves``: (legend label, ``analysis.aggregate.arm_curve`` frame) per arm, in colour
    order. Panels: test loss vs steps, vs tokens (``seed_band``: shade the seeds' min-max), and
    the batch size vs tokens."""
    fig, axes = new_figure(ncols=3, width=4.2, height=3.6)
    for i, (label, g) in enumerate(curves):
        if g.empty:
            continue
        for ax, x in ((axes[0], "step"), (axes[1], "tokens")):
            ax.plot(g[x], g["loss"], "-", color=f"C{i}", label=label if x == "step" else None)
            if seed_band:
                ax.fill_between(g[x], g["lo"], g["hi"], color=f"C{i}", alpha=0.2, lw=0)
        axes[2].step(g["tokens"], g["b"], where="pre", color=f"C{i}")
    axes[0].set_xlabel("steps")
    axes[1].set_xlabel("tokens")
    axes[2].set_xlabel("tokens")
    for a in axes[:2]:
        a.set_ylabel("test loss (nats / token)" + ("; band: seed range" if seed_band else ""))
        a.set_ylim(top=min(a.get_ylim()[1], 3.5))
    axes[2].set_ylabel("batch size (sequences)")
    axes[2].set_yscale("log", base=2)
    axes[0].legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    return fig
