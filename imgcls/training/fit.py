"""`fit(config, run_dir)`: the whole of `imgcls train`, wired from the training wing's parts.

prepare (data, model, optimizer, schedule; imgcls.training.run) -> the linear probe as epoch 0
when fine-tuning -> the epochs (imgcls.training.epochs, with the supervised step of
imgcls.training.loop) -> the best checkpoint's final metrics, metrics.json and report.html.
A classic model is one fit (imgcls.training.classic); unlabeled images take the
semi-supervised step through the same epochs (imgcls.training.semi).
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import torch

from imgcls.config import Config, load_config, save_config
from imgcls.data.loader import cache_tensors, steps_per_epoch
from imgcls.device import resolve_device
from imgcls.errors import CheckpointError, ConfigError
from imgcls.files import exclusive_use
from imgcls.models.registry import is_classic
from imgcls.training import distributed
from imgcls.training.checks import check_model_config
from imgcls.training.classic import fit_classic_run
from imgcls.training.epochs import FitResult, finish_run, train_epochs
from imgcls.training.loop import supervised_epoch
from imgcls.training.outputs import write_outputs
from imgcls.training.plan import plan_epochs
from imgcls.training.probe import fit_linear_probe, pooled_features
from imgcls.training.run import Optimisation, RunSetup, build_optimisation, eval_model, prepare_setup
from imgcls.training.semi import fit_semi_run
from imgcls.training.state import clear_temporaries, fresh_start, history_row, resume_point, save_epoch, write_history
from imgcls.training.tracking import Tracker, open_tracker
from imgcls.training.validate import ValidatedEpoch, validate_epoch

log = logging.getLogger(__name__)


def _log_to_file(run_dir: Path) -> logging.Handler:
    handler = logging.FileHandler(run_dir / "train.log", encoding="utf-8", errors="backslashreplace")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    handler.setLevel(logging.INFO)
    logging.getLogger("imgcls").addHandler(handler)
    return handler


def fit(
    config: Config | None,
    run_dir: Path,
    *,
    resume: bool = False,
    device: str | None = None,
    notes: Sequence[str] = (),
) -> FitResult:
    """Train a model as `config` says, writing everything of the run into run_dir.

    With resume, the run continues from run_dir/last.safetensors with run_dir/config.yaml
    (config may then be None), on `device` when given instead of the saved train.device.
    notes: lines logged first, so that train.log keeps them too (how the CLI chose defaults)."""
    run_dir = Path(run_dir)
    if resume:
        if not (run_dir / "last.safetensors").is_file():
            raise CheckpointError(f"nothing to resume: {run_dir / 'last.safetensors'} does not exist.")
        config = load_config(run_dir / "config.yaml")
        if device is not None:
            config = replace(config, train=replace(config.train, device=device))
    elif config is None:
        raise ConfigError("fit needs a config unless it resumes a run.")
    check_model_config(config)  # before the run folder is made: a refused run leaves nothing behind
    distributed.init_from_environment(resolve_device(config.train.device))
    if not distributed.is_main():  # rank 0 alone writes the run's files and log
        return _fit(config, run_dir, resume)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(
            f"cannot create the run folder {run_dir}: {err.strerror or err}. Choose another --out."
        ) from None
    # One process per run folder for the whole run: two would interleave train.log and
    # overwrite each other's checkpoints (two --resume would also delete each other's files).
    with exclusive_use(run_dir, "a training run"):
        return _fit_locked(config, run_dir, resume, notes)


def _fit_locked(config: Config, run_dir: Path, resume: bool, notes: Sequence[str]) -> FitResult:
    if resume:
        clear_temporaries(run_dir)
        log.info("resuming %s with its saved config.yaml", run_dir)
    elif (run_dir / "last.safetensors").exists():
        raise ConfigError(f"{run_dir} already holds a run. Pass --resume to continue it, or choose another --out.")
    if not resume:  # a resumed run keeps its file: rewriting it could only lose it to a kill
        save_config(config, run_dir / "config.yaml")
    handler = _log_to_file(run_dir)
    logger = logging.getLogger("imgcls")
    level = logger.level
    if not level or level > logging.INFO:  # train.log records the epochs even when called from Python
        logger.setLevel(logging.INFO)
    for note in notes:
        log.info("%s", note)
    try:
        return _fit(config, run_dir, resume)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        handler.close()


def _fit(config: Config, run_dir: Path, resume: bool) -> FitResult:
    started = time.perf_counter()
    tc = config.train
    if tc.threads:
        torch.set_num_threads(tc.threads)
    torch.manual_seed(tc.seed)
    single = "a classic model" if is_classic(config.model.name) else "--unlabeled" if config.semi.unlabeled else None
    if single and distributed.world_size() > 1:  # each process would fit and write on its own
        raise ConfigError(f"{single} trains in one process; run it without torchrun or --devices.")
    if is_classic(config.model.name):  # a one-shot fit, no epochs
        fitted = fit_classic_run(config, run_dir)
        write_history(run_dir / "history.csv", fitted.history)
        summary = {**fitted.summary, "run seconds": round(time.perf_counter() - started, 1)}
        write_outputs(
            run_dir, fitted.metrics, fitted.history, summary, val=fitted.val, probs=fitted.val_probs, train=fitted.train
        )
        return FitResult(run_dir, fitted.metrics, fitted.history, run_dir / "best.safetensors")
    if config.semi.unlabeled:  # labelled + unlabeled images: the same epochs, another step
        return fit_semi_run(config, run_dir, resume, started)
    tracker = open_tracker(tc.log, run_dir)  # before decoding: a missing extra fails at once
    try:
        return _fit_epochs(config, run_dir, resume, started, tracker)
    finally:
        tracker.close()


def _fit_epochs(config: Config, run_dir: Path, resume: bool, started: float, tracker: Tracker) -> FitResult:
    tc = config.train
    setup = prepare_setup(config)
    batches = steps_per_epoch(len(setup.train), tc.batch_size)
    deadline = None
    if tc.time_budget and not resume:  # a resumed run keeps the epochs planned when it started
        setup = plan_epochs(setup, tc.time_budget - (time.perf_counter() - started), batches)
        deadline = started + tc.time_budget
        if distributed.is_main():
            save_config(setup.config, run_dir / "config.yaml")  # the planned epochs, for --resume
    opt = build_optimisation(setup, batches)
    opt = replace(opt, ddp=distributed.wrap(setup.model, sync_bn=tc.sync_bn, device=setup.device))
    start = resume_point(run_dir, setup, opt) if resume else fresh_start()
    train = None if setup.stream is not None else cache_tensors(setup.train)  # streamed: read as it trains
    val = cache_tensors(setup.val)
    last_epoch = setup.config.train.epochs  # as planned for a time budget
    probed = None  # the linear probe's validation
    if not resume and config.transfer.linear_probe:
        best_acc, probed = probe_epoch(run_dir, setup, opt, start.history, train, val)
        start = replace(start, best_acc=best_acc)
        if start.history and config.transfer.freeze_backbone and not config.transfer.unfreeze_after:
            # The head of a frozen network is a convex problem the probe solved exactly; epochs
            # of gradient steps would only approach the same classifier again.
            log.info("frozen backbone: the fitted classifier is final (set transfer.linear_probe=false to train it)")
            last_epoch = 0
    one_epoch = functools.partial(supervised_epoch, setup, train)
    last = train_epochs(
        run_dir, setup, opt, start, val, one_epoch, last_epoch=last_epoch, tracker=tracker, deadline=deadline
    )
    if setup.stream is not None:  # each process met the broken images of its own shards
        setup.train.skipped[:] = distributed.merge_lists(setup.train.skipped, key="path")
    train_images = None if train is None else train[0]
    return finish_run(run_dir, setup, opt, start.history, val, started, tracker, train_images, last or probed)


def probe_epoch(
    run_dir: Path, setup: RunSetup, opt: Optimisation, history: list[dict], train: tuple | None, val: tuple
) -> tuple[float, ValidatedEpoch | None]:
    """Epoch 0: the classifier fitted by logistic regression on the frozen network's features
    (imgcls.training.probe), evaluated and saved like any epoch, so the best checkpoint is never
    worse on validation than the probe alone. Returns the best validation score so far and the
    probe's validation (None when there was no probe)."""
    if train is None or setup.multilabel:
        log.info("linear probe skipped: it needs decoded single-label training images")
        return -1.0, None
    started, tc = time.perf_counter(), setup.config.train
    images, labels = train
    features = pooled_features(
        setup.model,
        images,
        setup.preprocessing,
        batch_size=tc.eval_batch_size,
        device=setup.device,
        autocast_dtype=setup.autocast_dtype,
        channels_last=tc.channels_last,
    )
    if not fit_linear_probe(setup.model, features, labels.numpy(), setup.config.transfer.probe_c):
        return -1.0, None
    if opt.ema is not None:
        opt.ema.set(setup.model)  # the average starts from the fitted head, not the random one
    with torch.no_grad():
        head = setup.model.get_classifier()
        logits = head(torch.from_numpy(features).to(head.weight.device, head.weight.dtype)).float().cpu()
    train_loss = torch.nn.functional.cross_entropy(logits, labels).item()
    train_acc = (logits.argmax(1) == labels).float().mean().item()
    validated = validate_epoch(setup, eval_model(setup, opt), val, 0)
    val_loss, val_acc = validated.loss, validated.score
    seconds = time.perf_counter() - started
    history.append(history_row(0, (train_loss, train_acc), (val_loss, val_acc), 0.0, seconds))
    log.info(
        "epoch 0 (linear probe)  train loss %.4f acc %.4f  val loss %.4f acc %.4f  %.1f s",
        train_loss,
        train_acc,
        val_loss,
        val_acc,
        seconds,
    )
    if not distributed.is_main():
        return val_acc, validated
    return save_epoch(run_dir, setup, opt, history, -1.0), validated
