"""Shared, validating Click options. Commands import the library inside their body for fast start-up."""

from __future__ import annotations

import logging
import sys

import click

PROGRESS_MODES = ("auto", "bar", "log", "json", "none")
VERBOSE_HELP = "More log output; -v also shows tracebacks on errors."
QUIET_HELP = "Only errors."
PROGRESS_HELP = ("Progress display: auto = a bar on a terminal, otherwise log = a line on stderr every 10 s "
                 "(GEOIMPLICIT_PROGRESS_SECONDS) with the time left; json = one JSON object a line on stdout (for "
                 "the QGIS plugin); none.")


def configure_logging(verbose: int, quiet: bool) -> None:
    """Log level from -v/-q: WARNING by default, INFO with -v, DEBUG with -vv, ERROR with -q."""
    level = logging.ERROR if quiet else (logging.DEBUG if verbose > 1 else logging.INFO if verbose else logging.WARNING)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    logging.getLogger().setLevel(level)


def cli_state(ctx: click.Context) -> dict:
    """The run's shared state (verbosity, progress display), made on first use."""
    from cli.progress import ProgressReporter

    state = ctx.ensure_object(dict)
    state.setdefault("verbose", 0)
    state.setdefault("quiet", False)
    if "progress" not in state:
        state["progress"] = ProgressReporter("auto")
    return state


def _verbose_given(ctx, param, value):
    if value:
        state = cli_state(ctx)
        state["verbose"] += value
        configure_logging(state["verbose"], state["quiet"])


def _quiet_given(ctx, param, value):
    if value:
        state = cli_state(ctx)
        state["quiet"] = True
        configure_logging(state["verbose"], True)


def _progress_given(ctx, param, value):
    if value is not None:
        from cli.progress import ProgressReporter

        cli_state(ctx)["progress"] = ProgressReporter(value)


def shared_options() -> list[click.Option]:
    """-v/-q/--progress for a subcommand, so that they work after it too (``geoimplicit dsm -v ...``)."""
    return [
        click.Option(["-v", "--verbose"], count=True, expose_value=False, callback=_verbose_given, help=VERBOSE_HELP,
                     show_default=False),
        click.Option(["-q", "--quiet"], is_flag=True, expose_value=False, callback=_quiet_given, help=QUIET_HELP,
                     show_default=False),
        click.Option(["--progress"], type=click.Choice(PROGRESS_MODES), default=None, expose_value=False,
                     callback=_progress_given, help=PROGRESS_HELP + " Same as before the command."),
    ]


def add_shared_options(command: click.Command) -> click.Command:
    """Give ``command`` (and a group's subcommands) the shared options, once."""
    names = {name for p in command.params for name in getattr(p, "opts", ())}
    if "--verbose" not in names:
        command.params.extend(shared_options())
    for sub in getattr(command, "commands", {}).values():
        add_shared_options(sub)
    return command

overwrite_option = click.option(
    "--overwrite", is_flag=True, help="Replace this command's existing outputs (never done without this flag); other files in an "
         "output folder are never touched."
)

resolution_option = click.option(
    "--resolution", "resolution", type=click.FloatRange(min=0, min_open=True), required=True,
    help="Output pixel size in units of the working CRS (metres, or feet for a feet-based CRS).",
)

crs_option = click.option(
    "--crs", "crs", default=None, metavar="CRS",
    help="Working CRS (EPSG:2154, a WKT file, ...). Default: the inputs' CRS; required if they disagree.",
)

device_option = click.option(
    "--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto",
    help="Compute device; auto takes a CUDA GPU when there is one.",
)


def aoi_options(required: bool = False):
    """--aoi (polygon file) and --bbox (LEFT BOTTOM RIGHT TOP), with --aoi-crs for a bbox in another CRS."""

    def decorator(f):
        f = click.option(
            "--bbox", type=float, nargs=4, default=None, metavar="LEFT BOTTOM RIGHT TOP",
            help="Area of interest as bounds (in the working CRS unless --bbox-crs).",
        )(f)
        f = click.option(
            "--bbox-crs", default=None, metavar="CRS", help="CRS of --bbox (default: the working CRS).",
        )(f)
        f = click.option(
            "--aoi", type=click.Path(dir_okay=False), default=None,
            help="Area of interest: GeoJSON, GeoPackage or Shapefile polygons, in any CRS.",
        )(f)
        return f

    return decorator


def class_codes(ctx, param, value):
    """``--exclude-classes 7,18`` -> (7, 18); ``none`` -> (); unset -> None (the method's default)."""
    if value is None:
        return None
    if value.strip().lower() in ("none", ""):
        return ()
    try:
        codes = tuple(int(v) for v in value.replace(" ", "").split(","))
    except ValueError:
        raise click.BadParameter(f"{value!r}: give LAS class codes separated by commas (7,18) or none") from None
    if any(not 0 <= c <= 255 for c in codes):
        raise click.BadParameter(f"{value!r}: LAS class codes are 0-255")
    return codes

