"""One Processing algorithm per geoimplicit command."""

import json
import os

from qgis.core import (
    QgsProcessing,
    QgsProcessingException,
    QgsProcessingOutputFile,
    QgsProcessingOutputFolder,
    QgsProcessingOutputHtml,
    QgsProcessingOutputNumber,
    QgsProcessingOutputRasterLayer,
    QgsProcessingParameterBoolean,
    QgsProcessingParameterEnum,
    QgsProcessingParameterFeatureSource,
    QgsProcessingParameterFile,
    QgsProcessingParameterFolderDestination,
    QgsProcessingParameterMultipleLayers,
    QgsProcessingParameterRasterDestination,
    QgsProcessingParameterRasterLayer,
    QgsProcessingParameterString,
    QgsProcessingParameterVectorDestination,
    QgsProcessingParameterVectorLayer,
)

from .base import GeoImplicitAlgorithm
from .styling import DsmStyler, ResidualStyler

CONVENTIONS = ["geoimplicit", "demcompare"]  # eval --conventions
CONVENTION_LABELS = ["geoimplicit (default)", "demcompare (its slope classes and outlier removal)"]

METHODS = ["occupancy", "raster"]
# index 0 = the CLI's default; new entries go at the end so that saved models keep their choice
STATS = ["max", "max", "min", "mean", "median", "idw", "count", "stdev", "tin"]
STAT_LABELS = ["Default (maximum: the highest return)", "Maximum", "Minimum", "Mean", "Median",
               "Inverse distance weighting", "Point count", "Standard deviation",
               "TIN: linear on the points' triangulation at cell centres (how IGN makes its DSMs)"]
METHOD_LABELS = ["Occupancy field (neural, ImpliCity)", "Raster (cell statistics of the points)"]
LAYOUTS = ["fronto", "geo"]
LAYOUT_LABELS = ["fronto: parallel to a reference camera (ImMPI)", "geo: horizontal planes on the map grid"]
GENERATORS = ["direct", "conv", "mlp"]
EXTENTS = ["nadir", "union"]
EXTENT_LABELS = ["the most nadir view's footprint", "all train views' footprints (slower; better frame edges)"]
DSM_GROUP = "Elevation"
VIEWS_GROUP = "Novel views"


class ReconstructDsm(GeoImplicitAlgorithm):
    NAME = "dsm"
    DISPLAY = "Reconstruct DSM"
    GROUP = DSM_GROUP
    COMMAND = "dsm"
    OPTION_PARAMS = {"--crs": "CRS", "--aoi": "AOI", "--bbox": "EXTENT", "--resolution": "RESOLUTION",
                     "--tile-size": "TILE_SIZE", "--overlap": "OVERLAP", "--weights": "WEIGHTS", "--device": "DEVICE",
                     "--ortho": "ORTHO", "--points": "POINTS", "--dask-workers": "DASK_WORKERS",
                     "--scheduler": "SCHEDULER", "--workdir": "WORKDIR", "--stat": "STAT", "--method": "METHOD",
                     "--fill-max-hole": "FILL_MAX_HOLE", "--true-ortho": "TRUE_ORTHO", "--refiner": "REFINER"}
    HELP = (
        "<p>A digital surface model (GeoTIFF, float32, nodata set) from LAS/LAZ point clouds, on the exact grid "
        "given by the resolution and the area of interest.</p>"
        "<ul><li><b>Occupancy field</b>: a neural occupancy network (ImpliCity) reads the points and, optionally, "
        "one or two ortho-images, and the surface is found in every output column. Default weights ship with "
        "geoimplicit; runs on a CUDA GPU when there is one.</li>"
        "<li><b>Raster</b>: the baseline by cell statistics of the points (maximum by default), with outlier "
        "removal and hole filling.</li></ul>"
        "<p><b>Point cloud files</b>: one or more LAS/LAZ files in a projected CRS (metres or feet). "
        "<b>True orthos</b>: tick it only when every roof of the ortho-images sits on its footprint (a true ortho, "
        "made from a surface model); ordinary orthos lean away from the image centre. "
        "<b>Area of interest</b>: a polygon layer, or an extent; one of them is required. "
        "<b>Resolution</b>: pixel size in units of the working CRS. <b>Tile size</b> and <b>overlap</b> "
        "(advanced, CRS units, 0 = the method's default) set how the area is cut for processing; the result does "
        "not depend on them. The DSM is loaded with an elevation colour ramp.</p>"
    )

    def initAlgorithm(self, config=None):  # noqa: N802
        self.addParameter(
            QgsProcessingParameterMultipleLayers("POINTS", "Point cloud files (LAS/LAZ)", QgsProcessing.TypeFile)
        )
        self.addParameter(
            QgsProcessingParameterEnum("METHOD", "Method", options=METHOD_LABELS, defaultValue=0)
        )
        self.addParameter(QgsProcessingParameterRasterLayer("ORTHO", "Ortho-image, RGB (optional)", optional=True))
        self.addParameter(QgsProcessingParameterBoolean(
            "TRUE_ORTHO", "The ortho-images are true orthos: every roof on its footprint (occupancy only)",
            defaultValue=False))
        self.add_aoi_parameters()
        self.add_number("RESOLUTION", "Resolution (CRS units per pixel)", 0.5, minimum=1e-9)
        self.add_crs_parameter()
        self.add_advanced(
            QgsProcessingParameterRasterLayer("ORTHO2", "Second ortho-image: RGB or IRC (stereo, occupancy only)", optional=True)
        )
        self.add_advanced(
            QgsProcessingParameterEnum("STAT", "Cell statistic (raster method)", options=STAT_LABELS, defaultValue=0)
        )
        self.add_number("FILL_MAX_HOLE", "Fill holes up to this width (CRS units; raster method; empty = default, "
                        "0 = no filling)", None, minimum=0.0, optional=True, advanced=True)
        self.add_advanced(QgsProcessingParameterBoolean(
            "NO_OUTLIER_REMOVAL", "Keep isolated points far above/below (raster method)", defaultValue=False))
        self.add_number("TILE_SIZE", "Tile size (CRS units, 0 = method default)", 0.0, minimum=0.0, advanced=True)
        self.add_number("OVERLAP", "Tile overlap (CRS units, 0 = method default)", 0.0, minimum=0.0, advanced=True)
        self.add_advanced(
            QgsProcessingParameterFile("WEIGHTS", "Model weights (occupancy; empty = the default model)",
                                       extension="pt", optional=True)
        )
        self.add_advanced(
            QgsProcessingParameterFile("REFINER", "Height refiner weights (occupancy; empty = the shipped one, with "
                                       "the default model)", extension="pt", optional=True)
        )
        self.add_advanced(QgsProcessingParameterBoolean(
            "NO_REFINER", "No height refiner: the occupancy field's heights as read (occupancy)", defaultValue=False))
        self.add_device_parameter()
        self.add_number("DASK_WORKERS", "Run the tiles on a local Dask cluster of N processes (0 = no Dask)", 0,
                        minimum=0, integer=True, advanced=True)
        self.add_advanced(QgsProcessingParameterString(
            "SCHEDULER", "Or: address of a running Dask scheduler (tcp://HOST:8786)", optional=True))
        self.add_advanced(QgsProcessingParameterFile(
            "WORKDIR", "Work folder (resumable; empty = <output>_work beside the output)",
            behavior=QgsProcessingParameterFile.Folder, optional=True))
        self.add_extra_args_parameter()
        self.addParameter(QgsProcessingParameterRasterDestination("OUTPUT", "DSM"))
        self.addOutput(QgsProcessingOutputRasterLayer("FILLED", "Filled cells (1 = hole filled, 0 = measured)"))
        self.addOutput(QgsProcessingOutputFile("TILES", "Tile index of the run (GeoPackage)"))

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802
        points = self.parameterAsFileList(parameters, "POINTS", context)
        if not points:
            raise QgsProcessingException("Point cloud files: give at least one LAS/LAZ file")
        method = METHODS[self.parameterAsEnum(parameters, "METHOD", context)]
        output = self.parameterAsOutputLayer(parameters, "OUTPUT", context)
        args = ["dsm"]
        for path in points:
            args += ["--points", path]
        for name in ("ORTHO", "ORTHO2"):
            ortho = self.raster_path(parameters, name, context, required=False)
            if ortho:
                args += ["--ortho", ortho]
        args += self.aoi_args(parameters, context, feedback)
        args += ["--resolution", repr(self.parameterAsDouble(parameters, "RESOLUTION", context))]
        args += ["--method", method]
        args += self.crs_args(parameters, context)
        for name, option in (("TILE_SIZE", "--tile-size"), ("OVERLAP", "--overlap")):
            value = self.parameterAsDouble(parameters, name, context)
            if value > 0:
                args += [option, repr(value)]
        if method == "raster":
            stat = self.parameterAsEnum(parameters, "STAT", context)
            if stat > 0:
                args += ["--stat", STATS[stat]]
            if parameters.get("FILL_MAX_HOLE") not in (None, ""):
                args += ["--fill-max-hole", repr(self.parameterAsDouble(parameters, "FILL_MAX_HOLE", context))]
            if self.parameterAsBoolean(parameters, "NO_OUTLIER_REMOVAL", context):
                args.append("--no-outlier-removal")
        else:
            weights = self.parameterAsFile(parameters, "WEIGHTS", context)
            if weights:
                args += ["--weights", weights]
            refiner = self.parameterAsFile(parameters, "REFINER", context)
            if self.parameterAsBoolean(parameters, "NO_REFINER", context):
                args += ["--refiner", "none"]
            elif refiner:
                args += ["--refiner", refiner]
            args += self.optional_device_args(parameters, context)
            if self.parameterAsBoolean(parameters, "TRUE_ORTHO", context):
                args.append("--true-ortho")
        workers = self.parameterAsInt(parameters, "DASK_WORKERS", context)
        if workers > 0:
            args += ["--dask-workers", str(workers)]
        scheduler = (self.parameterAsString(parameters, "SCHEDULER", context) or "").strip()
        if scheduler:
            args += ["--scheduler", scheduler]
        workdir = self.parameterAsFile(parameters, "WORKDIR", context)
        if workdir:
            args += ["--workdir", workdir]
        args += self.extra_args(parameters, context)
        args += ["--overwrite", "-o", output]
        announced = self.run_geoimplicit(args, feedback, outputs=[output])
        self.load_dsm_on_completion(output, context, name=f"DSM ({method})")
        return {"OUTPUT": output, "FILLED": announced.get("filled"), "TILES": announced.get("tiles")}


class AccuracyReport(GeoImplicitAlgorithm):
    NAME = "eval"
    DISPLAY = "Accuracy report"
    GROUP = DSM_GROUP
    COMMAND = "eval"
    OPTION_PARAMS = {"--reproject": "REPROJECT", "--coregister": "COREGISTER", "--classes": "CLASSES",
                     "--tiles": "TILES", "--building-class": "BUILDING_CLASS", "--overwrite": "OUTPUT"}
    HELP = (
        "<p>Height-error statistics of a DSM against a reference DSM, as photogrammetrists expect them "
        "(demcompare, ASP geodiff): bias, median, standard deviation, MAE, RMSE, NMAD, LE68/LE90/LE95/LE99 and "
        "the fraction of cells within 0.5, 1 and 2 m; per class (optional class raster), per slope band.</p>"
        "<p>The DSM is resampled onto the reference's grid; both must be in the same CRS. <b>Co-register</b> "
        "first finds and removes a horizontal and vertical shift (Nuth and Kääb). The report folder holds "
        "report.json, report.csv, report.html (shown in the results viewer), figures, and the residual raster "
        "(DSM minus reference), which is loaded into the project.</p>"
    )

    def initAlgorithm(self, config=None):  # noqa: N802
        self.addParameter(QgsProcessingParameterRasterLayer("DSM", "DSM to evaluate"))
        self.addParameter(QgsProcessingParameterRasterLayer("REFERENCE", "Reference (ground truth) DSM"))
        self.addParameter(
            QgsProcessingParameterRasterLayer("CLASSES", "Class raster (LAS codes; optional)", optional=True)
        )
        self.addParameter(QgsProcessingParameterBoolean("COREGISTER", "Co-register before the statistics",
                                                        defaultValue=False))
        self.addParameter(QgsProcessingParameterBoolean(
            "REPROJECT", "Reproject the DSM onto the reference when their CRSs differ", defaultValue=False))
        self.add_advanced(
            QgsProcessingParameterVectorLayer("TILES", "Tile index (statistics per tile; optional)",
                                              [QgsProcessing.TypeVectorPolygon], optional=True)
        )
        self.add_number("DILATE_BUILDINGS", "Dilate the building class by (pixels)", 0, minimum=0, advanced=True,
                        integer=True)
        self.add_advanced(QgsProcessingParameterString(
            "BUILDING_CLASS", "Building class to dilate (class code; empty = LAS code 6)", optional=True))
        self.add_advanced(QgsProcessingParameterEnum(
            "CONVENTIONS", "Statistics conventions", options=CONVENTION_LABELS, defaultValue=0))
        self.add_extra_args_parameter()
        self.addParameter(QgsProcessingParameterFolderDestination("OUTPUT", "Report folder"))
        self.addOutput(QgsProcessingOutputHtml("OUTPUT_HTML", "Accuracy report"))
        self.addOutput(QgsProcessingOutputFile("REPORT_JSON", "Report (JSON)"))
        self.addOutput(QgsProcessingOutputRasterLayer("RESIDUAL", "Residual (DSM minus reference)"))
        for key, label in (("RMSE", "RMSE"), ("MAE", "MAE"), ("NMAD", "NMAD"), ("BIAS", "Bias (mean error)"),
                           ("MEDIAN_ABS_ERROR", "Median absolute error")):
            self.addOutput(QgsProcessingOutputNumber(key, label))

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802
        dsm = self.raster_path(parameters, "DSM", context)
        reference = self.raster_path(parameters, "REFERENCE", context)
        folder = self.parameterAsString(parameters, "OUTPUT", context)
        args = ["eval", dsm, reference]
        classes = self.raster_path(parameters, "CLASSES", context, required=False)
        if classes:
            args += ["--classes", classes]
        if self.parameterAsBoolean(parameters, "COREGISTER", context):
            args.append("--coregister")
        if self.parameterAsBoolean(parameters, "REPROJECT", context):
            args.append("--reproject")
        tiles = self.parameterAsVectorLayer(parameters, "TILES", context)
        if tiles is not None:
            args += ["--tiles", tiles.source().split("|")[0]]
        dilate = self.parameterAsInt(parameters, "DILATE_BUILDINGS", context)
        if dilate > 0:
            args += ["--dilate-buildings", str(dilate)]
        building = self.parameterAsString(parameters, "BUILDING_CLASS", context).strip()
        if building:
            args += ["--building-class", building]
        conventions = CONVENTIONS[self.parameterAsEnum(parameters, "CONVENTIONS", context)]
        if conventions != "geoimplicit":
            args += ["--conventions", conventions]
        args += self.extra_args(parameters, context)
        args += ["--overwrite", "-o", folder]
        announced = self.run_geoimplicit(args, feedback, outputs=[folder])
        html = announced.get("report") or announced.get("html") or os.path.join(folder, "report.html")
        report_json = announced.get("json") or os.path.join(folder, "report.json")
        residual = announced.get("residual") or _first_existing(folder, ("residual.tif", "error.tif"))
        results = {"OUTPUT": folder, "OUTPUT_HTML": html, "REPORT_JSON": report_json, "RESIDUAL": residual}
        overall = {}
        try:
            with open(report_json, encoding="utf-8") as f:
                overall = json.load(f).get("overall", {})
        except (OSError, ValueError, AttributeError):
            feedback.reportError(f"{report_json}: could not read the report's numbers", fatalError=False)
        for key, field in (("RMSE", "rmse"), ("MAE", "mae"), ("NMAD", "nmad"), ("BIAS", "bias"),
                           ("MEDIAN_ABS_ERROR", "median_abs_error")):
            value = overall.get(field)
            if isinstance(value, (int, float)):
                results[key] = float(value)
                feedback.pushInfo(f"{field}: {value:.4g}")
        if residual:
            self.load_layer_on_completion(residual, context, "Residual (DSM minus reference)", "RESIDUAL")
            if context.willLoadLayerOnCompletion(residual):
                context.layerToLoadOnCompletionDetails(residual).setPostProcessor(ResidualStyler.create())
        return results


class TileIndex(GeoImplicitAlgorithm):
    NAME = "tile"
    DISPLAY = "Tile index"
    GROUP = "Tiling"
    COMMAND = "tile"
    OPTION_PARAMS = {"--crs": "CRS", "--aoi": "AOI", "--bbox": "EXTENT", "--resolution": "RESOLUTION",
                     "--tile-size": "TILE_SIZE", "--overlap": "OVERLAP"}
    HELP = (
        "<p>A grid of tiles over the area of interest, with a tile size and an overlap in CRS units, snapped to "
        "the output pixel grid (every tile's pixels line up with the mosaic's); only tiles that touch the area "
        "are kept. Written as a GeoPackage (layer 'tiles': id, row, col, bounds, status; geometry = the tile "
        "without its overlap) and loaded into the project.</p>"
    )

    def initAlgorithm(self, config=None):  # noqa: N802
        self.add_aoi_parameters()
        self.add_number("TILE_SIZE", "Tile size (CRS units)", 64.0, minimum=1e-9)
        self.add_number("OVERLAP", "Overlap (CRS units)", 8.0, minimum=0.0)
        self.add_number("RESOLUTION", "Resolution of the output grid (CRS units per pixel)", 0.5, minimum=1e-9)
        self.add_crs_parameter()
        self.add_extra_args_parameter()
        self.addParameter(
            QgsProcessingParameterVectorDestination("OUTPUT", "Tile index", QgsProcessing.TypeVectorPolygon)
        )
        self.addOutput(QgsProcessingOutputNumber("COUNT", "Number of tiles"))

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802
        output = self.parameterAsOutputLayer(parameters, "OUTPUT", context)
        path = output.split("|")[0]
        if not path.lower().endswith(".gpkg"):
            raise QgsProcessingException(f"{path}: the tile index is a GeoPackage; choose a .gpkg file")
        args = ["tile"] + self.aoi_args(parameters, context, feedback)
        args += ["--tile-size", repr(self.parameterAsDouble(parameters, "TILE_SIZE", context))]
        args += ["--overlap", repr(self.parameterAsDouble(parameters, "OVERLAP", context))]
        args += ["--resolution", repr(self.parameterAsDouble(parameters, "RESOLUTION", context))]
        args += self.crs_args(parameters, context)
        args += self.extra_args(parameters, context)
        args += ["--overwrite", "-o", path]
        announced = self.run_geoimplicit(args, feedback, outputs=[path])
        if context.willLoadLayerOnCompletion(output):
            context.layerToLoadOnCompletionDetails(output).name = "Tiles"
        results = {"OUTPUT": output}
        if str(announced.get("count", "")).isdigit():
            results["COUNT"] = int(announced["count"])
        return results


class Mosaic(GeoImplicitAlgorithm):
    NAME = "mosaic"
    DISPLAY = "Mosaic"
    GROUP = "Tiling"
    COMMAND = "mosaic"
    OPTION_PARAMS = {"--aoi": "AOI", "--filled": "FILLED"}
    HELP = (
        "<p>Tiles (GeoTIFFs on one pixel grid, e.g. the tiles of a DSM run) blended over their overlap with "
        "feathered weights into one Cloud-Optimized GeoTIFF: no seams, nodata respected, optionally clipped to "
        "an area of interest. Loaded with an elevation colour ramp.</p>"
    )

    def initAlgorithm(self, config=None):  # noqa: N802
        self.addParameter(
            QgsProcessingParameterMultipleLayers("TILES", "Tiles", QgsProcessing.TypeRaster, optional=True)
        )
        self.addParameter(
            QgsProcessingParameterFile("TILE_SOURCE", "Or: a folder of tiles, or the tile index (.gpkg) of a DSM run",
                                       optional=True, fileFilter="Tile index (*.gpkg);;All files (*)")
        )
        self.addParameter(
            QgsProcessingParameterFeatureSource("AOI", "Clip to polygons (optional)",
                                                [QgsProcessing.TypeVectorPolygon], optional=True)
        )
        self.add_extra_args_parameter()
        self.addParameter(QgsProcessingParameterRasterDestination("OUTPUT", "Mosaic"))
        self.addParameter(QgsProcessingParameterRasterDestination(
            "FILLED", "Filled-cells mask (tiles' band 2)", optional=True, createByDefault=False))

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802
        paths = []
        for layer in self.parameterAsLayerList(parameters, "TILES", context):
            path = layer.source().split("|")[0]
            if not os.path.isfile(path):
                raise QgsProcessingException(f"{layer.name()}: not a raster file ({layer.source()})")
            paths.append(path)
        source = self.parameterAsFile(parameters, "TILE_SOURCE", context)
        if source:
            paths.append(source)
        if not paths:
            raise QgsProcessingException("Tiles: give raster tiles, or a folder of tiles or a tile index")
        output = self.parameterAsOutputLayer(parameters, "OUTPUT", context)
        args = ["mosaic", *paths]
        if parameters.get("AOI"):
            args += self.aoi_args(parameters, context, feedback)
        filled = self.parameterAsOutputLayer(parameters, "FILLED", context) if parameters.get("FILLED") else None
        if filled:
            args += ["--filled", filled]
        args += self.extra_args(parameters, context)
        args += ["--overwrite", "-o", output]
        self.run_geoimplicit(args, feedback, outputs=[output, filled])
        self.load_dsm_on_completion(output, context, name="Mosaic")
        results = {"OUTPUT": output}
        if filled:
            results["FILLED"] = filled
        return results


class NovelViewsFit(GeoImplicitAlgorithm):
    NAME = "nvs_fit"
    DISPLAY = "Novel views: fit a multiplane image"
    GROUP = VIEWS_GROUP
    COMMAND = "nvs fit"
    OPTION_PARAMS = {"--planes": "PLANES", "--layout": "LAYOUT", "--steps": "STEPS", "--device": "DEVICE",
                     "--geo-products": "GEO_PRODUCTS", "--refine-cameras": "REFINE_CAMERAS",
                     "--refine-rounds": "REFINE_ROUNDS"}
    HELP = (
        "<p>Fits a multiplane image (ImMPI) to a view set in the LEVIR-NVS layout (Images/, Cams/, optional "
        "Depths/ and Track/, view_split.txt) on its train views, with photometric losses. The model folder is "
        "what <i>Novel views: render</i> and <i>Novel views: evaluate</i> read. Runs on a CUDA GPU when there "
        "is one.</p>"
        "<p><b>Plane layout</b>: <i>fronto</i> = planes parallel to a reference camera, uniform in disparity "
        "(ImMPI); <i>geo</i> = horizontal planes at heights of the world CRS, so that the MPI renders straight "
        "down into map space: with <b>Geo products</b> it also writes a true-ortho image and a height raster "
        "(GeoTIFFs), loaded into the project. <b>Refine cameras</b> learns small pose corrections per view "
        "(for noisy camera files) and writes the corrected cameras; each of its <b>Refinement rounds</b> is a whole "
        "fit from the cameras the round before refined.</p>"
    )

    def initAlgorithm(self, config=None):  # noqa: N802
        self.addParameter(
            QgsProcessingParameterFile("VIEWS", "View set folder (LEVIR-NVS layout)",
                                       behavior=QgsProcessingParameterFile.Folder)
        )
        self.addParameter(QgsProcessingParameterEnum("LAYOUT", "Plane layout", options=LAYOUT_LABELS,
                                                     defaultValue=0))
        self.add_number("PLANES", "Number of planes", 32, minimum=2, integer=True)
        self.add_number("STEPS", "Optimisation steps", 1500, minimum=0, integer=True)
        self.addParameter(QgsProcessingParameterBoolean(
            "GEO_PRODUCTS", "Geo products: true-ortho and height rasters (geo layout)", defaultValue=False))
        self.add_advanced(QgsProcessingParameterBoolean("REFINE_CAMERAS", "Refine cameras", defaultValue=False))
        self.add_number("REFINE_ROUNDS", "Refinement rounds (refine cameras)", 4, minimum=1, integer=True,
                        advanced=True)
        self.add_advanced(QgsProcessingParameterEnum("GENERATOR", "Generator of the planes", options=GENERATORS,
                                                     defaultValue=0))
        self.add_number("IMAGE_SCALE", "Fit on images resized by", 1.0, minimum=1e-6, advanced=True)
        self.add_number("COLOUR_SHARE", "Colour shared across planes (0 = free, ImMPI; 0.8 for near-nadir views)",
                        0.0, minimum=0.0, maximum=1.0, advanced=True)
        self.add_advanced(QgsProcessingParameterEnum("EXTENT", "Texture extent (geo layout)", options=EXTENT_LABELS,
                                                     defaultValue=0))
        self.add_device_parameter()
        self.add_extra_args_parameter()
        self.addParameter(QgsProcessingParameterFolderDestination("OUTPUT", "Model folder"))
        self.addOutput(QgsProcessingOutputFile("MODEL", "Model file (model.pt)"))
        self.addOutput(QgsProcessingOutputRasterLayer("TRUE_ORTHO", "True ortho (geo products)"))
        self.addOutput(QgsProcessingOutputRasterLayer("HEIGHT", "Height raster (geo products)"))

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802
        views = self.parameterAsFile(parameters, "VIEWS", context)
        output = self.parameterAsString(parameters, "OUTPUT", context)
        layout = LAYOUTS[self.parameterAsEnum(parameters, "LAYOUT", context)]
        geo = self.parameterAsBoolean(parameters, "GEO_PRODUCTS", context)
        if geo and layout != "geo":
            raise QgsProcessingException("Geo products need the geo plane layout: choose Plane layout = geo")
        args = ["nvs", "fit", views, "--layout", layout,
                "--planes", str(self.parameterAsInt(parameters, "PLANES", context)),
                "--steps", str(self.parameterAsInt(parameters, "STEPS", context)),
                "--model", GENERATORS[self.parameterAsEnum(parameters, "GENERATOR", context)],
                "--image-scale", repr(self.parameterAsDouble(parameters, "IMAGE_SCALE", context)),
                "--colour-share", repr(self.parameterAsDouble(parameters, "COLOUR_SHARE", context)),
                "--extent", EXTENTS[self.parameterAsEnum(parameters, "EXTENT", context)]]
        if geo:
            args.append("--geo-products")
        if self.parameterAsBoolean(parameters, "REFINE_CAMERAS", context):
            args += ["--refine-cameras", "--refine-rounds",
                     str(self.parameterAsInt(parameters, "REFINE_ROUNDS", context))]
        args += self.optional_device_args(parameters, context)
        args += self.extra_args(parameters, context)
        args += ["--overwrite", "-o", output]
        announced = self.run_geoimplicit(args, feedback, outputs=[output])
        results = {"OUTPUT": output, "MODEL": announced.get("model")}
        if announced.get("height"):
            results["HEIGHT"] = announced["height"]
            self.load_layer_on_completion(announced["height"], context, "MPI height", "HEIGHT")
            if context.willLoadLayerOnCompletion(announced["height"]):
                context.layerToLoadOnCompletionDetails(announced["height"]).setPostProcessor(DsmStyler.create())
        if announced.get("ortho"):
            results["TRUE_ORTHO"] = announced["ortho"]
            self.load_layer_on_completion(announced["ortho"], context, "MPI true ortho", "TRUE_ORTHO")
        return results


class NovelViewsRender(GeoImplicitAlgorithm):
    NAME = "nvs_render"
    DISPLAY = "Novel views: render"
    GROUP = VIEWS_GROUP
    COMMAND = "nvs render"
    OPTION_PARAMS = {"--cams": "CAMS", "--video": "VIDEO", "--device": "DEVICE"}
    HELP = (
        "<p>Renders images and depth maps (float TIFF) of a fitted multiplane image for every camera file of a "
        "folder (LEVIR-NVS camera format, e.g. a view set's Track/ or Cams/), and optionally the frames as an "
        "MP4 video and a GIF (<b>Video</b>). Image size: the train images' unless given.</p>"
    )

    def initAlgorithm(self, config=None):  # noqa: N802
        self.addParameter(
            QgsProcessingParameterFile("MODEL", "Model folder (from Novel views: fit)",
                                       behavior=QgsProcessingParameterFile.Folder)
        )
        self.addParameter(
            QgsProcessingParameterFile("CAMS", "Camera files folder", behavior=QgsProcessingParameterFile.Folder)
        )
        self.addParameter(QgsProcessingParameterBoolean("VIDEO", "Video (MP4 and GIF)", defaultValue=False))
        self.add_number("FPS", "Video frames per second", 10, minimum=1, integer=True, advanced=True)
        self.add_number("WIDTH", "Image width (0 = the train images')", 0, minimum=0, integer=True, advanced=True)
        self.add_number("HEIGHT", "Image height (0 = the train images')", 0, minimum=0, integer=True, advanced=True)
        self.add_device_parameter()
        self.add_extra_args_parameter()
        self.addParameter(QgsProcessingParameterFolderDestination("OUTPUT", "Output folder"))
        self.addOutput(QgsProcessingOutputFolder("IMAGES", "Rendered images"))
        self.addOutput(QgsProcessingOutputFolder("DEPTHS", "Rendered depth maps"))
        self.addOutput(QgsProcessingOutputFile("VIDEO_FILE", "Video (MP4)"))

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802
        model = self.parameterAsFile(parameters, "MODEL", context)
        cams = self.parameterAsFile(parameters, "CAMS", context)
        output = self.parameterAsString(parameters, "OUTPUT", context)
        args = ["nvs", "render", model, "--cams", cams]
        if self.parameterAsBoolean(parameters, "VIDEO", context):
            args += ["--video", "--fps", str(self.parameterAsInt(parameters, "FPS", context))]
        width, height = (self.parameterAsInt(parameters, k, context) for k in ("WIDTH", "HEIGHT"))
        if width > 0 and height > 0:
            args += ["--size", str(width), str(height)]
        elif width > 0 or height > 0:
            raise QgsProcessingException("Image width and height: give both, or neither")
        args += self.optional_device_args(parameters, context)
        args += self.extra_args(parameters, context)
        args += ["--overwrite", "-o", output]
        announced = self.run_geoimplicit(args, feedback, outputs=[output])
        return {"OUTPUT": output, "IMAGES": announced.get("images"), "DEPTHS": announced.get("depths"),
                "VIDEO_FILE": announced.get("video")}


class NovelViewsEval(GeoImplicitAlgorithm):
    NAME = "nvs_eval"
    DISPLAY = "Novel views: evaluate"
    GROUP = VIEWS_GROUP
    COMMAND = "nvs eval"
    HELP = (
        "<p>PSNR and SSIM of a fitted multiplane image on the test views of its view set (view_split.txt), and "
        "the depth error where the view set has Depths/. Writes report.json and an HTML page with rendered, "
        "true and error images side by side (shown in the results viewer). <b>Align test poses</b> (steps, 0 = "
        "off) first aligns each test camera to the fitted MPI, BARF's test-time protocol for fits made with "
        "<i>Refine cameras</i>; the report keeps the given cameras' PSNR too.</p>"
    )
    OPTION_PARAMS = {"--align-poses": "ALIGN_POSES", "--device": "DEVICE"}

    def initAlgorithm(self, config=None):  # noqa: N802
        self.addParameter(
            QgsProcessingParameterFile("MODEL", "Model folder (from Novel views: fit)",
                                       behavior=QgsProcessingParameterFile.Folder)
        )
        self.addParameter(
            QgsProcessingParameterFile("VIEWS", "View set folder (LEVIR-NVS layout)",
                                       behavior=QgsProcessingParameterFile.Folder)
        )
        self.add_number("ALIGN_POSES", "Align test poses to the fit first (steps, 0 = off)", 0, minimum=0,
                        integer=True, advanced=True)
        self.add_device_parameter()
        self.add_extra_args_parameter()
        self.addParameter(QgsProcessingParameterFolderDestination("OUTPUT", "Report folder"))
        self.addOutput(QgsProcessingOutputHtml("OUTPUT_HTML", "Novel view report"))
        self.addOutput(QgsProcessingOutputNumber("PSNR", "Mean PSNR (dB)"))
        self.addOutput(QgsProcessingOutputNumber("SSIM", "Mean SSIM"))

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802
        model = self.parameterAsFile(parameters, "MODEL", context)
        views = self.parameterAsFile(parameters, "VIEWS", context)
        output = self.parameterAsString(parameters, "OUTPUT", context)
        args = ["nvs", "eval", model, views] + self.optional_device_args(parameters, context)
        steps = self.parameterAsInt(parameters, "ALIGN_POSES", context)
        if steps:
            args += ["--align-poses", str(steps)]
        args += self.extra_args(parameters, context)
        args += ["--overwrite", "-o", output]
        announced = self.run_geoimplicit(args, feedback, outputs=[output])
        results = {"OUTPUT": output, "OUTPUT_HTML": announced.get("html") or os.path.join(output, "index.html")}
        for key in ("PSNR", "SSIM"):
            try:
                results[key] = float(announced[key.lower()])
            except (KeyError, ValueError):
                pass
        return results


def _first_existing(folder, names):
    for name in names:
        path = os.path.join(folder, name)
        if os.path.exists(path):
            return path
    return None


ALGORITHMS = [ReconstructDsm, AccuracyReport, TileIndex, Mosaic, NovelViewsFit, NovelViewsRender, NovelViewsEval]

from .surface_algorithms import SURFACE_ALGORITHMS  # noqa: E402 - neural surfaces live in their own module

ALGORITHMS += SURFACE_ALGORITHMS
