"""The command line: one module per command group (train, evaluate, predict, data, retrieval,
zeroshot, weights); heavy imports inside the commands.

Exit status: 0 on success; 1 when `predict` could not read some files (the others are
still predicted); 2 when imgcls refused the input (the message says why and what to do).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from imgcls import __version__
from imgcls.cli.data import add_data_parsers
from imgcls.cli.evaluate import add_evaluate_parsers
from imgcls.cli.output import OneLineParser, PrintableFormatter
from imgcls.cli.output import print_text as _print
from imgcls.cli.predict import add_deploy_parsers, add_predict_parsers
from imgcls.cli.retrieval import add_retrieval_parsers
from imgcls.cli.train import _without_devices, add_train_parsers  # noqa: F401 - tests use _without_devices
from imgcls.cli.weights import add_weights_parsers
from imgcls.cli.zeroshot import add_zeroshot_parser
from imgcls.errors import ImgclsError

log = logging.getLogger("imgcls")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="imgcls", description="Image classification from folders of labelled images.")
    parser.add_argument("--version", action="version", version=f"imgcls {__version__}")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors on stderr")
    # -q also after the subcommand; SUPPRESS keeps a value given before it.
    common = OneLineParser(add_help=False)
    common.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_train_parsers(sub, common)
    add_evaluate_parsers(sub, common)
    add_predict_parsers(sub, common)
    add_zeroshot_parser(sub, common)
    add_weights_parsers(sub, common)
    add_deploy_parsers(sub, common)
    add_data_parsers(sub, common)
    add_retrieval_parsers(sub, common)
    return parser


class _NotImgcls(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.name != "imgcls" and not record.name.startswith("imgcls.")


def _root_handler() -> logging.Handler | None:
    """Libraries' warnings on the root logger, once. A library that calls logging.info() itself
    (open_clip does) makes Python add a root handler when the root has none (basicConfig), and
    every imgcls line, which propagates to the root, was then printed a second time. With this
    handler in place the root is never empty; imgcls's own records are left to imgcls's handler."""
    root = logging.getLogger()
    if root.handlers:  # the embedding application (or pytest) configured logging: leave it be
        return None
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(PrintableFormatter("%(name)s: %(levelname)s: %(message)s"))
    handler.setLevel(logging.WARNING)
    handler.addFilter(_NotImgcls())
    root.addHandler(handler)
    return handler


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = argv  # `train --devices N` passes the command line on to its workers
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(PrintableFormatter("imgcls: %(message)s"))
    handler.setLevel(logging.WARNING if args.quiet else logging.INFO)  # the run's train.log keeps INFO
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    root_handler = _root_handler()
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
        if root_handler is not None:
            logging.getLogger().removeHandler(root_handler)


if __name__ == "__main__":
    sys.exit(main())
