"""`atomfm leaderboard`: gather result files into a report (report.md, a static site, PNG plots).

atomfm leaderboard results --out report            # then open report/index.html (works offline)
atomfm leaderboard results/a results/b --out report
"""

from __future__ import annotations

import argparse
import sys


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "leaderboard",
        help="gather the result files of `atomfm eval` into a ranked report: Markdown, HTML site, plots",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "results", nargs="+", metavar="RESULT_DIR", help="folders of result files (or result files)"
    )
    p.add_argument("--out", required=True, metavar="REPORT_DIR", help="folder for the report")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from data_pipeline.schema import BadInputError
    from eval.leaderboard import build_report

    try:
        index = build_report(args.results, args.out)
    except BadInputError as err:
        print(f"atomfm leaderboard: {err}", file=sys.stderr)
        return 2
    print(f"wrote {index.parent / 'report.md'}")
    print(f"wrote {index} (open it in a browser; it works offline)")
    return 0
