"""Common parts of the geoimplicit algorithms: turning QGIS parameters into CLI options, and running the CLI."""

import os
import shlex

from qgis.core import (
    QgsCoordinateReferenceSystem,
    QgsProcessing,
    QgsProcessingAlgorithm,
    QgsProcessingContext,
    QgsProcessingException,
    QgsProcessingParameterCrs,
    QgsProcessingParameterDefinition,
    QgsProcessingParameterEnum,
    QgsProcessingParameterExtent,
    QgsProcessingParameterFeatureSource,
    QgsProcessingParameterNumber,
    QgsProcessingParameterString,
)

from . import runner
from .settings import configured_executable
from .styling import DsmStyler

DEVICES = ["auto", "cpu", "cuda"]


class GeoImplicitAlgorithm(QgsProcessingAlgorithm):
    """Base class: subclasses define ``NAME``, ``DISPLAY``, ``GROUP``, ``HELP``, parameters and ``build_args``."""

    NAME = ""
    DISPLAY = ""
    GROUP = ""
    HELP = ""
    COMMAND = ""  # the CLI command, e.g. "dsm" or "nvs fit"
    OPTION_PARAMS = {}  # CLI option -> parameter name, to translate the CLI's hints ("pass --reproject")

    # -- identity --------------------------------------------------------------------------------------------
    def name(self):
        return self.NAME

    def displayName(self):  # noqa: N802
        return self.DISPLAY

    def group(self):
        return self.GROUP

    def groupId(self):  # noqa: N802
        return self.GROUP.lower().replace(" ", "_")

    def shortHelpString(self):  # noqa: N802
        return (
            f"{self.HELP}<p>Runs <code>geoimplicit {self.COMMAND}</code> as a subprocess (the executable is set "
            "under Settings &gt; Options &gt; Processing &gt; Providers &gt; geoimplicit; empty = found on PATH). "
            "The command line is shown in the log so it can be re-run in a terminal.</p>"
        )

    def createInstance(self):  # noqa: N802
        return type(self)()

    # -- shared parameters -----------------------------------------------------------------------------------
    def add_aoi_parameters(self):
        self.addParameter(
            QgsProcessingParameterFeatureSource(
                "AOI", "Area of interest (polygons)", [QgsProcessing.TypeVectorPolygon], optional=True,
            )
        )
        self.addParameter(QgsProcessingParameterExtent("EXTENT", "Area of interest as an extent", optional=True))

    def add_crs_parameter(self):
        self.addParameter(
            QgsProcessingParameterCrs(
                "CRS", "Working CRS (projected; empty = the inputs' CRS)", optional=True,
            )
        )

    def add_advanced(self, param):
        param.setFlags(param.flags() | QgsProcessingParameterDefinition.FlagAdvanced)
        self.addParameter(param)

    def add_device_parameter(self):
        self.add_advanced(QgsProcessingParameterEnum("DEVICE", "Compute device", options=DEVICES, defaultValue=0))

    def add_extra_args_parameter(self):
        self.add_advanced(
            QgsProcessingParameterString(
                "EXTRA_ARGS", "Additional command-line options (as typed after the command)", optional=True,
            )
        )

    def add_number(self, name, label, default, *, minimum=None, maximum=None, optional=False, advanced=False,
                   integer=False):
        param = QgsProcessingParameterNumber(
            name, label, QgsProcessingParameterNumber.Integer if integer else QgsProcessingParameterNumber.Double,
            defaultValue=default, optional=optional,
        )
        if minimum is not None:
            param.setMinimum(minimum)
        if maximum is not None:
            param.setMaximum(maximum)
        if advanced:
            self.add_advanced(param)
        else:
            self.addParameter(param)

    # -- parameter -> CLI option -----------------------------------------------------------------------------
    @staticmethod
    def crs_arg(crs: QgsCoordinateReferenceSystem) -> str:
        authid = crs.authid()
        if authid and authid.upper().startswith(("EPSG:", "ESRI:", "IGNF:")):
            return authid
        return crs.toWkt(QgsCoordinateReferenceSystem.WKT_PREFERRED)

    def crs_args(self, parameters, context, name="CRS"):
        if not parameters.get(name):
            return []
        crs = self.parameterAsCrs(parameters, name, context)
        return ["--crs", self.crs_arg(crs)] if crs.isValid() else []

    def raster_path(self, parameters, name, context, *, required=True):
        """The file path behind a raster layer parameter."""
        layer = self.parameterAsRasterLayer(parameters, name, context)
        if layer is None:
            if required:
                raise QgsProcessingException(f"{self.parameterDefinition(name).description()}: no raster layer given")
            return None
        source = layer.source()
        path = source.split("|")[0]
        if layer.providerType() != "gdal" or not os.path.isfile(path):
            raise QgsProcessingException(
                f"{layer.name()}: geoimplicit reads raster files (GeoTIFF); this layer's source is not a file "
                f"({source}). Export it with Raster > Conversion > Translate first"
            )
        return path

    def aoi_args(self, parameters, context, feedback, *, required=True):
        """``--aoi FILE`` (a polygon layer, exported to a temporary GeoPackage when needed) or ``--bbox ...``."""
        if parameters.get("AOI"):
            path = self.parameterAsCompatibleSourceLayerPath(
                parameters, "AOI", context, ["gpkg", "geojson", "shp"], "gpkg", feedback
            )
            if path:
                return ["--aoi", path.split("|")[0]]
        if parameters.get("EXTENT"):
            rect = self.parameterAsExtent(parameters, "EXTENT", context)
            if not rect.isNull() and not rect.isEmpty():
                args = ["--bbox", repr(rect.xMinimum()), repr(rect.yMinimum()), repr(rect.xMaximum()),
                        repr(rect.yMaximum())]
                crs = self.parameterAsExtentCrs(parameters, "EXTENT", context)
                if crs.isValid():
                    args += ["--bbox-crs", self.crs_arg(crs)]
                return args
        if required:
            raise QgsProcessingException(
                "no area of interest: give a polygon layer (Area of interest) or an extent"
            )
        return []

    def extra_args(self, parameters, context):
        text = self.parameterAsString(parameters, "EXTRA_ARGS", context) if "EXTRA_ARGS" in parameters else ""
        try:
            return shlex.split(text or "")
        except ValueError as exc:
            raise QgsProcessingException(f"Additional command-line options: {exc}") from exc

    def device_args(self, parameters, context):
        return ["--device", DEVICES[self.parameterAsEnum(parameters, "DEVICE", context)]]

    def optional_device_args(self, parameters, context):
        """``--device cpu|cuda``, or nothing for auto (the CLI's default)."""
        return self.device_args(parameters, context) if self.parameterAsEnum(parameters, "DEVICE", context) else []

    # -- running ---------------------------------------------------------------------------------------------
    def run_geoimplicit(self, args, feedback, outputs=()):
        """Run the CLI with progress and cancellation bound to ``feedback``; return the announced outputs."""
        try:
            executable = runner.find_executable(configured_executable())
        except runner.CouldNotStartError as exc:
            raise QgsProcessingException(str(exc)) from exc
        feedback.pushCommandInfo(runner.format_command(runner.build_command(executable, args)))
        last = {"stage": None}

        def on_progress(fraction, stage, done, total, message):
            if stage != last["stage"] or message:
                text = f"{stage}: {message}" if message and stage else (message or stage)
                if text:
                    feedback.setProgressText(text)
                last["stage"] = stage
            feedback.setProgress(100.0 * fraction)

        def on_log(line):
            if line.startswith(("WARNING", "Warning")):
                feedback.pushWarning(line)
            else:
                feedback.pushConsoleInfo(line)

        try:
            result = runner.run_cli(
                args, executable=executable, on_progress=on_progress, on_log=on_log,
                is_cancelled=feedback.isCanceled, outputs=outputs,
            )
        except runner.FailedError as exc:
            message = exc.message
            if "No such command" in message:
                message += (f" (this geoimplicit has no '{self.COMMAND}' command: update geoimplicit, or set the "
                            "executable of a newer install in the Processing settings)")
            raise QgsProcessingException(f"geoimplicit failed: {message}{self._option_hints(message)}") from exc
        except runner.RunError as exc:
            raise QgsProcessingException(str(exc)) from exc
        feedback.setProgress(100.0)
        feedback.pushInfo(f"geoimplicit {self.COMMAND} finished in {result.seconds:.1f} s")
        return result.outputs

    def _option_hints(self, message):
        """``" (here: --reproject is the parameter 'Reproject ...')"`` for the options a CLI message names."""
        hints = []
        for option, name in self.OPTION_PARAMS.items():
            definition = self.parameterDefinition(name)
            if definition is not None and option in message.split():
                hints.append(f"{option} is the parameter '{definition.description()}'")
        return f" (here: {'; '.join(hints)})" if hints else ""

    @staticmethod
    def load_dsm_on_completion(path, context, name="DSM"):
        """Style the DSM output as elevation when QGIS loads it into the project."""
        if context.willLoadLayerOnCompletion(path):
            details = context.layerToLoadOnCompletionDetails(path)
            details.name = name
            details.setPostProcessor(DsmStyler.create())

    @staticmethod
    def load_layer_on_completion(path, context, name, output_name):
        """Load an extra (non-destination) output layer into the project, if there is one."""
        if path and os.path.exists(path.split("|")[0]) and context.project() is not None:
            context.addLayerToLoadOnCompletion(
                path, QgsProcessingContext.LayerDetails(name, context.project(), output_name)
            )
