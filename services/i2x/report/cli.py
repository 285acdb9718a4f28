"""`i2x report`: the HTML report of a run, or two runs compared.

    i2x report RESULTS_DIR_OR_STORE_URL --run RUN_ID [--out FILE] [--compare RUN_B [--compare-store URL]]
    i2x report RESULTS_DIR_OR_STORE_URL --compare RUN_A RUN_B [--out FILE]   (default ./i2x-compare-A-B.html)

i2x.cli calls add_report_command(subparsers) to register it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from i2x.core.errors import InvalidArgument


def add_report_command(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "report", help="build the self-contained HTML report of a run (or compare two runs)",
        description="Build the run's report (figures embedded, one HTML file); it is also stored as "
                    "runs/<run>/report.html with the figures under runs/<run>/figures/.")
    parser.add_argument("store", metavar="RESULTS_DIR_OR_STORE_URL",
                        help="the results folder (a local store) or a store URL (file://PATH, s3://BUCKET[/PREFIX])")
    parser.add_argument("--run", metavar="RUN_ID", help="the run to report on")
    parser.add_argument("--out", metavar="FILE", help="also write the HTML to FILE")
    parser.add_argument("--compare", metavar="RUN", nargs="+",
                        help="RUN_B: add a comparison with RUN_B to --run's report; or RUN_A RUN_B: a page "
                             "comparing the two runs side by side")
    parser.add_argument("--compare-store", metavar="URL", help="the store holding the compared run (default: the same)")
    parser.set_defaults(func=run_report_command)
    return parser


def run_report_command(args: argparse.Namespace) -> int:
    from i2x.cli_runs import open_existing_store as open_store  # a mistyped folder is reported, not created

    compare = args.compare or []
    if not args.run and len(compare) != 2:  # before anything is opened or built
        raise InvalidArgument("name the run: --run RUN_ID (or --compare RUN_A RUN_B)", field="run")
    from i2x.report import build_comparison, build_report

    store = open_store(args.store)
    other_store = open_store(args.compare_store) if args.compare_store else store
    if len(compare) > 2:
        raise InvalidArgument(f"--compare takes RUN_B or RUN_A RUN_B, got {len(compare)} runs", field="compare")
    if len(compare) == 2:
        if args.run:
            raise InvalidArgument("give either --run RUN_A --compare RUN_B or --compare RUN_A RUN_B, not both",
                                  field="compare")
        html = build_comparison(store, compare[0], other_store, compare[1])
        target = ""
    else:
        if not args.run:
            raise InvalidArgument("name the run: --run RUN_ID (or --compare RUN_A RUN_B)", field="run")
        html = build_report(store, args.run, compare_with=(other_store, compare[0]) if compare else None)
        target = f"{store.url}/runs/{args.run}/report.html"
        if hasattr(store, "root"):
            target = str(Path(store.root) / "runs" / args.run / "report.html")
    out = args.out or (f"i2x-compare-{compare[0]}-{compare[1]}.html" if len(compare) == 2 else None)
    if out:
        Path(out).write_text(html, encoding="utf-8")
        target = str(Path(out).resolve())
    print(f"report: {target}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry (python -m i2x.report.cli ...), used until i2x.cli registers the command."""
    parser = argparse.ArgumentParser(prog="i2x")
    add_report_command(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except Exception as error:  # noqa: BLE001 - domain errors print their message, not a traceback
        from i2x.core.errors import I2XError

        if isinstance(error, I2XError):
            print(f"i2x report: {error}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    raise SystemExit(main())
