"""The `charstudio` command line.

Each subcommand lives in a module of this package with `register(subparsers)`; the module
adds its parser and sets `func(args) -> int`. Errors meant for users (bad input, missing
files) print as one line and exit with code 2; `--debug` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
import warnings

# Subcommand modules, in the order `--help` lists them.
COMMAND_MODULES = [
    "charstudio.cli.generate_commands",
    "charstudio.cli.pose_commands",
    "charstudio.cli.sheet_workflow_commands",
    "charstudio.cli.train_commands",
    "charstudio.cli.inpaint_commands",
    "charstudio.cli.cast_commands",
    "charstudio.cli.card_commands",
    "charstudio.cli.verify_commands",
    "charstudio.cli.story_commands",
    "charstudio.cli.finish_commands",
]


def build_parser() -> argparse.ArgumentParser:
    from charstudio import __version__

    parser = argparse.ArgumentParser(
        prog="charstudio",
        description="Character design with Stable Diffusion: cards, styles, poses, LoRAs. "
                    "Runs offline on the built-in 'mini' model; use --model sd15 (or a checkpoint) on a GPU for real pictures.")
    parser.add_argument("--version", action="version", version=f"charstudio {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # diffusers/transformers chatter is noise on a command line unless asked for.
    for noisy in ("diffusers", "transformers", "huggingface_hub", "accelerate"):
        logging.getLogger(noisy).setLevel(logging.INFO if verbose else logging.ERROR)
    if not verbose:
        # diffusers and transformers keep their own handlers; their environment switches quiet
        # them without importing them here (listing commands stay fast).
        import os

        os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

    def one_line(message, category, filename, lineno, file=None, line=None):
        print(f"warning: {message}", file=sys.stderr)

    warnings.showwarning = one_line
    if not verbose:
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    _setup_logging(args.verbose)
    ok = False
    try:
        code = int(args.func(args) or 0)
        ok = code == 0
        return code
    except KeyboardInterrupt:
        print("charstudio: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head` and closed: not an error
        sys.stderr.close()
        return 0
    except Exception as exc:  # noqa: BLE001 - the CLI's job is to turn errors into one line
        from charstudio.errors import describe, is_user_error

        if args.debug:
            raise
        hint = "" if is_user_error(exc) else " (run with --debug for the traceback)"
        print(f"charstudio: error: {describe(exc)}{hint}", file=sys.stderr)
        return 2
    finally:
        _close_process_group(wait=ok)


def _close_process_group(wait: bool) -> None:
    """Under ``accelerate launch``: wait for the other processes (after a success), then tear the
    process group down. A gloo group left for the interpreter's exit can abort the process
    ("terminate called without an active exception") while another rank is still writing."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return
    try:
        import torch.distributed as dist

        if not dist.is_available() or not dist.is_initialized():
            return
        if wait:
            dist.barrier()
        dist.destroy_process_group()
    except Exception as exc:  # noqa: BLE001 - tearing down must not hide the command's own result
        logging.getLogger("charstudio.cli").warning("could not close the process group cleanly: %s", exc)


if __name__ == "__main__":
    sys.exit(main())
