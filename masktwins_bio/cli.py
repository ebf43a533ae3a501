"""The ``masktwins-bio`` console script: one verb per job, each in ``masktwins_bio/commands``.

This module only parses and dispatches. Every verb module exposes ``register(subparsers)``, which
adds its parser and sets ``func`` to a callable taking the parsed arguments and returning an exit
status. Errors the user can fix (``MaskTwinsError``) print as one line and exit 2; ``--debug``
re-raises them with the traceback.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from .errors import MaskTwinsError
from .train.launch import rank_error_file

# Verb modules under masktwins_bio.commands, in the order `--help` lists them.
VERBS = ["demo", "train", "predict", "evaluate", "segment", "convert", "datasets", "download"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="masktwins-bio",
        description="Adapt EM segmentation networks to unlabelled volumes with MaskTwins.")
    parser.add_argument("--debug", action="store_true",
                        help="show the full traceback of errors instead of one line")
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    sub.required = True
    for verb in VERBS:
        try:
            module = importlib.import_module(f"masktwins_bio.commands.{verb}")
        except ModuleNotFoundError as err:
            if err.name == f"masktwins_bio.commands.{verb}":
                continue  # verb not shipped in this build
            raise
        module.register(sub)
    return parser


def sentence(err: MaskTwinsError) -> str:
    """The error's own sentence. An error raised in a DataLoader worker reaches the main process
    re-raised by torch as ``type(err)("Caught … in DataLoader worker process N.\nOriginal
    Traceback …")``; its sentence is what follows the last ``module.Class: `` of that text."""
    text = str(err)
    marker = f"\n{type(err).__module__}.{type(err).__qualname__}: "
    if text.startswith("Caught ") and marker in text:
        return text.rpartition(marker)[2].strip()
    return text


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    # `--debug` may also follow the verb; argparse only knows it before, so lift it out.
    debug = "--debug" in argv
    if debug:
        argv = [a for a in argv if a != "--debug"]
    args, extra = parser.parse_known_args(argv)
    # argparse gives a nargs="*" positional only its first run of words, so key=value overrides
    # placed between options (`train ... iters=10 --dims 3 uda.ema=0.99`) come back unparsed;
    # they are overrides all the same, in command-line order.
    if extra and hasattr(args, "overrides") and all(
            "=" in a and not a.startswith("-") for a in extra):
        args.overrides, extra = list(args.overrides) + extra, []
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    # verbs that re-launch themselves (train --gpus) need the command line
    args.argv = argv + (["--debug"] if debug else [])
    report = rank_error_file()   # a rank of `train --gpus N`: its launcher speaks for it
    try:
        return int(args.func(args) or 0)
    except MaskTwinsError as err:
        if debug:
            raise
        if report is not None:
            report.write_text(sentence(err))
        else:
            print(f"masktwins-bio: error: {sentence(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if report is None:
            print("masktwins-bio: interrupted; train, predict and convert continue where they "
                  "stopped with --resume.", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
