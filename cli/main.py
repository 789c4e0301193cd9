"""Entry point of the ``geoimplicit`` command.

Commands are loaded lazily (fast start-up, and a command's heavy imports such as torch happen only when it
runs). Library errors become one line on stderr and a non-zero exit; ``-v`` shows the traceback.
"""

from __future__ import annotations

import importlib
import logging
import sys
import traceback

import click

from geoimplicit import __version__
from geoimplicit.errors import GeoImplicitError

# command name -> "module:attribute"; a command whose module is absent is simply not offered.
COMMANDS = {
    "tile": "cli.tile:tile",
    "dsm": "cli.dsm:dsm",
    "mosaic": "cli.mosaic:mosaic",
    "eval": "cli.evaluate:evaluate",
    "train": "cli.train:train",
    "nvs": "cli.nvs:nvs",
    "generate": "cli.generate:generate",
    "info": "cli.info:info",
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
        return getattr(module, attr)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.version_option(__version__, prog_name="geoimplicit")
@click.option("-v", "--verbose", count=True, help="More log output; -v also shows tracebacks on errors.")
@click.option("-q", "--quiet", is_flag=True, help="Only errors.")
@click.option(
    "--progress",
    type=click.Choice(["auto", "bar", "json", "none"]),
    default="auto",
    help="Progress display: a bar on a terminal (auto), or one JSON object a line on stdout (json, for the QGIS plugin).",
)
@click.pass_context
def cli(ctx, verbose, quiet, progress):
    """geoimplicit: DSMs from occupancy fields, novel views from multiplane images, DSM accuracy reports."""
    from cli.progress import ProgressReporter

    level = logging.ERROR if quiet else (logging.DEBUG if verbose > 1 else logging.INFO if verbose else logging.WARNING)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    ctx.obj = {"verbose": verbose, "progress": ProgressReporter(progress)}


def _wants_traceback(argv) -> bool:
    return any(a in ("--verbose",) or (a.startswith("-v") and set(a[1:]) == {"v"}) for a in argv)


def main(argv=None) -> None:
    """Run the CLI; turn errors into one line and an exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    show_tb = _wants_traceback(argv)
    json_mode = "json" in argv and "--progress" in argv
    code = 0
    try:
        cli.main(args=argv, prog_name="geoimplicit", standalone_mode=False)
    except click.exceptions.Exit as exc:
        code = exc.exit_code
    except click.Abort:
        click.echo("Error: aborted", err=True)
        code = 130
    except click.ClickException as exc:
        exc.show()
        code = exc.exit_code
    except GeoImplicitError as exc:
        if show_tb:
            traceback.print_exc()
        _report_error(str(exc), json_mode)
        code = exc.exit_code
    except KeyboardInterrupt:
        _report_error("interrupted; re-run the same command to resume", json_mode)
        code = 130
    except Exception as exc:  # an internal error: still one line unless -v
        if show_tb:
            traceback.print_exc()
        _report_error(f"internal error: {type(exc).__name__}: {exc} (run with -v for the traceback)", json_mode)
        code = 1
    sys.exit(code)


def _report_error(message: str, json_mode: bool) -> None:
    if json_mode:
        import json

        print(json.dumps({"type": "error", "message": message}), flush=True)
    click.echo(f"Error: {message}", err=True)


if __name__ == "__main__":
    main()
