"""The ``puhui`` command: one subcommand per component.

Each component owns its own ``cli.py`` with ``add_arguments(parser)``; this module only
wires them together, importing a component when its subcommand is chosen so that
``puhui gateway`` never loads the aggregator (and vice versa).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Callable, Sequence

# Explicit table of in-tree components (no scanning): subcommand -> (module, help).
COMPONENTS: dict[str, tuple[str, str]] = {
    "gateway": ("gateway.cli", "run and commission a metering gateway"),
    "aggregator": ("aggregator.cli", "verify batches, keep evidence, compute reductions"),
    "sim": ("firmware_sim.cli", "simulated meters (firmware_sim)"),
    "evidence": ("evidence.cli", "inspect and verify evidence files"),
    "verify": ("puhui.verify", "verify a statement's evidence package with a pinned aggregator key"),
    "platform": ("puhui.platform", "a platform's side: pull and verify statements from aggregators' APIs"),
    "demo": ("puhui.demo.run", "a whole site on one machine: sim -> gateway -> aggregator"),
    "pki": ("puhui.pki", "a site's private CA: broker and client certificates, passwords"),
    "broker": ("puhui.broker", "a site's Mosquitto configuration: TLS, no anonymous access, access list"),
}


def build_parser(argv: Sequence[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="puhui", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging")
    sub = parser.add_subparsers(dest="component", metavar="COMPONENT", required=True)
    wanted = next((a for a in argv if a in COMPONENTS), None)
    for name, (module, help_text) in COMPONENTS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == wanted:  # import only the component that runs
            importlib.import_module(module).add_arguments(p)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(args_list).parse_args(args_list)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    func: Callable[[argparse.Namespace], int] | None = getattr(args, "func", None)
    if func is None:
        build_parser([args.component]).parse_args([args.component, "--help"])
        return 2
    try:
        status = func(args)
        sys.stdout.flush()  # a reader that left shows up here, not in the interpreter's exit
        return status
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `puhui gateway probe ... | head`: the reader left; no traceback. Point stdout at
        # /dev/null so the interpreter's final flush does not raise again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, as a shell reports it


if __name__ == "__main__":
    sys.exit(main())
