"""`imgcls train` and `imgcls lr-find`: flags to a validated config, then training."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from imgcls.cli.output import OneLineParser, duration, headline, positive_int
from imgcls.cli.output import print_text as _print
from imgcls.errors import ImgclsError

OUTSIDE_HELP = "let a manifest name files outside its folder, and links in a data folder lead outside it"


def _overrides(args: argparse.Namespace) -> dict:
    """Command-line flags as config overrides; flags not given leave the recipe's value."""
    from imgcls.config import parse_overrides

    nested = parse_overrides(args.set or [])
    flags = {
        ("data", "train"): str(Path(args.data).absolute()) if args.data else None,  # resumable from anywhere
        ("data", "val"): str(Path(args.val).absolute()) if args.val else None,
        ("data", "img_size"): args.img_size,
        ("data", "val_fraction"): args.val_fraction,
        ("data", "task"): None if args.task == "embedding" else args.task,
        ("data", "allow_outside"): True if args.allow_outside else None,
        ("model", "name"): args.model,
        ("train", "epochs"): args.epochs,
        ("train", "batch_size"): args.batch_size,
        ("train", "seed"): args.seed,
        # --task embedding: metric learning with ArcFace unless --loss names another margin loss
        ("train", "loss"): args.loss or ("arcface" if args.task == "embedding" else None),
        ("train", "device"): args.device,
        ("train", "log"): args.log,
        ("train", "time_budget"): args.time,
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


MAX_PLANNED_EPOCHS = 100  # the most a --time budget plans when --epochs is not given


def _train_config(args: argparse.Namespace, overrides: dict):
    """(config, why): the run's config, with --pretrained and no --recipe the fine-tuning recipe;
    with weights named ARCH.TAG and no --model, that architecture; the weights' own preprocessing
    under both. With no model, recipe or weights, what imgcls.training.plan chooses from the data,
    and `why` says so in one line ("auto: ..."), else it is None."""
    from imgcls.config import build_config
    from imgcls.models.pretrained import DEFAULT_TAG, is_weights_name, weights_config, weights_name
    from imgcls.models.registry import config_defaults

    recipe, plan = args.recipe, None
    if args.time and "epochs" not in overrides.get("train", {}):  # --epochs, when given, caps the plan
        overrides.setdefault("train", {})["epochs"] = MAX_PLANNED_EPOCHS
    if args.pretrained and recipe is None:
        recipe = "finetune"
    elif recipe is None and not overrides.get("model", {}).get("name"):
        if not overrides.get("transfer", {}).get("pretrained"):
            build_config(None, overrides, config_defaults)  # the user's own settings, checked before any file is read
            recipe, plan = _planned_defaults(overrides)
    if args.pretrained and not args.model and args.pretrained != DEFAULT_TAG and is_weights_name(args.pretrained):
        overrides.setdefault("model", {})["name"] = weights_name(args.pretrained, None).split(".")[0]
    config = build_config(recipe, overrides, config_defaults, weights_config)
    if config.train.loss != "cross-entropy":  # before minutes of decoding, not after
        from imgcls.extras import require

        require("pytorch_metric_learning.losses", "metric")
    if plan is not None:  # said once the options are known to be accepted, so a refusal stays one line
        from imgcls.training.checks import check_model_config, check_task_options

        check_model_config(config)
        check_task_options(config, plan.task)
    return config, None if plan is None else f"auto: {plan.reason}"


def _planned_defaults(overrides: dict):
    """No model, recipe or weights given: choose them from the data (imgcls.training.plan);
    (recipe, plan). The user's own settings stay; the plan's fill in the rest."""
    from imgcls.data.resolve import resolve_training_data
    from imgcls.training.plan import plan_defaults, profile_data

    data, train = overrides.get("data", {}), overrides.get("train", {})
    sources = resolve_training_data(
        data["train"],
        data.get("val"),
        val_fraction=float(data.get("val_fraction", 0.2)),
        seed=int(train.get("seed", 0)),
        task=data.get("task", "auto"),
        allow_outside=bool(data.get("allow_outside", False)),
    )
    plan = plan_defaults(profile_data(sources), float(train.get("time_budget", 0)))
    for section, values in plan.overrides.items():
        for key, value in values.items():
            overrides.setdefault(section, {}).setdefault(key, value)
    return plan.recipe, plan


def _check_resume_options(run_dir: Path, overrides: dict, recipe: str | None) -> None:
    """--resume with the command that started the run (the up arrow) is fine: options equal to
    the run's config.yaml are accepted; each one that differs is named."""
    import dataclasses
    import typing

    from imgcls.config import load_config
    from imgcls.config_values import coerce

    if recipe:
        raise ImgclsError("--resume continues with the run's own config.yaml; drop --recipe.")
    config_file = run_dir / "config.yaml"
    if not config_file.is_file():
        return  # fit says there is nothing to resume
    saved = load_config(config_file)
    differ = []
    for section, values in overrides.items():
        part = getattr(saved, section)
        hints = typing.get_type_hints(type(part))
        for key, given in values.items():
            if key not in {f.name for f in dataclasses.fields(part)}:
                continue  # an unknown key fails as it would without --resume, when the config is built
            if section == "model" and key == "kwargs":
                value = {**part.kwargs, **given}
            else:
                value = coerce(f"{section}.{key}", given, hints[key])
            if value != getattr(part, key):
                differ.append(f"{section}.{key} {given} differs from the run's {getattr(part, key)}")
    if differ:
        raise ImgclsError(f"--resume continues the run as it started: {'; '.join(differ)}.")


def _teacher_input(args: argparse.Namespace, overrides: dict) -> None:
    """With --teacher and no size or channels given, the student takes the teacher's."""
    from imgcls.checkpoint import read_metadata

    data = overrides.setdefault("data", {})
    if not args.teacher or ("img_size" in data and "channels" in data):
        return
    pre = read_metadata(args.teacher)["preprocess"]
    data.setdefault("img_size", int(pre["img_size"]))
    data.setdefault("channels", str(pre["channels"]))


def _trust_named_model(args: argparse.Namespace) -> None:
    """`--model mypkg.module:MyNet` is the user asking imgcls to import mypkg.module (see
    models/user_models.py: a checkpoint's metadata alone never imports code)."""
    if args.model:
        from imgcls.models.user_models import trust_module

        trust_module(args.model)


def _check_sync_bn(overrides: dict, devices: int | None) -> None:
    """SyncBatchNorm is CUDA-only: refused here, before torchrun starts N processes that would
    each decode the data and then print the same error inside a traceback."""
    from imgcls.config_values import coerce

    train = overrides.get("train", {})
    if not devices or devices < 2 or not coerce("train.sync_bn", train.get("sync_bn", False), bool):
        return
    import torch

    device = str(train.get("device", "auto")).strip().lower()
    if device == "cpu" or (device == "auto" and not torch.cuda.is_available()):
        raise ImgclsError("train.sync_bn: PyTorch's SyncBatchNorm works on CUDA only; leave --sync-bn off on CPU.")


def cmd_train(args: argparse.Namespace) -> int:
    from imgcls.training.fit import fit

    _trust_named_model(args)
    overrides = _overrides(args)
    if args.sync_bn:
        overrides.setdefault("train", {})["sync_bn"] = True
    _check_sync_bn(overrides, args.devices)
    if args.clip_weights:
        from imgcls.models.clip_backbone import clip_model_kwargs

        overrides.setdefault("model", {}).setdefault("kwargs", {}).update(clip_model_kwargs(args.clip_weights))
    for key, value in (("unlabeled", args.unlabeled and str(Path(args.unlabeled).absolute())), ("method", args.semi)):
        if value:
            overrides.setdefault("semi", {})[key] = value
    # A resumed run keeps its config.yaml, but may move to another device (another machine).
    device = overrides.get("train", {}).pop("device", None) if args.resume else None
    overrides = {section: values for section, values in overrides.items() if values}
    if args.resume:
        _check_resume_options(Path(args.out), overrides, args.recipe)
    if args.devices and args.devices > 1:  # this process only starts the workers
        from imgcls.training.distributed import launch

        return launch(args.devices, _without_devices(sys.argv[1:] if args.argv is None else args.argv))
    if not args.resume:
        _teacher_input(args, overrides)
    config, why = (None, None) if args.resume else _train_config(args, overrides)
    from imgcls.training import distributed

    try:  # why goes to the terminal and the run's train.log
        result = fit(config, Path(args.out), resume=args.resume, device=device, notes=(why,) if why else ())
    finally:
        distributed.shutdown()
    if os.environ.get("RANK", "0") != "0":  # a torchrun worker: rank 0 speaks for the run
        return 0
    _print(headline(result.metrics) + " validation images")
    _print(f"best checkpoint: {result.best_checkpoint}")
    _print(f"report: {result.run_dir / 'report.html'}")
    return 0


def _plot_path(out: str) -> Path:
    """Where a plot goes: a name without a suffix gets ".png" (which matplotlib would add
    silently, leaving the printed path wrong); a suffix matplotlib cannot write is refused."""
    from matplotlib.backend_bases import FigureCanvasBase

    path = Path(out)
    if not path.suffix:
        return path.with_suffix(".png")
    formats = FigureCanvasBase.get_supported_filetypes()
    if path.suffix.lower().lstrip(".") not in formats:
        raise ImgclsError(f"--out {out}: a plot is written as one of .{', .'.join(sorted(formats))}.")
    return path


def cmd_lr_find(args: argparse.Namespace) -> int:
    from imgcls.training.lr_find import find_lr, plot_lr_finder

    if not args.data:
        raise ImgclsError("lr-find needs DATA (a folder of class folders).")
    out = _plot_path(args.out)  # before the minutes of the range test, not after
    _trust_named_model(args)
    config, why = _train_config(args, _overrides(args))
    if why:
        logging.getLogger("imgcls.training.plan").info(why)
    result = find_lr(config, steps=args.steps)
    path = plot_lr_finder(result, out)
    _print(f"suggested learning rate: {result.suggestion:.3g} (steepest loss descent; use --set optim.lr=...)")
    _print(f"plot: {path}")
    return 0


def add_train_parsers(sub, common: argparse.ArgumentParser) -> None:
    # Options shared by train and lr-find (lr-find takes the same data and recipe).
    training = OneLineParser(add_help=False, parents=[common])
    training.add_argument(
        "data", nargs="?", help="class folders, a root with train/ and val/ (test/), or a CSV/JSONL manifest"
    )
    training.add_argument("--val", help="validation folder or manifest (no automatic split then)")
    training.add_argument(
        "--task",
        choices=["auto", "single-label", "multi-label", "embedding"],
        help="auto: multi-label when a manifest has rows with no label or several; "
        "embedding: metric learning (an embedding for gallery/recognize/search, ArcFace unless --loss)",
    )
    training.add_argument(
        "--loss",
        choices=["cross-entropy", "arcface", "cosface", "subcenter-arcface", "supcon"],
        help="a metric-learning loss trains an embedding model (train.loss; needs the [metric] extra)",
    )
    training.add_argument("--allow-outside", action="store_true", help=OUTSIDE_HELP)
    training.add_argument(
        "--model", help="model name (see `imgcls models`), torchvision:NAME, or your own module: mypkg.module:MyNet"
    )
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
    training.add_argument(
        "--time", type=duration, help="a time budget for the whole run (10m, 1h): epochs planned to fit"
    )
    training.add_argument(
        "--log",
        choices=["none", "tensorboard"],
        help="tensorboard: live event files in RUN_DIR/tensorboard ([track] extra)",
    )
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
