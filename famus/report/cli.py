"""``famus report RUN_DIR [RUN_DIR ...] --out DIR``: the command-line side of :func:`make_report`.

Exit status: 0 when the report was written (folders that do not exist, or runs with
missing or partial files, are reported on stderr and in the report, not fatal); 1 with
``--strict`` when anything was missing; 2 when no report could be made (none of the
arguments is a run folder: missing, or without any of a run's files; or ``--out`` is unusable).
"""

from __future__ import annotations

import argparse
import sys

from famus.report.report import ReportError, make_report


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``report`` subcommand's arguments to ``parser``."""
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run folders (famus train --out)")
    parser.add_argument("--out", default="report", help="folder for index.html, summary.md/json and the PNGs")
    parser.add_argument("--weight-steps", type=int, nargs="+", default=None, metavar="STEP",
                        help="steps for the example-weight histograms (nearest tracked step; "
                             "default: first, middle and last tracked)")
    parser.add_argument("--strict", action="store_true",
                        help="exit with status 1 when any run folder or file is missing or partial")


def run_cli(args: argparse.Namespace) -> int:
    """Run ``famus report`` with parsed ``args``; returns the exit status."""
    try:
        result = make_report(args.run_dirs, args.out, weight_steps=args.weight_steps)
    except (ReportError, OSError) as e:
        print(f"famus report: error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {result['index']} ({len(result['figures'])} figures), {result['summary_md']}")
    if getattr(args, "strict", False) and (any(result["problems"].values()) or result["skipped"]):
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry point: ``python -m famus.report RUN_DIR ... --out DIR``."""
    parser = argparse.ArgumentParser(prog="famus report", description="Plots and a summary of training runs.")
    add_arguments(parser)
    return run_cli(parser.parse_args(argv))
