"""The jobs file of ``SLURM/sbatch_template.sh``: one job's Hydra overrides per line.

One parser, used both by the template (``python -m bench.tools.jobs_file args JOBS_FILE TASK``
prints the arguments of array task ``TASK``, NUL-separated, for bash's ``mapfile -d ''``)
and by ``bench.tools.status`` (the jobs a sweep expects), so what status reports is what ran.

A line is split like a POSIX shell command line by :func:`shlex.split`, quotes keep spaces
(``'tag=a b'`` is one argument), and nothing is ever expanded or run: ``$(...)``, backticks,
``;``, ``|``, ``$VAR`` and globs are passed to the job as the text they are. Blank lines
and lines starting with ``#`` are not jobs.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path


def job_lines(path: Path | str) -> list[list[str]]:
    """The arguments of every job line of ``path``, in order (array task i = entry i).
    Raises ValueError naming the line when a line's quotes do not close."""
    jobs = []
    for number, line in enumerate(Path(path).read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        try:
            jobs.append(shlex.split(line, comments=False, posix=True))
        except ValueError as err:
            raise ValueError(f"{path}:{number}: {err}") from None
    return jobs


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 3 or args[0] != "args" or not args[2].isdigit():
        print("usage: python -m bench.tools.jobs_file args JOBS_FILE TASK_ID", file=sys.stderr)
        return 2
    try:
        jobs = job_lines(args[1])
    except (OSError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    task = int(args[2])
    if task >= len(jobs):
        print(f"error: array task {task}: {args[1]} has only {len(jobs)} job lines",
              file=sys.stderr)
        return 1
    sys.stdout.buffer.write(b"".join(a.encode() + b"\0" for a in jobs[task]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
