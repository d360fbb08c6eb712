"""One-time conversion of Porian et al. 2024's released analysis summaries to CSV.

    python scripts/convert_porian.py <clone of github.com/formll/resolving-scaling-law-discrepancies>

Reads ``data/summary_df*.pickle.xz`` (pandas pickles; unpickled here once, with an unpickler that
refuses every class outside pandas and numpy, never at run time) and writes, under
shared/published_data/porian2024/: ``optimal.csv`` (per configuration and FLOP budget: the
compute-optimal N*, D* (tokens) and loss with their bootstrap stds) and ``isoflop.csv`` (the IsoFLOP
points: N, tokens, loss per budget), plus the MIT LICENSE. The per-run tuned LR / batch size are
in ``data/experiment_results.pickle.xz``, which the snapshot used here lacks (over 4 MiB); they are
not converted. Provenance in analysis/data/porian2024/SOURCE.yaml.
"""

from __future__ import annotations

import io
import lzma
import pickle
import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _provenance import git_show, write_outputs  # noqa: E402

REPO = "formll/resolving-scaling-law-discrepancies"
FILES = ("data/summary_df.pickle.xz", "data/summary_df_att.pickle.xz",
         "data/summary_df_kaplan_tuned_hparams.pickle.xz", "data/summary_df_owt2.pickle.xz")
CONFIG = ("dataset", "hparams", "warmup", "decay", "param_count", "val")


_BUILTINS = {("builtins", "slice"), ("builtins", "bytearray")}


class _DataOnly(pickle.Unpickler):
    """Unpickles pandas / numpy (and pyarrow-backed string) containers only: any other class is
    refused, so the pickle cannot run code through another module."""

    def find_class(self, module: str, name: str):
        if module.split(".")[0] in ("pandas", "numpy", "pyarrow") or (module, name) in _BUILTINS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refused {module}.{name}")


def _frames(summary: pd.DataFrame, origin: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    opt, iso = [], []
    for _, r in summary.iterrows():
        cfg = {k: r[k] for k in CONFIG} | {"summary": origin}
        p = r["optimal_pairs"]
        for _, q in p.iterrows():
            opt.append(cfg | {"flops": q["flops"], "n_opt": q["n"], "tokens_opt": q["t"], "loss_opt": q["loss"],
                              "n_star_std": q["n_star_std"], "t_star_std": q["t_star_std"],
                              "loss_star_std": q["loss_star_std"]})
        for _, q in r["data"].iterrows():
            if np.ndim(q["orig_n"]) != 1:  # a budget without IsoFLOP points in this summary
                continue
            for n, t, loss in zip(np.asarray(q["orig_n"]), np.asarray(q["orig_t"]), np.asarray(q["orig_loss"])):
                iso.append(cfg | {"flops": q["flops"], "num_params": float(n), "tokens": float(t), "loss": float(loss)})
    return pd.DataFrame(opt), pd.DataFrame(iso)


def convert(clone: Path) -> Path:
    sources, opts, isos = {}, [], []
    for path in FILES:
        raw = git_show(clone, path)
        sources[path] = raw
        summary = _DataOnly(io.BytesIO(lzma.decompress(raw))).load()
        o, i = _frames(summary, Path(path).name.removesuffix(".pickle.xz"))
        opts.append(o)
        isos.append(i)
    files = {}
    for name, frames in (("optimal.csv", opts), ("isoflop.csv", isos)):
        buf = io.StringIO()
        pd.concat(frames, ignore_index=True).to_csv(buf, index=False, float_format="%.6g")
        files[name] = buf.getvalue()
    lic = git_show(clone, "LICENSE").decode()
    return write_outputs("porian2024", REPO, clone, sources, files, lic,
                         "tokens = the paper's t (training tokens); flops per the configuration's param_count "
                         "convention; no per-run LR / batch size (experiment_results.pickle.xz not in the snapshot).")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: python scripts/convert_porian.py <clone of formll/resolving-scaling-law-discrepancies>")
    print(convert(Path(sys.argv[1])))
