"""The ``cryorient`` command: an explicit registry of subcommands."""

from __future__ import annotations

import signal
import sys
import threading

from ..errors import CryorientError
from . import (
    demo,
    distances,
    export_relion,
    inspect_cmd,
    reconstruct,
    recover,
    run,
    simulate,
    structures,
    train,
)
from .common import HelpFormatter, OneLineParser

# name -> module with add_parser(subparsers) and run(args) -> int
COMMANDS = {
    "demo": demo,
    "run": run,
    "simulate": simulate,
    "train": train,
    "distances": distances,
    "export-relion": export_relion,
    "structures": structures,
    "inspect": inspect_cmd,
    "recover": recover,
    "reconstruct": reconstruct,
}


def build_parser() -> OneLineParser:
    parser = OneLineParser(
        prog="cryorient",
        description="Recover the orientations of single-particle cryo-EM projections (gold-standard "
                    "refinement from the reference you have, or the original learned-distance method) and "
                    "reconstruct the density; RELION files in and out.",
        formatter_class=HelpFormatter,
    )
    from .. import __version__

    parser.add_argument("--version", action="version", version=f"cryorient {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=OneLineParser)
    sub.required = True
    parser.subparsers = {name: module.add_parser(sub, name) for name, module in COMMANDS.items()}
    return parser


class Terminated(BaseException):
    """SIGTERM, turned into an exception so that staged outputs are cleaned up on the way out."""


def _terminate(signum, frame):
    raise Terminated()


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _terminate)
    try:
        if getattr(args, "config", None):  # run/demo: the YAML supplies defaults, flags override
            from .run import apply_config_file

            command = args.command
            args = apply_config_file(parser.subparsers[command], argv[argv.index(command) + 1:])
            args.command = command
        return int(args.func(args) or 0)
    except CryorientError as exc:
        print(f"cryorient {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"cryorient {args.command}: interrupted", file=sys.stderr)
        return 130
    except Terminated:
        print(f"cryorient {args.command}: terminated", file=sys.stderr)
        return 143
    except OSError as exc:  # an unwritable --outdir, a full disk, ...
        where = f" {exc.filename}" if getattr(exc, "filename", None) else ""
        print(f"cryorient {args.command}: error: cannot read or write{where}: {exc.strerror or exc} "
              "(check the path and its permissions)", file=sys.stderr)
        return 2
    except BrokenPipeError:  # e.g. `cryorient structures | head`
        sys.stderr.close()
        return 0


def entry_point() -> None:
    sys.exit(main())
