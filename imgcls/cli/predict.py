"""`imgcls predict`, `export`, `serve` and `models`: a trained model put to use."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from imgcls.cli.output import port_number, positive_int
from imgcls.cli.output import print_text as _print
from imgcls.errors import ImgclsError

# From this many images `predict --runtime auto` runs a checkpoint on ONNX Runtime: on 2,000
# Fashion-MNIST PNGs it was 1.5x PyTorch's speed, conversion included (benchmarks/predict_speed.py).
AUTO_ONNX_IMAGES = 512


def _probability(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text} is not a probability between 0 and 1")
    return value


def cmd_predict(args: argparse.Namespace) -> int:
    from imgcls.inference.predictor import PredictionSinks, Predictor, expand_paths

    items = expand_paths(args.paths)
    if not items:
        raise ImgclsError(f"no images found in {' '.join(args.paths)}.")
    runtime = args.runtime
    # Converting to ONNX takes 0.1-8 s (a 224-px EfficientNet-Lite0 on a busy 2-core CPU: 8 s); it
    # pays back over many images, and is done once per checkpoint: the graph is cached (predictor.py).
    if runtime == "auto":
        runtime = "fastest" if len(items) >= AUTO_ONNX_IMAGES else "torch"
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
            "\ntorchvision has no ShuffleNet v1 (v2 is above); your own nn.Module trains as --model mypkg.module:MyNet."
        )
    return 0


def add_predict_parsers(sub, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("predict", parents=[common], help="top-k labels of images, folders or globs")
    p.add_argument("checkpoint", help="a .safetensors checkpoint or an exported .onnx file")
    p.add_argument("paths", nargs="+", metavar="PATH")
    p.add_argument("--topk", type=positive_int, default=3)
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.add_argument("--out", help="also write path, top-k labels and scores to this CSV file")
    p.add_argument("--copy-to", metavar="DIR", help="copy each image into DIR/<predicted class>/")
    runtime_help = (
        f"run a checkpoint on PyTorch (CPU, float32), ONNX Runtime (float32), PyTorch under bfloat16 on the CPU, "
        f"or PyTorch on a CUDA GPU (auto: from {AUTO_ONNX_IMAGES} images on, ONNX Runtime, or where the CPU "
        "computes bfloat16 and it is faster for the network, torch-bf16; timed once per checkpoint)"
    )
    p.add_argument(
        "--runtime", choices=["auto", "torch", "onnx", "torch-bf16", "cuda"], default="auto", help=runtime_help
    )
    p.add_argument(
        "--threshold",
        type=_probability,
        help="multi-label: one threshold for every label (default: each label's own, chosen on validation)",
    )
    p.set_defaults(func=cmd_predict)


def add_deploy_parsers(sub, common: argparse.ArgumentParser) -> None:

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

    p = sub.add_parser("models", parents=[common], help="list model names with parameter counts")
    p.add_argument("pattern", nargs="?", help="glob or substring, searched in imgcls's and timm's models")
    p.add_argument("--all", action="store_true", help="list every timm model too")
    p.add_argument("--img-size", type=int, default=32, help="input size the parameter counts assume (32)")
    p.set_defaults(func=cmd_models)
