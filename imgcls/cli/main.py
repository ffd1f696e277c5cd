"""The command line: one small function per subcommand, heavy imports inside them.

Exit status: 0 on success; 1 when `predict` could not read some files (the others are
still predicted); 2 when imgcls refused the input (the message says why and what to do).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from imgcls import __version__
from imgcls.cli.data import add_data_parsers
from imgcls.cli.output import OneLineParser, PrintableFormatter, port_number, positive_int
from imgcls.cli.output import print_text as _print
from imgcls.cli.retrieval import add_retrieval_parsers
from imgcls.cli.weights import add_weights_parsers
from imgcls.cli.zeroshot import add_zeroshot_parser
from imgcls.errors import ImgclsError

log = logging.getLogger("imgcls")
# From this many images `predict --runtime auto` runs a checkpoint on ONNX Runtime: on 2,000
# Fashion-MNIST PNGs it was 1.5x PyTorch's speed, conversion included (benchmarks/predict_speed.py).
AUTO_ONNX_IMAGES = 512


def _overrides(args: argparse.Namespace) -> dict:
    """Command-line flags as config overrides; flags not given leave the recipe's value."""
    from imgcls.config import parse_overrides

    nested = parse_overrides(args.set or [])
    flags = {
        ("data", "train"): str(Path(args.data).absolute()) if args.data else None,  # resumable from anywhere
        ("data", "val"): str(Path(args.val).absolute()) if args.val else None,
        ("data", "img_size"): args.img_size,
        ("data", "val_fraction"): args.val_fraction,
        ("data", "task"): args.task,
        ("data", "allow_outside"): True if args.allow_outside else None,
        ("model", "name"): args.model,
        ("train", "epochs"): args.epochs,
        ("train", "batch_size"): args.batch_size,
        ("train", "seed"): args.seed,
        ("train", "device"): args.device,
        ("train", "precision"): args.precision,
        ("transfer", "pretrained"): args.pretrained,
        ("transfer", "freeze_backbone"): True if args.freeze_backbone else None,
        ("distill", "teacher"): args.teacher,
        ("distill", "alpha"): args.kd_alpha,
        ("distill", "temperature"): args.kd_temperature,
    }
    for (section, key), value in flags.items():
        if value is not None:
            nested.setdefault(section, {})[key] = value
    return nested


def _without_devices(argv: list[str]) -> list[str]:
    """The command line again, without --devices N (each worker is one of the N)."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--devices":
            skip = True
        elif not arg.startswith("--devices="):
            out.append(arg)
    return out


def _headline(m: dict) -> str:
    """The metrics a user reads first, on one line."""
    if m.get("task") == "multi-label":
        return (
            f"mAP {m['mAP'] or 0:.4f}  micro-F1 {m['micro_f1']:.4f}  subset accuracy {m['subset_accuracy']:.4f}"
            f"  on {m['num_samples']}"
        )
    top5 = f"  top-5 {m['top5_accuracy']:.4f}" if m.get("top5_accuracy") is not None else ""
    return f"accuracy {m['accuracy']:.4f}  macro-F1 {m['macro_f1']:.4f}{top5}  on {m['num_samples']}"


def _probability(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text} is not a probability between 0 and 1")
    return value


def _train_config(args: argparse.Namespace, overrides: dict):
    """The run's config: with --pretrained and no --recipe, the fine-tuning recipe; with weights
    named ARCH.TAG and no --model, that architecture; the weights' own preprocessing under both."""
    from imgcls.config import build_config
    from imgcls.models.pretrained import DEFAULT_TAG, is_weights_name, weights_config
    from imgcls.models.registry import config_defaults

    recipe = args.recipe
    if args.pretrained and recipe is None:
        recipe = "finetune"
    if args.pretrained and not args.model and args.pretrained != DEFAULT_TAG and is_weights_name(args.pretrained):
        arch = args.pretrained.removeprefix("hf-hub:").removeprefix("timm/").split(".")[0]
        overrides.setdefault("model", {})["name"] = arch
    return build_config(recipe, overrides, config_defaults, weights_config)


def cmd_train(args: argparse.Namespace) -> int:
    from imgcls.training.fit import fit

    overrides = _overrides(args)
    if args.sync_bn:
        overrides.setdefault("train", {})["sync_bn"] = True
    if args.clip_weights:
        from imgcls.models.clip_backbone import clip_model_kwargs

        overrides.setdefault("model", {}).setdefault("kwargs", {}).update(clip_model_kwargs(args.clip_weights))
    for key, value in (("unlabeled", args.unlabeled and str(Path(args.unlabeled).absolute())), ("method", args.semi)):
        if value:
            overrides.setdefault("semi", {})[key] = value
    # A resumed run keeps its config.yaml, but may move to another device (another machine).
    device = overrides.get("train", {}).pop("device", None) if args.resume else None
    overrides = {section: values for section, values in overrides.items() if values}
    if args.resume and (overrides or args.recipe):
        given = ", ".join(f"{section}.{key}" for section, values in overrides.items() for key in values)
        raise ImgclsError(
            f"--resume continues with the run's own config.yaml; drop the other options ({given or 'recipe'})."
        )
    if args.devices and args.devices > 1:  # this process only starts the workers
        from imgcls.training.distributed import launch

        return launch(args.devices, _without_devices(sys.argv[1:] if args.argv is None else args.argv))
    config = None if args.resume else _train_config(args, overrides)
    from imgcls.training import distributed

    try:
        result = fit(config, Path(args.out), resume=args.resume, device=device)
    finally:
        distributed.shutdown()
    if os.environ.get("RANK", "0") != "0":  # a torchrun worker: rank 0 speaks for the run
        return 0
    _print(_headline(result.metrics) + " validation images")
    _print(f"best checkpoint: {result.best_checkpoint}")
    _print(f"report: {result.run_dir / 'report.html'}")
    return 0


def cmd_lr_find(args: argparse.Namespace) -> int:
    from imgcls.training.lr_find import find_lr, plot_lr_finder

    if not args.data:
        raise ImgclsError("lr-find needs DATA (a folder of class folders).")
    result = find_lr(_train_config(args, _overrides(args)), steps=args.steps)
    path = plot_lr_finder(result, Path(args.out))
    _print(f"suggested learning rate: {result.suggestion:.3g} (steepest loss descent; use --set optim.lr=...)")
    _print(f"plot: {path}")
    return 0


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
    _print(f"{metrics['data']}: " + _headline(metrics) + " images")
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


def cmd_predict(args: argparse.Namespace) -> int:
    from imgcls.inference.predictor import PredictionSinks, Predictor, expand_paths

    items = expand_paths(args.paths)
    if not items:
        raise ImgclsError(f"no images found in {' '.join(args.paths)}.")
    runtime = args.runtime
    if runtime == "auto":  # converting to ONNX takes 0.1-2 s; it pays back over many images
        runtime = "onnx" if len(items) >= AUTO_ONNX_IMAGES else "torch"
    predictor = Predictor.from_file(args.checkpoint, runtime=runtime)
    failures = 0
    with PredictionSinks(args.out, args.copy_to, topk=args.topk) as sinks:
        predictions = predictor.predict_paths(items, topk=args.topk, threshold=args.threshold)
        for (_, path), prediction in zip(items, predictions, strict=True):
            failures += prediction.error is not None
            sinks.add(prediction, path)
            _print(json.dumps(prediction.to_json(), ensure_ascii=False) if args.json else prediction.to_text())
    if failures:
        _print(f"imgcls: {failures} of {len(items)} file(s) could not be read", file=sys.stderr)
    if args.out:
        _print(f"predictions: {args.out}", file=sys.stderr)
    if args.copy_to:
        _print(f"copied {len(items) - failures} image(s) into class folders under {args.copy_to}", file=sys.stderr)
    return 1 if failures else 0


def cmd_export(args: argparse.Namespace) -> int:
    from imgcls.inference.export import export_onnx

    if args.format == "web":
        return _export_web(args)
    out = Path(args.out) if args.out else Path(args.checkpoint).with_suffix(".onnx")
    result = export_onnx(
        Path(args.checkpoint),
        out,
        pixels=args.with_preprocessing,
        check=args.check,
        int8=args.int8,
        calibration=args.calibration,
        keep_int8=args.keep_int8,
    )
    _print(f"exported {result.path}")
    _print_parity(result)
    if result.int8 is not None:
        q = result.int8
        verdict = f"written to {q.path}" if q.path else "not kept (--keep-int8 keeps it anyway)"
        _print(
            f"int8: {q.speedup:.2f}x the float32 speed at batch 32, top-1 unchanged on {q.agreement:.1%} "
            f"of the check images; {q.reason}; {verdict}"
        )
    return 0


def _export_web(args: argparse.Namespace) -> int:
    from imgcls.inference.web_export import export_web

    if args.int8 or args.calibration or args.keep_int8:
        raise ImgclsError("--format web exports the float32 model; --int8 and --calibration do not apply.")
    out = Path(args.out) if args.out else Path(args.checkpoint).with_suffix("")
    result = export_web(Path(args.checkpoint), out, check=args.check)
    _print(f"wrote {out}/: open index.html through any static web server, e.g. python -m http.server -d {out}")
    _print_parity(result)
    return 0


def _print_parity(result) -> None:
    _print(
        f"parity with PyTorch: largest probability difference {result.max_difference:.1e} "
        f"on {result.check_images} images ({result.check_source})"
    )
    if result.resize is not None:
        r = result.resize
        _print(
            f"resize inside the graph against imgcls's: largest probability difference {r.probability:.1e}, "
            f"largest pixel difference {r.levels} grey levels, on {r.images} images of their own sizes"
        )


def cmd_serve(args: argparse.Namespace) -> int:
    from imgcls.serve.app import serve

    serve(
        args.checkpoint,
        host=args.host,
        port=args.port,
        max_upload_mb=args.max_upload_mb,
        topk=args.topk,
        runtime=args.runtime,
        gallery=args.gallery,
        admin_token=args.admin_token,
        max_pixels=args.max_pixels,
        decode_budget_mb=args.decode_budget_mb,
    )
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from imgcls.models.registry import count_parameters, list_models

    rows = list_models(args.pattern, include_timm=bool(args.pattern) or args.all)
    _print(f"{'name':32s} {'params':>10s}  (10 classes, 3 x {args.img_size} px input)")
    for name, description in rows:
        params = count_parameters(name, num_classes=10, in_chans=3, img_size=args.img_size)
        size = f"{params / 1e6:8.2f} M" if params is not None else "       ? "
        _print(f"{name:32s} {size}  {description}")
    if not args.pattern and not args.all:
        _print(
            "\nand every timm model by name: `imgcls models PATTERN` searches them (e.g. `imgcls models 'resnet*'`)."
        )
    return 0


OUTSIDE_HELP = "let a manifest name files outside its folder, and links in a data folder lead outside it"


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="imgcls", description="Image classification from folders of labelled images.")
    parser.add_argument("--version", action="version", version=f"imgcls {__version__}")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors on stderr")
    # -q also after the subcommand; SUPPRESS keeps a value given before it.
    common = OneLineParser(add_help=False)
    common.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    # Options shared by train and lr-find (lr-find takes the same data and recipe).
    training = OneLineParser(add_help=False, parents=[common])
    training.add_argument(
        "data", nargs="?", help="class folders, a root with train/ and val/ (test/), or a CSV/JSONL manifest"
    )
    training.add_argument("--val", help="validation folder or manifest (no automatic split then)")
    training.add_argument(
        "--task",
        choices=["auto", "single-label", "multi-label"],
        help="auto: multi-label when a manifest has rows with no label or several",
    )
    training.add_argument("--allow-outside", action="store_true", help=OUTSIDE_HELP)
    training.add_argument("--model", help="model name (see `imgcls models`)")
    training.add_argument("--img-size", type=int, help="square input size in pixels")
    training.add_argument("--epochs", type=int)
    training.add_argument("--batch-size", type=int)
    training.add_argument("--val-fraction", type=float, help="share held out per class when there is no val set (0.2)")
    training.add_argument("--recipe", help="recipe name or YAML file (default: default)")
    training.add_argument(
        "--pretrained",
        help="start from weights: a timm tag (resnet18.a1_in1k; imagenet = the model's default, fetched and cached), "
        "a .safetensors or .pth state dict, or an imgcls checkpoint",
    )
    training.add_argument("--freeze-backbone", action="store_true", help="train the classifier only (linear probe)")
    training.add_argument("--teacher", help="distil from this imgcls checkpoint (same classes)")
    training.add_argument("--kd-alpha", type=float, help="weight of the teacher's soft targets (0.5)")
    training.add_argument("--kd-temperature", type=float, help="distillation temperature (4)")
    training.add_argument("--seed", type=int)
    training.add_argument("--device", help="auto (CUDA when there is a GPU), cpu, cuda or cuda:N")
    training.add_argument(
        "--precision", choices=["auto", "fp32", "bf16", "fp16"], help="autocast (auto: bf16 where the hardware has it)"
    )
    training.add_argument(
        "--set", action="append", metavar="SECTION.KEY=VALUE", help="any config value, e.g. optim.lr=0.01"
    )
    p = sub.add_parser("train", parents=[training], help="train a model on a folder of class folders")
    p.add_argument("--devices", type=positive_int, help="train on N processes of this machine (torchrun, DDP)")
    p.add_argument("--sync-bn", action="store_true", help="several CUDA processes: batch norm over the global batch")
    p.add_argument("--clip-weights", help="with --model clip:ARCH: local open_clip weights (hash kept, not copied)")
    p.add_argument("--unlabeled", metavar="DIR", help="semi-supervised: also learn from these unlabeled images")
    p.add_argument("--semi", choices=["fixmatch", "pseudo"], help="with --unlabeled: FixMatch (default) or pseudo")
    p.add_argument("--out", default="runs/train", help="run directory (default: runs/train)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from last.safetensors")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("lr-find", parents=[training], help="learning-rate range test with a plot and a suggestion")
    p.add_argument("--out", default="lr_find.png", help="where to save the loss-vs-lr plot (lr_find.png)")
    p.add_argument("--steps", type=positive_int, default=200, help="steps of the sweep (200)")
    p.set_defaults(func=cmd_lr_find)

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

    p = sub.add_parser("predict", parents=[common], help="top-k labels of images, folders or globs")
    p.add_argument("checkpoint", help="a .safetensors checkpoint or an exported .onnx file")
    p.add_argument("paths", nargs="+", metavar="PATH")
    p.add_argument("--topk", type=positive_int, default=3)
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.add_argument("--out", help="also write path, top-k labels and scores to this CSV file")
    p.add_argument("--copy-to", metavar="DIR", help="copy each image into DIR/<predicted class>/")
    runtime_help = (
        f"run a checkpoint on PyTorch (CPU), ONNX Runtime or PyTorch on a CUDA GPU (auto: ONNX from "
        f"{AUTO_ONNX_IMAGES} images on)"
    )
    p.add_argument("--runtime", choices=["auto", "torch", "onnx", "cuda"], default="auto", help=runtime_help)
    p.add_argument(
        "--threshold",
        type=_probability,
        help="multi-label: one threshold for every label (default: each label's own, chosen on validation)",
    )
    p.set_defaults(func=cmd_predict)

    add_zeroshot_parser(sub, common)
    add_weights_parsers(sub, common)

    p = sub.add_parser("export", parents=[common], help="export a checkpoint to ONNX, checked against PyTorch")
    p.add_argument("checkpoint")
    p.add_argument(
        "--format",
        choices=["onnx", "web"],
        default="onnx",
        help="onnx: one file; web: a static folder that classifies dropped images in the browser (docs/deploy.md)",
    )
    p.add_argument("--out", help="output file, or folder for --format web (default: beside the checkpoint)")
    p.add_argument(
        "--with-preprocessing",
        action="store_true",
        help="the graph takes decoded uint8 images (N, H, W, C) of any size and crops, resizes and normalises",
    )
    p.add_argument("--check", nargs="+", metavar="PATH", help="images for the parity check (default: --calibration)")
    p.add_argument("--int8", action="store_true", help="also make a static int8 copy, kept where faster and accurate")
    p.add_argument("--calibration", nargs="+", metavar="PATH", help="training images to calibrate int8 on")
    p.add_argument(
        "--keep-int8", action="store_true", help="write the int8 copy even when it is slower or less accurate"
    )
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("serve", parents=[common], help="HTTP server with a web page: POST an image, get top-k")
    p.add_argument("checkpoint", help="a .safetensors checkpoint or an exported .onnx file")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=port_number, default=8000)
    p.add_argument("--max-upload-mb", type=float, default=10.0, help="largest accepted request body (10 MB)")
    p.add_argument("--topk", type=positive_int, default=5, help="labels answered when the request does not say (5)")
    p.add_argument(
        "--max-pixels",
        type=int,
        help="largest image decoded, in pixels (16,000,000; never above the model's data.max_pixels)",
    )
    p.add_argument(
        "--decode-budget-mb",
        type=float,
        default=768,
        help="memory decoding uploads may hold at once (768); sets how many decode together",
    )
    p.add_argument(
        "--runtime",
        choices=["onnx", "torch", "cuda"],
        default="onnx",
        help="run a checkpoint on ONNX Runtime (default: faster on CPU), PyTorch, or on a GPU",
    )
    p.add_argument("--gallery", help="also answer POST /recognize and /search from this gallery folder")
    p.add_argument(
        "--admin-token",
        default=os.environ.get("IMGCLS_ADMIN_TOKEN"),
        help="allow enrolment (POST /gallery/LABEL) with this bearer token (or $IMGCLS_ADMIN_TOKEN); "
        "without it the gallery is read-only",
    )
    p.set_defaults(func=cmd_serve)

    add_data_parsers(sub, common)

    p = sub.add_parser("models", parents=[common], help="list model names with parameter counts")
    p.add_argument("pattern", nargs="?", help="glob or substring, searched in imgcls's and timm's models")
    p.add_argument("--all", action="store_true", help="list every timm model too")
    p.add_argument("--img-size", type=int, default=32, help="input size the parameter counts assume (32)")
    p.set_defaults(func=cmd_models)
    add_retrieval_parsers(sub, common)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = argv  # `train --devices N` passes the command line on to its workers
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(PrintableFormatter("imgcls: %(message)s"))
    handler.setLevel(logging.WARNING if args.quiet else logging.INFO)  # the run's train.log keeps INFO
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        if args.command == "train" and not args.resume and not args.data:
            raise ImgclsError("train needs DATA (a folder of class folders), or --resume with --out RUN_DIR.")
        return args.func(args)
    except ImgclsError as err:
        _print(f"imgcls: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        _print("imgcls: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head` and the like: stop quietly
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - keeps Python's exit flush from failing again
        return 141
    except OSError as err:  # the machine, not imgcls: an --out under a file, no permission, a full disk
        where = f"{err.filename}: " if err.filename else ""
        _print(f"imgcls: error: {where}{err.strerror or err}.", file=sys.stderr)
        return 2
    finally:
        log.removeHandler(handler)


if __name__ == "__main__":
    sys.exit(main())
