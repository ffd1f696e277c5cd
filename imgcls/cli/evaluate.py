"""`imgcls evaluate`, `report` and `compare`: a checkpoint's metrics on labelled data, and runs side by side."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from imgcls.cli.output import headline
from imgcls.cli.output import print_text as _print
from imgcls.cli.train import OUTSIDE_HELP


def cmd_evaluate(args: argparse.Namespace) -> int:
    from imgcls.inference.evaluate import evaluate_checkpoint

    out = Path(args.out) if args.out else None
    metrics = evaluate_checkpoint(
        Path(args.checkpoint),
        Path(args.data),
        out,
        tta=args.tta,
        allow_outside=args.allow_outside,
        runtime=args.runtime,
    )
    if args.json:
        _print(json.dumps(metrics, ensure_ascii=False))
        return 0
    _print(f"{metrics['data']}: " + headline(metrics) + " images")
    if metrics.get("tta"):
        tta = metrics["tta"]
        key = "mAP" if metrics.get("task") == "multi-label" else "accuracy"
        before, after = tta[f"{key}_without"], tta[f"{key}_with"]
        _print(f"flip test-time augmentation: {key} {before:.4f} -> {after:.4f} ({100 * (after - before):+.2f} points)")
    if metrics["skipped_files"]:
        _print(f"skipped {len(metrics['skipped_files'])} unreadable file(s)")
    if args.out:
        _print(f"metrics: {Path(args.out) / 'metrics.json'}\nreport: {Path(args.out) / 'report.html'}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from imgcls.report.runs import rebuild_report

    path = rebuild_report(Path(args.run_dir), Path(args.out) if args.out else None)
    _print(f"report: {path}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from imgcls.report.runs import compare_rows, format_table, write_comparison

    rows = compare_rows([Path(d) for d in args.run_dirs])
    if args.json:
        _print(json.dumps(rows, ensure_ascii=False))
    else:
        _print(format_table(rows))
    _print(f"table: {write_comparison(rows, Path(args.out))}", file=sys.stderr)
    return 0


def add_evaluate_parsers(sub, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("evaluate", parents=[common], help="metrics of a checkpoint on labelled data")
    p.add_argument("checkpoint")
    p.add_argument("data", help="class folders, or a root whose test/ (else val/) is used")
    p.add_argument("--out", help="folder for metrics.json and report.html")
    p.add_argument("--json", action="store_true", help="print metrics as JSON")
    p.add_argument("--tta", action="store_true", help="average each image with its mirror image; report the effect")
    p.add_argument("--allow-outside", action="store_true", help=OUTSIDE_HELP)
    p.add_argument(
        "--runtime",
        choices=["torch", "onnx", "cuda"],
        default="torch",
        help="run a checkpoint on PyTorch (CPU), ONNX Runtime, or PyTorch on a CUDA GPU",
    )
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("report", parents=[common], help="draw the report of a run or evaluation folder again")
    p.add_argument("run_dir", help="a folder from `imgcls train` or `imgcls evaluate --out`")
    p.add_argument("--out", help="where to write it (RUN_DIR/report.html)")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("compare", parents=[common], help="runs side by side: metrics, time, model, recipe")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    p.add_argument("--out", default="compare.csv", help="table file, CSV or .html (compare.csv)")
    p.add_argument("--json", action="store_true", help="print the rows as JSON")
    p.set_defaults(func=cmd_compare)
