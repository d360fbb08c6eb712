"""analysis.wandb_report: a results directory's figures and tables as one W&B report run in the
group of its training runs, read back from the offline files."""

from __future__ import annotations

import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from analysis import wandb_report  # noqa: E402
from wandb_offline import read_runs  # noqa: E402

REPORT = """# Keskar

| claim | verdict | seeds |
|---|---|---|
| large batches reach sharper minima | **reproduced** | 0, 1 |
| large batches generalize worse | **not reproduced** | 0, 1 |

## Ours beside published

| B | ours | published |
|---|---|---|
| 32 | 0.91 | 0.99 |
"""


def _results(tmp_path):
    out = tmp_path / "results"
    (out / "figures").mkdir(parents=True)
    fig, ax = plt.subplots(figsize=(2, 2))
    ax.plot([0, 1], [1, 0])
    fig.savefig(out / "figures" / "sharpness_vs_batch.png")
    plt.close(fig)
    pd.DataFrame({"batch_size": [32, 512], "final_test_accuracy": [0.91, 0.88]}).to_csv(
        out / "summary.csv", index=False)
    (out / "report.md").write_text(REPORT)
    (out / "reproduce.json").write_text(json.dumps({"finding": "keskar"}))
    job = out / "records" / "B32" / "wandb"
    job.mkdir(parents=True)
    (job / "batch_bench.json").write_text(json.dumps(
        {"config_hash": "h", "ids": ["h-t-r0"], "project": "bb-test", "entity": None,
         "mode": "offline", "group": "keskar", "job_type": "keskar_offline",
         "tags": ["finding:keskar"]}))
    return out


def _table(run_dir, entry):
    return json.loads((run_dir / "files" / entry["path"]).read_text())


def test_markdown_tables_and_verdicts(tmp_path):
    tables = wandb_report.markdown_tables(REPORT)
    assert [list(t.columns) for t in tables] == [["claim", "verdict", "seeds"], ["B", "ours", "published"]]
    (tmp_path / "report.md").write_text(REPORT)
    verdicts = wandb_report.verdict_tables(tmp_path / "report.md")
    assert verdicts["verdict"].tolist() == ["reproduced", "not reproduced"]


def test_report_run_holds_figures_and_tables_in_the_training_group(tmp_path):
    results = _results(tmp_path)
    assert wandb_report.main([str(results)]) == 0
    (run,) = read_runs(results / "wandb")
    assert (run["group"], run["job_type"], run["project"]) == ("keskar", "report", "bb-test")
    assert run["tags"] == ["finding:keskar"] and run["exit"] == 0
    (row,) = run["history"]
    assert row["figures/sharpness_vs_batch._type"] == "image-file"
    run_dir = next((results / "wandb").glob("offline-run-*"))
    summary = _table(run_dir, {k.split(".")[1]: v for k, v in row.items()
                               if k.startswith("summary.")})
    assert summary["columns"] == ["batch_size", "final_test_accuracy"]
    assert summary["data"] == [[32, 0.91], [512, 0.88]]
    verdicts = _table(run_dir, {k.split(".")[1]: v for k, v in row.items()
                                if k.startswith("verdicts.")})
    assert [r[1] for r in verdicts["data"]] == ["reproduced", "not reproduced"]
    assert (run_dir / "files" / "report.md").read_text() == REPORT
    # logging it again resumes the same report run
    wandb_report.log_report(results)
    assert {r["id"] for r in read_runs(results / "wandb")} == {run["id"]}


def test_no_report_run_without_training_runs_on_wandb(tmp_path):
    results = _results(tmp_path)
    assert wandb_report.maybe_log_report(results) is not None
    for ids in results.rglob("batch_bench.json"):
        ids.unlink()
    empty = tmp_path / "empty"
    empty.mkdir()
    assert wandb_report.maybe_log_report(empty) is None and not (empty / "wandb").exists()
