"""The ``fleetkit`` command line.

    fleetkit demo           a distributed CTR job on this host (2 pservers + 2 trainers), AUC, plot, model
    fleetkit check          verify the installation (exit 0 when it works, 1 otherwise)
    fleetkit launch ...     run a training script as a job of pservers and workers on this host
    fleetkit operator       run the Kubernetes PaddleJob operator
    fleetkit submit ...     run a training script as a PaddleJob on Kubernetes and follow it

Each subcommand is a function that adds its parser to the subparsers and sets
``func`` (called with the parsed args, returns the exit code); new subcommands
(``launch`` ...) add themselves to ``SUBCOMMANDS``.
"""
from __future__ import annotations

import argparse
import sys
from typing import Any, Callable, Sequence

__all__ = ["SUBCOMMANDS", "build_parser", "main"]


def _add_check(sub: Any) -> None:
    p = sub.add_parser("check", help="verify the installation",
                       description="Build, differentiate and update a tiny model (on the GPU when one "
                                   "is visible), compare with numpy, and round-trip it through the "
                                   "model formats. Exits 0 on success, 1 on failure.")
    p.set_defaults(func=_run_check)


def _run_check(args: argparse.Namespace) -> int:
    from .install_check import run_check
    try:
        run_check()
    except Exception:  # noqa: BLE001 - run_check has already printed what is broken
        return 1
    return 0


def _add_demo(sub: Any) -> None:
    from .demo.run import add_demo_parser
    add_demo_parser(sub)


def _add_launch(sub: Any) -> None:
    from .fleet.launch import add_launch_parser
    add_launch_parser(sub)


def _add_operator(sub: Any) -> None:
    from .operator_k8s.cli import add_operator_parser
    add_operator_parser(sub)


def _add_submit(sub: Any) -> None:
    from .operator_k8s.cli import add_submit_parser
    add_submit_parser(sub)


#: subcommand builders, in help order: ``add(subparsers)`` adds one subcommand
SUBCOMMANDS: list[Callable[[Any], None]] = [_add_demo, _add_check, _add_launch, _add_operator, _add_submit]


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every subcommand of ``SUBCOMMANDS``."""
    from . import __version__
    parser = argparse.ArgumentParser(prog="fleetkit", description="fleetkit: distributed training for "
                                     "static-graph models with Paddle 1.4 fluid names.")
    parser.add_argument("--version", action="version", version=f"fleetkit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in SUBCOMMANDS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``fleetkit`` console script; returns the exit code."""
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv:  # a bare `fleetkit`: say what there is, not "the following arguments are required"
        parser.print_help()
        return 0
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
