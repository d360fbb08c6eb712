"""The findings' contract: every registered finding declares its arms once, over presets that
exist and roles its verdicts take; its comparison rows name published.yaml entries that exist;
and the README's "Adding a finding" example runs end to end on constructed records."""

from __future__ import annotations

import re
import sys
import types

import pytest

from analysis.baselines import baselines_table
from analysis.findings import Finding, get, names, registry
from analysis.report import accepted_options, published_confidence
from conftest import REPO
from analysis.load import load_tables
from finding_golden import GOLDEN, OPTIONS, records_dir
from finding_records import RECORDS
from record_factory import eval_rows, make_record, write_records

EXPERIMENTS = REPO / "conf" / "experiment"


@pytest.mark.parametrize("name", names())
def test_arms_are_declared_once_over_existing_presets(name):
    finding = get(name)
    assert finding.name == name and finding.title and finding.sources
    for arms in (finding.offline, finding.paper):
        presets = [a.preset for a in arms]
        assert arms and len(set(presets)) == len(presets)
        for arm in arms:
            text = (EXPERIMENTS / f"{arm.preset}.yaml").read_text()
            assert re.search(rf"^name: {arm.preset}$", text, re.M)       # records carry the preset's name
            assert not re.search(r"^\s+role:", text, re.M)              # the role is the module's
            assert not arm.role or arm.role in accepted_options(finding)
    assert set(finding.list_roles) <= {a.role for a in (*finding.offline, *finding.paper)}


@pytest.mark.parametrize("name", sorted(RECORDS))
def test_comparison_rows_name_published_entries_that_exist(name):
    """Every row of "ours beside published" resolves to published.yaml entries (else it would be
    shown as provisional for want of an entry: a typo, or an id the baselines renamed)."""
    bl = baselines_table()
    runs, history = load_tables(records_dir(name))
    finding = get(name)
    rows = finding.comparison(finding.verdicts(runs, history, **OPTIONS[name]), bl)
    assert rows
    for row in rows:
        assert row.entries and "no published.yaml entry" not in published_confidence(row.entries, bl), row


def test_provisional_marks_follow_the_published_confidence():
    bl = baselines_table()
    high = bl.loc[bl["confidence"] == "high", "id"].iloc[0]
    medium = bl.loc[bl["confidence"] == "medium", "id"].iloc[0]
    assert published_confidence((high,), bl) == "high"
    assert published_confidence((high, medium), bl) == "**provisional** (medium)"
    assert published_confidence(("nowhere/",), bl).startswith("**provisional**")


def _readme_example() -> str:
    text = (REPO / "README.md").read_text()
    section = text.split("### Adding a finding", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_readme_finding_example_runs_end_to_end(tmp_path, monkeypatch):
    """The example module, registered, on records whose large batch matches the small one:
    figures, summary and report as --analyze-only writes them; the verdict is known."""
    from analysis.reproduce.run import analyze

    module = types.ModuleType("analysis.findings.hoffer")
    exec(compile(_readme_example(), "README.md:hoffer", "exec"), module.__dict__)
    monkeypatch.setitem(sys.modules, module.__name__, module)
    finding = module.FINDING
    assert isinstance(finding, Finding) and finding.name not in names()
    monkeypatch.setitem(registry(), finding.name, finding)
    recs = []
    for i, (b, seed, acc) in enumerate([(128, 0, .90), (128, 1, .91), (4096, 0, .905), (4096, 1, .895)]):
        rows = eval_rows([0, 100], batch_size=b, lr=0.1, test_final=acc, train_final=0.99, tau=1e-3)
        rows[-1]["test_accuracy"] = acc
        recs.append(make_record(batch_size=b, history=rows, seed=seed, replica_index=i))
    write_records(tmp_path / "records", recs)
    out = tmp_path / "out"
    figs = analyze(finding, tmp_path / "records", out, options=finding.options([]))
    report = (out / "report.md").read_text()
    assert report.startswith("# Hoffer et al. 2017")
    assert "**Verdict: reproduced**" in report                  # 0.5 pp gap < 1 x the 0.7 pp seed std
    assert "| test accuracy SB − LB (pp) | 0.50 |" in report and "| high |" in report
    assert "![accuracy_gap_vs_batch](figures/accuracy_gap_vs_batch.png)" in report
    assert not isinstance(figs["accuracy_gap_vs_batch"], str)
    assert len((out / "summary.csv").read_text().strip().splitlines()) == 1 + 4


def test_the_golden_capture_is_of_registered_findings():
    """The capture (taken before the findings became modules) names findings that still exist;
    a finding added later brings its own test instead."""
    assert set(OPTIONS) <= set(names()) and set(RECORDS) == set(OPTIONS)
    assert all((GOLDEN / f"{n}.json").is_file() for n in OPTIONS)
