"""Run records -> pandas tables. Analysis reads records only (or their W&B mirror).

Tables
------
``load_records(root)``: one row per run record (``bench.record.find_records``):

* identity: ``run_id, job_id`` (run_id without the ``-r<i>`` replica suffix), ``name``
  (the config's free-form experiment label), ``status, dataset, model, optimizer, scaling,
  schedule, batch_size, accumulate, seed, replica_index, base_lr, peak_lr, num_train,
  num_test, num_params, steps_per_epoch, total_steps, diverged_at_step, error, path``
* ``final_<key>`` for every scalar of the record's ``final`` eval row (``final_test_accuracy``,
  ``final_gap_accuracy``, ``final_hessian_top_eigenvalue``, ...)
* the ``convergence`` fields (``target_test_accuracy, steps_to_target, ...``) and the
  ``timings`` fields (``compile_seconds, train_seconds, ...``) under their own names
* ``curvature_<key>`` for every scalar of the record's ``curvature`` (nested keys joined by ``_``)
* ``adam_b1, adam_b2, adam_eps`` (the values used at the run's batch size, when the record has
  them), ``tokens_per_example`` and ``batch_schedule`` (language data, batch-size schedules)

``load_history(root)``: one row per eval row, the keys as written, plus the run's identity
columns. The row's own ``batch_size`` (it can change under a batch-size schedule) is renamed
``current_batch_size``; ``batch_size`` is the run's configured batch size.

``load_profile(root)``: every ``profile.csv`` under root (columns ``batch_size,
peak_memory_bytes, step_seconds, examples_per_second``; extra columns such as ``model`` or
``device`` are kept), concatenated, with a ``path`` column.

W&B mirror (``load_wandb``, ``load_wandb_history``): the same tables rebuilt from W&B runs
(see ``records_from_wandb_run`` for the two layouts understood). The W&B history holds the
record's eval-row keys; the summary holds the final metrics, ``status`` (needed for
"diverged"; without it the W&B state is mapped: finished -> finished, running/pending ->
running, anything else -> failed), the convergence fields, and optionally
``diverged_at_step``, ``error`` and the dicts ``timings``, ``curvature`` (nested, or
flattened as ``"timings/compile_seconds"``). Columns whose source W&B does not hold
(e.g. timings, ``num_train``) are absent or NaN there.

Accuracies are fractions in [0, 1] as the records store them. Non-finite floats that the
record writer stored as ``"inf"`` / ``"-inf"`` / ``null`` come back as floats / NaN.
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pandas as pd

from bench.record import empty_record, find_records, read_record

IDENTITY_COLUMNS = (
    "run_id", "job_id", "name", "status", "dataset", "model", "optimizer", "scaling", "schedule",
    "batch_size", "accumulate", "seed", "replica_index", "base_lr", "peak_lr", "num_train",
    "num_test", "num_params", "steps_per_epoch", "total_steps", "diverged_at_step", "error", "path",
)
HISTORY_RUN_COLUMNS = (
    "run_id", "job_id", "name", "status", "dataset", "model", "optimizer", "scaling", "schedule",
    "batch_size", "seed", "base_lr", "peak_lr", "num_train", "path",
)
PROFILE_COLUMNS = ("batch_size", "peak_memory_bytes", "step_seconds", "examples_per_second")
PROFILE_FILENAME = "profile.csv"
_NONFINITE = {"inf": math.inf, "-inf": -math.inf, "nan": math.nan, "Infinity": math.inf,
              "-Infinity": -math.inf, "NaN": math.nan}
_WANDB_STATE = {"finished": "finished", "running": "running", "pending": "running"}
_SUMMARY_BLOCKS = ("convergence", "timings", "curvature")
_SUMMARY_RESERVED = ("status", "diverged_at_step", "error")


def _value(v: Any) -> Any:
    """Record value -> table value: non-finite markers to floats, None to NaN."""
    if v is None:
        return math.nan
    if isinstance(v, str) and v in _NONFINITE:
        return _NONFINITE[v]
    return v


def _name(v: Any) -> Any:
    """A config choice as a plain name (a dict choice is named by its ``name``/``rule``)."""
    if isinstance(v, dict):
        return v.get("name", v.get("rule", str(sorted(v.items()))))
    return v


def _flatten(d: dict[str, Any] | None, prefix: str = "") -> dict[str, Any]:
    """Scalars of a (nested) dict, keys joined by ``_``; lists are dropped."""
    out: dict[str, Any] = {}
    for k, v in (d or {}).items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, f"{key}_"))
        elif not isinstance(v, (list, tuple)):
            out[key] = _value(v)
    return out


def _job_id(run_id: str | None) -> str | None:
    if not run_id:
        return run_id
    head, sep, tail = str(run_id).rpartition("-r")
    return head if sep and tail.isdigit() else run_id


def _identity(record: dict[str, Any], path: str) -> dict[str, Any]:
    exp, rep = record.get("experiment") or {}, record.get("replica") or {}
    config = record.get("config") or {}
    seed = rep.get("seed", config.get("seed"))
    return {
        "run_id": record.get("run_id"), "job_id": _job_id(record.get("run_id")),
        "name": config.get("name"), "status": record.get("status"),
        **{k: _name(exp.get(k)) for k in ("dataset", "model", "optimizer", "scaling", "schedule")},
        "batch_size": exp.get("batch_size"), "accumulate": exp.get("accumulate", config.get("accumulate")),
        "seed": seed, "replica_index": rep.get("index"),
        "base_lr": _value(rep.get("base_lr")), "peak_lr": _value(rep.get("peak_lr")),
        **{k: exp.get(k) for k in ("num_train", "num_test", "num_params", "steps_per_epoch",
                                   "total_steps")},
        "diverged_at_step": _value(record.get("diverged_at_step")),
        "error": record.get("error"), "path": path,
    }


def run_row(record: dict[str, Any], path: str) -> dict[str, Any]:
    """One flattened run-table row for a record."""
    row = _identity(record, path)
    row.update(_flatten(record.get("final"), "final_"))
    row.update(_flatten(record.get("convergence")))
    row.update(_flatten(record.get("timings")))
    row.update(_flatten(record.get("curvature"), "curvature_"))
    hyper = (record.get("replica") or {}).get("hyperparams") or {}
    row.update({f"adam_{k}": _value(v) for k, v in hyper.items()})
    exp = record.get("experiment") or {}
    row.update({k: exp[k] for k in ("tokens_per_example", "batch_schedule") if k in exp})
    return row


def history_rows(record: dict[str, Any], path: str) -> Iterator[dict[str, Any]]:
    """Flattened eval rows of a record, each with the run's identity columns."""
    ident = _identity(record, path)
    run = {k: ident[k] for k in HISTORY_RUN_COLUMNS}
    for h in record.get("history") or []:
        row = dict(run)
        for k, v in _flatten(h).items():
            row["current_batch_size" if k == "batch_size" else k] = v
        yield row


def _frame(rows: list[dict[str, Any]], first: Iterable[str]) -> pd.DataFrame:
    """DataFrame with the identity columns first (always present), the rest sorted."""
    first = list(first)
    rest = sorted({k for r in rows for k in r} - set(first))
    df = pd.DataFrame(rows, columns=first + rest)
    for col in rest:  # metrics stay numeric even when a record held None / "inf"
        if df[col].map(lambda v: v is None or isinstance(v, (int, float))).all():
            df[col] = pd.to_numeric(df[col], errors="coerce")
    acc = [c for c in df.columns if c.endswith("accuracy") and pd.api.types.is_numeric_dtype(df[c])]
    if acc and (df[acc].max(numeric_only=True) > 1.0 + 1e-9).any():
        warnings.warn("accuracy values above 1 found: analysis assumes fractions in [0, 1]",
                      stacklevel=3)
    return df


def runs_table(records: Iterable[tuple[dict[str, Any], str]]) -> pd.DataFrame:
    """Run table from (record, path) pairs."""
    rows = [run_row(r, p) for r, p in records]
    df = _frame(rows, IDENTITY_COLUMNS)
    return df.sort_values(["batch_size", "peak_lr", "seed", "run_id"], na_position="last",
                          kind="stable", ignore_index=True) if len(df) else df


def history_table(records: Iterable[tuple[dict[str, Any], str]]) -> pd.DataFrame:
    """History table from (record, path) pairs."""
    rows = [row for r, p in records for row in history_rows(r, p)]
    df = _frame(rows, HISTORY_RUN_COLUMNS)
    return df.sort_values(["batch_size", "peak_lr", "seed", "run_id", "step"],
                          na_position="last", kind="stable", ignore_index=True) if len(df) else df


def _read_all(root: Path | str) -> list[tuple[dict[str, Any], str]]:
    return [(read_record(p), str(p)) for p in find_records(root)]


def load_tables(root: Path | str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(load_records(root), load_history(root))`` reading each record once."""
    records = _read_all(root)
    return runs_table(records), history_table(records)


def load_records(root: Path | str) -> pd.DataFrame:
    """One row per run record under ``root`` (see module doc for the columns)."""
    return runs_table(_read_all(root))


def load_history(root: Path | str) -> pd.DataFrame:
    """One row per eval row of every run record under ``root``."""
    return history_table(_read_all(root))


def load_profile(root: Path | str) -> pd.DataFrame:
    """All ``profile.csv`` tables under ``root`` (a file path is read directly)."""
    root = Path(root)
    paths = [root] if root.is_file() else sorted(root.rglob(PROFILE_FILENAME))
    frames = []
    for p in paths:
        df = pd.read_csv(p)
        missing = [c for c in PROFILE_COLUMNS if c not in df.columns]
        if missing:
            raise ValueError(f"{p}: profile table is missing columns {missing}")
        frames.append(df.assign(path=str(p)))
    if not frames:
        return pd.DataFrame(columns=[*PROFILE_COLUMNS, "path"])
    return pd.concat(frames, ignore_index=True)


# ----------------------------------------------------------------------------- W&B mirror
CONVERGENCE_KEYS = (
    "target_test_accuracy", "steps_to_target", "examples_to_target", "seconds_to_target",
    "target_train_loss", "steps_to_train_loss", "examples_to_train_loss", "seconds_to_train_loss",
)
_REPLICA_PREFIX = re.compile(r"^r\d+/")


def _plain(obj: Any) -> Any:
    """W&B summary/config objects (dict-like, nested) -> plain dicts and lists."""
    if isinstance(obj, dict) or (hasattr(obj, "keys") and hasattr(obj, "__getitem__")):
        return {str(k): _plain(obj[k]) for k in obj.keys()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


def _summary_block(summary: dict[str, Any], name: str) -> dict[str, Any] | None:
    """Pop ``name`` from the summary: a nested dict, or ``name/<key>`` flattened keys."""
    block = summary.pop(name, None)
    block = dict(block) if isinstance(block, dict) else {}
    for key in [k for k in summary if k.startswith(f"{name}/")]:
        block[key.split("/", 1)[1]] = summary.pop(key)
    return block or None


def _for_replica(d: dict[str, Any], prefix: str) -> dict[str, Any]:
    """The keys of one replica: ``r<k>/``-prefixed ones stripped, or the unprefixed ones."""
    if prefix:
        return {k[len(prefix):]: v for k, v in d.items() if k.startswith(prefix)}
    return {k: v for k, v in d.items() if not _REPLICA_PREFIX.match(k)}


def _experiment_from_config(config: dict[str, Any]) -> dict[str, Any]:
    """Experiment fields recoverable from the resolved config (bench.config layout)."""
    out: dict[str, Any] = {}
    for key in ("dataset", "model", "optimizer", "scaling", "schedule"):
        v = config.get(key)  # every group names its option by `name` (v1 records: scaling.rule)
        out[key] = v.get("name", v.get("rule")) if isinstance(v, dict) else v
    out["batch_size"] = config.get("batch_size")
    return out


def _wandb_record(config: dict[str, Any], run_id: str, replica: dict[str, Any],
                  experiment: dict[str, Any], history: list[dict[str, Any]],
                  summary: dict[str, Any], state: str) -> dict[str, Any]:
    summary = dict(summary)
    record = empty_record()
    record.update(
        run_id=run_id, config=config, replica=replica or {}, experiment=experiment or {},
        history=[row for row in history if row.get("step") is not None],
        status=summary.pop("status", None) or _WANDB_STATE.get(str(state).lower(), "failed"),
        diverged_at_step=summary.pop("diverged_at_step", None), error=summary.pop("error", None),
        timings=_summary_block(summary, "timings") or {},
        curvature=_summary_block(summary, "curvature"),
    )
    convergence = _summary_block(summary, "convergence") or {}
    convergence.update({k: summary.pop(k) for k in CONVERGENCE_KEYS if k in summary})
    record["convergence"] = convergence
    scalars = {k: v for k, v in summary.items() if not isinstance(v, (dict, list))}
    final = ({k.removeprefix("final_"): v for k, v in scalars.items() if k.startswith("final_")}
             if any(k.startswith("final_") for k in scalars) else scalars)
    record["final"] = final or (record["history"][-1] if record["history"] else None)
    return record


def records_from_wandb_run(run: Any) -> list[dict[str, Any]]:
    """Rebuild the run record(s) of one ``wandb.apis.public.Run``.

    Two layouts are understood:

    * one W&B run per record: ``config["record"] = {run_id, replica, experiment}``,
      unprefixed history keys, final metrics in the summary (under their own names or as
      ``final_<key>``);
    * one W&B run per job (``bench.core.tracking``): ``config["record"] = {run_id: <config hash>,
      replicas: [{index, count, seed, base_lr, peak_lr}, ...]}``, history and summary keys
      prefixed ``r<k>/`` when there are several replicas, summary ``status``,
      ``final_<key>`` and the convergence fields; each replica becomes the record
      ``<config hash>-r<k>`` and the experiment fields come from the config.
    """
    config = _plain(run.config)
    meta = config.pop("record", None) or {}
    summary = getattr(run, "summary_metrics", None)
    summary = dict(summary) if isinstance(summary, dict) else _plain(run.summary)
    summary = {k: v for k, v in summary.items() if not str(k).startswith("_")}
    rows = [{k: v for k, v in dict(row).items() if not str(k).startswith("_")}
            for row in run.scan_history()]
    if "replicas" in meta:
        reps = meta["replicas"] or []
        prefixes = [f"r{r['index']}/" for r in reps] if len(reps) > 1 else [""] * len(reps)
        experiment = _experiment_from_config(config)
        return [_wandb_record(config, f"{meta.get('run_id') or run.id}-r{rep['index']}", rep,
                              experiment, [_for_replica(r, p) for r in rows],
                              _for_replica(summary, p), run.state)
                for rep, p in zip(reps, prefixes)]
    return [_wandb_record(config, meta.get("run_id") or run.id, meta.get("replica") or {},
                          meta.get("experiment") or _experiment_from_config(config), rows,
                          summary, run.state)]


def _wandb_records(entity_project: str, api: Any = None,
                   filters: dict[str, Any] | None = None) -> list[tuple[dict[str, Any], str]]:
    if api is None:
        import wandb

        api = wandb.Api()
    runs = api.runs(entity_project, filters=filters) if filters else api.runs(entity_project)
    return [(record, f"wandb:{entity_project}/{run.id}")
            for run in runs for record in records_from_wandb_run(run)]


def load_wandb(entity_project: str, *, api: Any = None,
               filters: dict[str, Any] | None = None) -> pd.DataFrame:
    """The run table (same layout as ``load_records``) from W&B runs of ``entity/project``;
    ``path`` is ``wandb:<entity/project>/<run id>``."""
    return runs_table(_wandb_records(entity_project, api, filters))


def load_wandb_history(entity_project: str, *, api: Any = None,
                       filters: dict[str, Any] | None = None) -> pd.DataFrame:
    """The history table (same layout as ``load_history``) from W&B runs."""
    return history_table(_wandb_records(entity_project, api, filters))
