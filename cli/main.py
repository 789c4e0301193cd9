"""Entry point of the ``geoimplicit`` command.

Commands are loaded lazily (fast start-up, and a command's heavy imports such as torch happen only when it
runs). Library errors become one line on stderr and a non-zero exit; ``-v`` shows the traceback.
"""

from __future__ import annotations

import importlib
import sys
import traceback

from pathlib import Path

import click

from cli.options import PROGRESS_HELP, PROGRESS_MODES, QUIET_HELP, VERBOSE_HELP, add_shared_options, configure_logging
from geoimplicit import __version__
from geoimplicit.errors import GeoImplicitError

# command name -> "module:attribute"; a command whose module is absent is simply not offered.
COMMANDS = {
    "tile": "cli.tile:tile",
    "dsm": "cli.dsm:dsm",
    "mosaic": "cli.mosaic:mosaic",
    "eval": "cli.evaluate:evaluate",
    "train": "cli.train:train",
    "train-refiner": "cli.train:train_refiner",
    "nvs": "cli.nvs:nvs",
    "generate": "cli.generate:generate",
    "info": "cli.info:info",
    "mesh": "cli.mesh:mesh",
    "surface": "cli.surface:surface",
}


class LazyGroup(click.Group):
    def list_commands(self, ctx):
        return sorted(name for name in COMMANDS if self._load(name, quiet=True) is not None)

    def get_command(self, ctx, name):
        return self._load(name)

    @staticmethod
    def _load(name, quiet=False):  # noqa: ARG004
        target = COMMANDS.get(name)
        if target is None:
            return None
        module_name, attr = target.split(":")
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name == module_name:  # command not installed in this build
                return None
            raise
        return add_shared_options(getattr(module, attr))


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.version_option(__version__, prog_name="geoimplicit")
@click.option("-v", "--verbose", count=True, help=VERBOSE_HELP + " Also after the command.")
@click.option("-q", "--quiet", is_flag=True, help=QUIET_HELP)
@click.option("--progress", type=click.Choice(PROGRESS_MODES), default="auto", help=PROGRESS_HELP)
@click.pass_context
def cli(ctx, verbose, quiet, progress):
    """geoimplicit: DSMs from occupancy fields, novel views from multiplane images, DSM accuracy reports."""
    from cli.progress import ProgressReporter

    configure_logging(verbose, quiet)
    ctx.ensure_object(dict).update(verbose=verbose, quiet=quiet, progress=ProgressReporter(progress))


def _wants_traceback(argv) -> bool:
    """-v anywhere on the command line (used when the error comes before the options were parsed)."""
    return any(a == "--verbose" or (a.startswith("-v") and set(a[1:]) == {"v"}) for a in argv)


def main(argv=None) -> None:
    """Run the CLI; turn errors into one line and an exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    state: dict = {}  # filled by the options (-v, --progress) wherever they stand
    code = 0
    try:
        cli.main(args=argv, prog_name="geoimplicit", standalone_mode=False, obj=state)
    except click.exceptions.Exit as exc:
        code = exc.exit_code
    except click.Abort:
        click.echo("Error: aborted", err=True)
        code = 130
    except click.ClickException as exc:
        exc.show()
        code = exc.exit_code
    except GeoImplicitError as exc:
        _traceback(state, argv)
        _report_error(str(exc), state)
        code = exc.exit_code
    except KeyboardInterrupt:
        _report_error("interrupted; re-run the same command to resume", state)
        code = 130
    except Exception as exc:  # an internal error: still one line unless -v
        _traceback(state, argv)
        _report_error(_internal_message(exc, argv), state)
        code = 1
    sys.exit(code)


def _traceback(state: dict, argv) -> None:
    if state.get("verbose", 0) > 0 or ("verbose" not in state and _wants_traceback(argv)):
        traceback.print_exc()


def _internal_message(exc: Exception, argv) -> str:
    from geoimplicit.outputs import is_disk_full

    where = _output_argument(argv) or "."
    if is_disk_full(exc, where):
        folder = Path(where).resolve()
        folder = folder if folder.is_dir() else folder.parent
        return (f"{folder}: disk full while writing ({type(exc).__name__}: {exc}). free some space on that disk "
                "(or write elsewhere with -o) and run the command again (a DSM run resumes)")
    return f"internal error: {type(exc).__name__}: {exc} (run with -v for the traceback)"


def _output_argument(argv) -> str | None:
    for i, a in enumerate(argv[:-1]):
        if a in ("-o", "--output"):
            return argv[i + 1]
    return next((a.split("=", 1)[1] for a in argv if a.startswith("--output=")), None)


def _report_error(message: str, state: dict) -> None:
    progress = state.get("progress")
    if getattr(progress, "mode", None) == "json":
        import json

        print(json.dumps({"type": "error", "message": message}), flush=True)
    click.echo(f"Error: {message}", err=True)


if __name__ == "__main__":
    main()
