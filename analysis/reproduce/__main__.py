"""``python -m analysis.reproduce <finding> --scale offline|paper ...`` (see analysis.reproduce)."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import Sequence

from analysis.findings import names
from analysis.reproduce.plan import launchers, offline_plan
from analysis.reproduce.run import _log, publish, reanalyze_offline, reproduce_offline, reproduce_paper


def main(argv: Sequence[str] | None = None, prog: str = "python -m analysis.reproduce") -> int:
    ap = argparse.ArgumentParser(prog=prog, description="Reproduce a published batch-size finding "
                                                        "end to end: train, interpolate, plot, report.")
    ap.add_argument("finding", choices=names())
    ap.add_argument("--scale", choices=("offline", "paper"), required=True)
    ap.add_argument("--out", type=Path, default=None,
                    help="output dir (default results/<finding> offline, results/<finding>-paper paper)")
    ap.add_argument("--seeds", type=int, default=None,
                    help="number of seeds 0..N-1 (default: the preset's replicas.seeds)")
    ap.add_argument("--budget-scale", type=float, default=1.0,
                    help="offline: multiply every budget and cadence (smoke runs; 1 = the reproduction)")
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=None,
                    help="offline: run only these batch sizes of the plan")
    ap.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                    help="extra Hydra override for every job (repeatable)")
    ap.add_argument("--launcher", choices=launchers(), default="slurm_gpu",
                    help="paper: Hydra launcher preset (basic = Hydra's sequential local launcher)")
    ap.add_argument("--dry-run", action="store_true", help="print the jobs / commands, run nothing")
    ap.add_argument("--publish", type=Path, default=None,
                    help="copy report.md, CSVs and PNG figures (no records) to this dir")
    ap.add_argument("--analyze-only", action="store_true",
                    help="offline: figures and report again from the records in --out (nothing trained)")
    args = ap.parse_args(argv)
    if args.scale == "offline":
        if args.dry_run:
            plan = offline_plan(args.finding, seeds=args.seeds, budget_scale=args.budget_scale,
                                batch_sizes=args.batch_sizes)
            for job in plan.jobs:
                print(job.name, shlex.join([f"+experiment={job.preset or plan.preset}", *job.overrides,
                                             *args.override]))
            return 0
        out = args.out or Path("results") / args.finding
        command = f"{prog} " + shlex.join(list(argv) if argv is not None else sys.argv[1:])
        if args.analyze_only:
            reanalyze_offline(args.finding, out, command=command)
            for p in publish(out, args.publish) if args.publish else ():
                _log(f"published {p}")
            return 0
        reproduce_offline(args.finding, out, seeds=args.seeds, budget_scale=args.budget_scale,
                          batch_sizes=args.batch_sizes, overrides=args.override, command=command)
        if args.publish:
            for p in publish(out, args.publish):
                _log(f"published {p}")
        return 0
    if args.budget_scale != 1.0 or args.batch_sizes:
        ap.error("--budget-scale and --batch-sizes apply to --scale offline only (use --override)")
    out = args.out or Path("results") / f"{args.finding}-paper"
    return reproduce_paper(args.finding, out, launcher=args.launcher, seeds=args.seeds,
                           overrides=args.override, dry_run=args.dry_run)


if __name__ == "__main__":
    sys.exit(main())
