"""`imgcls data get|check|shard|apply`: built-in datasets, the data doctor and its fixes, shards."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from imgcls.cli.output import positive_int
from imgcls.cli.output import print_text as _print
from imgcls.errors import ImgclsError

log = logging.getLogger("imgcls")
OUTSIDE_HELP = "follow links that lead outside the data folder (left out by default)"


def cmd_data_get(args: argparse.Namespace) -> int:
    from imgcls.data.builtin import get_dataset

    info = get_dataset(args.name, Path(args.out), download=args.download)
    counts = ", ".join(f"{split} {n:,}" for split, n in info["counts"].items())
    classes = len(info["classes"])
    _print(f"{info['name']} ({info['source']}): {counts} images in {classes} class folders under {info['out']}")
    return 0


def cmd_data_check(args: argparse.Namespace) -> int:
    from imgcls.doctor.check import check_dataset, parse_kinds, summary_lines

    fail_on = parse_kinds(args.fail_on) if args.fail_on else ()  # bad kinds are refused before the long scan
    if args.model and not args.pretrained:
        raise ImgclsError("--model names the network of --pretrained; give --pretrained NAME_OR_FILE too.")
    report = check_dataset(
        Path(args.data),
        label_errors=not args.no_label_errors,
        max_label_images=args.label_sample,
        allow_outside=args.allow_outside,
        pretrained=args.pretrained,
        model=args.model,
    )
    if args.html:
        from imgcls.doctor.html import write_html

        write_html(report, Path(args.html))
    if args.fix_plan:
        from imgcls.doctor.fix import plan_actions, write_plan

        rows = plan_actions(report)
        write_plan(rows, Path(args.fix_plan))
    if args.json:
        _print(json.dumps(report, ensure_ascii=False))
    else:
        for line in summary_lines(report):
            _print(line)
        if args.html:
            _print(f"  report: {args.html}")
        if args.fix_plan:
            _print(f"  fix plan: {len(rows)} proposed action(s) in {args.fix_plan}; nothing was changed.")
            _print(f"  review it, then: imgcls data apply {args.fix_plan}")
    failed = [kind for kind in fail_on if report["findings"][kind]]
    if failed:
        log.warning("found %s (--fail-on)", ", ".join(f"{report['findings'][k]} {k}" for k in failed))
        return 1
    return 0


def cmd_data_shard(args: argparse.Namespace) -> int:
    from imgcls.data.shards import parse_size, write_shards

    index = write_shards(Path(args.data), Path(args.out), parse_size(args.shard_size), allow_outside=args.allow_outside)
    for split, info in index["splits"].items():
        _print(f"{split}: {info['count']:,} images in {len(info['shards'])} shard(s)")
    _print(f"shards and index.json in {args.out}; train with: imgcls train {args.out}")
    return 0


def cmd_data_apply(args: argparse.Namespace) -> int:
    from imgcls.doctor.fix import apply_plan, undo_apply

    if args.undo:
        _print(f"restored {undo_apply(Path(args.undo)):,} file(s) from {args.undo}")
        return 0
    if not args.plan:
        raise ImgclsError("data apply needs a fix plan (from `imgcls data check --fix-plan FILE`), or --undo BACKUP.")
    result = apply_plan(Path(args.plan), Path(args.backup) if args.backup else None)
    if not result["applied"]:
        _print("nothing to apply (every row is keep)")
        return 0
    done = ", ".join(f"{n:,} {action}" for action, n in sorted(result["applied"].items()))
    _print(f"applied: {done}; originals and undo.csv in {result['backup']}")
    _print(f"to undo: imgcls data apply --undo {result['backup']}")
    return 0


def add_data_parsers(sub, common: argparse.ArgumentParser) -> None:
    data = sub.add_parser("data", help="built-in datasets and dataset checks").add_subparsers(
        dest="data_command", required=True, metavar="ACTION"
    )
    p = data.add_parser("get", parents=[common], help="write a built-in dataset as class folders")
    p.add_argument("name", help="fashion-mnist or digits")
    p.add_argument("--out", required=True)
    p.add_argument("--download", action="store_true", help="allow a torchvision download when no local copy exists")
    p.set_defaults(func=cmd_data_get)
    p = data.add_parser(
        "check", parents=[common], help="inventory, unreadable files, duplicates, leakage, label problems, imbalance"
    )
    p.add_argument("data", help="class folders, or a root with train/ val/ test/")
    p.add_argument("--json", action="store_true", help="print the full report as JSON")
    p.add_argument("--html", metavar="FILE", help="write one self-contained HTML page with thumbnails of every finding")
    p.add_argument(
        "--fail-on",
        metavar="KINDS",
        help="exit 1 when any of these is found: corrupt, duplicate, near-duplicate, leakage, conflict, "
        "label-error, imbalance, tiny (comma-separated), or all",
    )
    p.add_argument("--fix-plan", metavar="FILE", help="write proposed actions (drop, move, relabel) as CSV to review")
    p.add_argument("--allow-outside", action="store_true", help=OUTSIDE_HELP)
    p.add_argument("--no-label-errors", action="store_true", help="skip the label-error model (the slow part)")
    p.add_argument(
        "--label-sample",
        type=positive_int,
        default=100_000,
        metavar="N",
        help="check the labels of at most N images, a stratified sample (100,000)",
    )
    p.add_argument(
        "--pretrained",
        metavar="NAME_OR_FILE",
        help="judge labels with logistic regression on this network's features instead of thumbnails: "
        "a timm tag (tf_efficientnet_lite0.in1k), imagenet (the model's default tag), or a weights file",
    )
    p.add_argument(
        "--model",
        metavar="M",
        help="the timm architecture of --pretrained (default: from the tag, else tf_efficientnet_lite0)",
    )
    p.set_defaults(func=cmd_data_check)
    p = data.add_parser("shard", parents=[common], help="pack class folders into tar shards (WebDataset layout)")
    p.add_argument("data", help="a folder of class folders, or a root with train/ val/ test/")
    p.add_argument("--out", required=True, help="folder for the .tar shards and index.json")
    p.add_argument("--shard-size", default="500MB", help="bytes per shard, e.g. 500MB or 2GB (500MB)")
    p.add_argument("--allow-outside", action="store_true", help=OUTSIDE_HELP)
    p.set_defaults(func=cmd_data_shard)

    p = data.add_parser("apply", parents=[common], help="carry out a reviewed fix plan, with a backup and undo log")
    p.add_argument("plan", nargs="?", help="the CSV written by `imgcls data check --fix-plan`")
    p.add_argument("--backup", metavar="DIR", help="where originals go (default: next to the data, timestamped)")
    p.add_argument("--undo", metavar="BACKUP", help="put back the files of an earlier apply, from its backup folder")
    p.set_defaults(func=cmd_data_apply)
