"""Entry point of the ``edgedl`` command: the group, its commands and the one place errors are caught."""

from __future__ import annotations

import importlib
import logging
import os
import sys
import warnings

import click

from edgedl import __version__
from edgedl.errors import EdgeDLError

# name -> "module:attribute"; modules are imported only when their command runs, so --help is fast.
COMMANDS = {
    "bench": "edgedl.cli.bench:bench_command",
    "compile": "edgedl.cli.compile:compile_command",
    "data": "edgedl.cli.data:data",
    "explore": "edgedl.cli.explore:explore_command",
    "inspect": "edgedl.cli.inspect:inspect_command",
    "keygen": "edgedl.cli.keygen:keygen",
    "models": "edgedl.cli.models:models",
    "train": "edgedl.cli.train:train",
    "optimize": "edgedl.cli.optimize:optimize",
    "quickstart": "edgedl.cli.quickstart:quickstart",
    "report": "edgedl.cli.report:report",
    "serve": "edgedl.cli.serve:serve",
    "targets": "edgedl.cli.targets:targets",
    "toolchain": "edgedl.cli.toolchain:toolchain",
}


class LazyGroup(click.Group):
    def list_commands(self, ctx):
        return sorted(COMMANDS)

    def get_command(self, ctx, name):
        if name not in COMMANDS:
            return None
        module, attr = COMMANDS[name].split(":")
        return getattr(importlib.import_module(module), attr)

    def resolve_command(self, ctx, args):
        name = args[0] if args else ""
        if name in COMMANDS or name.startswith("-"):
            return super().resolve_command(ctx, args)
        import difflib

        close = difflib.get_close_matches(name, sorted(COMMANDS), n=1, cutoff=0.6)
        hint = f"did you mean '{close[0]}'?" if close else f"the commands are: {', '.join(sorted(COMMANDS))}"
        raise click.UsageError(f"no such command '{name}'; {hint}", ctx)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="edgedl")
@click.option("-v", "--verbose", count=True, help="More diagnostics on stderr (-vv for debug).")
@click.option("--debug", is_flag=True, help="Show the traceback of an error (for bug reports).")
@click.pass_context
def cli(ctx, verbose, debug):
    """edgedl: train, optimize, compile and benchmark neural networks for edge devices.

    \b
    Start with:   edgedl quickstart
    Data sets:    edgedl data list
    Model zoo:    edgedl models
    Train:        edgedl train lenet --epochs 3 -o lenet.keras
    """
    level = logging.WARNING - 10 * verbose
    logging.basicConfig(level=max(level, logging.DEBUG), format="%(levelname)s %(name)s: %(message)s")
    ctx.obj = {"debug": debug}


def main(argv=None):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if "--debug" not in (argv if argv is not None else sys.argv[1:]):
        warnings.filterwarnings("ignore")  # library warnings are noise for users; --debug keeps them
    debug = "--debug" in (argv if argv is not None else sys.argv[1:])
    try:
        cli.main(args=argv, prog_name="edgedl", standalone_mode=False)
    except EdgeDLError as e:
        if debug:
            raise
        click.echo(f"error: {e}", err=True)
        sys.exit(e.exit_code)
    except OSError as e:  # a file that vanished or a disk that filled up while edgedl worked
        if debug:
            raise
        where = f"{e.filename}: " if e.filename else ""
        click.echo(f"error: {where}{e.strerror or e}", err=True)
        sys.exit(1)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.UsageError as e:  # a bad option or argument: one line, with where to read more
        command = e.ctx.command_path if e.ctx else "edgedl"
        click.echo(f"error: {e.format_message()} (see '{command} --help')", err=True)
        sys.exit(e.exit_code)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    sys.exit(0)


if __name__ == "__main__":
    main()
