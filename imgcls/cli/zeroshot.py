"""`imgcls zeroshot`: labels from their names alone, with local CLIP weights."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from imgcls.cli.output import positive_int
from imgcls.cli.output import print_text as _print
from imgcls.errors import ImgclsError


def cmd_zeroshot(args: argparse.Namespace) -> int:
    """`imgcls zeroshot IMAGE... --labels ...`, or `imgcls zeroshot evaluate DATA --labels-from-folders`."""
    from imgcls.zeroshot import read_prompts

    if args.paths[0] == "evaluate":
        return cmd_zeroshot_evaluate(args, read_prompts(args.prompts_file))
    from imgcls.inference.predictor import PredictionSinks, expand_paths
    from imgcls.zeroshot import parse_labels, zeroshot_predictor

    labels = parse_labels(args.labels, args.labels_file)
    items = expand_paths(args.paths)
    predictor = zeroshot_predictor(
        labels, clip_model=args.clip_model, clip_weights=args.clip_weights, prompts=read_prompts(args.prompts_file)
    )
    failures = 0
    with PredictionSinks(args.out, args.copy_to, topk=args.topk) as sinks:
        for (_, path), prediction in zip(items, predictor.predict_paths(items, topk=args.topk), strict=True):
            failures += prediction.error is not None
            sinks.add(prediction, path)
            _print(json.dumps(prediction.to_json(), ensure_ascii=False) if args.json else prediction.to_text())
    if failures:
        _print(f"imgcls: {failures} of {len(items)} file(s) could not be read", file=sys.stderr)
    return 1 if failures else 0


def cmd_zeroshot_evaluate(args: argparse.Namespace, prompts: tuple[str, ...]) -> int:
    from imgcls.zeroshot.evaluate import evaluate_zeroshot, summary_lines

    if len(args.paths) != 2 or args.labels or args.labels_file:
        raise ImgclsError(
            "usage: imgcls zeroshot evaluate DATA --labels-from-folders [--out DIR] (folder names are "
            "the labels; --labels/--labels-file are for images)."
        )
    metrics = evaluate_zeroshot(
        Path(args.paths[1]),
        Path(args.out) if args.out else None,
        clip_model=args.clip_model,
        clip_weights=args.clip_weights,
        prompts=prompts,
    )
    if args.json:
        _print(json.dumps(metrics, ensure_ascii=False))
    else:
        for line in summary_lines(metrics, args.out):
            _print(line)
    return 0


def add_zeroshot_parser(sub, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("zeroshot", parents=[common], help="label images by label names alone (local CLIP weights)")
    p.add_argument("paths", nargs="+", metavar="IMAGE", help="images, folders or globs; or: evaluate DATA")
    p.add_argument("--labels", help='comma-separated labels, e.g. "cat,dog,eagle"')
    p.add_argument("--labels-file", help="one label per line")
    p.add_argument("--labels-from-folders", action="store_true", help="evaluate: class folder names are the labels")
    p.add_argument("--clip-model", default="ViT-B-32", help="open_clip architecture, or a model config .json")
    p.add_argument("--clip-weights", help="local weights file, or a pretrained tag in the local Hugging Face cache")
    p.add_argument("--prompts-file", help="prompt templates, one per line, with {} for the label")
    p.add_argument("--topk", type=positive_int, default=3)
    p.add_argument("--json", action="store_true", help="one JSON object per line (evaluate: the metrics)")
    p.add_argument("--out", help="images: CSV of predictions; evaluate: folder for metrics.json and report.html")
    p.add_argument("--copy-to", metavar="DIR", help="copy each image into DIR/<predicted label>/")
    p.set_defaults(func=cmd_zeroshot)
