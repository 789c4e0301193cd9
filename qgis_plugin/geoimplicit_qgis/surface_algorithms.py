"""Processing algorithms of ``geoimplicit surface``: fit a neural SDF surface, read off its DSM, render views."""

from qgis.core import (
    QgsProcessing,
    QgsProcessingOutputFile,
    QgsProcessingOutputFolder,
    QgsProcessingParameterBoolean,
    QgsProcessingParameterEnum,
    QgsProcessingParameterFeatureSource,
    QgsProcessingParameterFile,
    QgsProcessingParameterFolderDestination,
    QgsProcessingParameterMultipleLayers,
    QgsProcessingParameterRasterDestination,
)

from .base import GeoImplicitAlgorithm

SURFACE_GROUP = "Neural surfaces"
RENDERERS = ["volume", "idr"]
RENDERER_LABELS = ["Volume rendering of the SDF (NeuS-style)", "Sphere tracing (IDR's differentiable intersection)"]


class SurfaceFit(GeoImplicitAlgorithm):
    NAME = "surface_fit"
    DISPLAY = "Neural surface: fit to posed views"
    GROUP = SURFACE_GROUP
    COMMAND = "surface fit"
    OPTION_PARAMS = {"--points": "POINTS", "--aoi": "AOI", "--refine-cameras": "REFINE_CAMERAS",
                     "--steps": "STEPS", "--device": "DEVICE", "--renderer": "RENDERER"}
    HELP = (
        "<p>Fits a neural signed-distance surface (IDR) and its appearance to the train views of a view set in the "
        "LEVIR-NVS layout (Images/, Cams/, view_split.txt and <b>crs.txt</b>, the CRS of the cameras). The volume "
        "is the area of interest (or the most nadir view's footprint) between the scene's lowest and highest "
        "heights; rays that cross it from top to bottom carry the photometric loss, so no masks are needed.</p>"
        "<p><b>Surface points</b> (LAS/LAZ in the views' CRS, optional) hold the surface where they are. "
        "<b>Refine cameras</b> learns a pose correction per train view and writes the corrected cameras "
        "(cameras/ in the model folder, same format). The model folder holds model.pt, the fit's summary and "
        "iso_points.laz: points on the surface with normals (LAS 1.4 extra bytes) in the CRS. Runs on a CUDA GPU "
        "when there is one.</p>"
    )

    def initAlgorithm(self, config=None):  # noqa: N802
        self.addParameter(QgsProcessingParameterFile("VIEWS", "View set folder (LEVIR-NVS layout, crs.txt)",
                                                     behavior=QgsProcessingParameterFile.Folder))
        self.addParameter(QgsProcessingParameterMultipleLayers("POINTS", "Surface points (LAS/LAZ, optional)",
                                                               QgsProcessing.TypeFile, optional=True))
        self.addParameter(QgsProcessingParameterFeatureSource(
            "AOI", "Area of interest (optional)", [QgsProcessing.TypeVectorPolygon], optional=True))
        self.addParameter(QgsProcessingParameterBoolean("REFINE_CAMERAS", "Refine cameras", defaultValue=False))
        self.add_number("STEPS", "Optimisation steps", 2000, minimum=0, integer=True)
        self.add_advanced(QgsProcessingParameterEnum("RENDERER", "Renderer", options=RENDERER_LABELS,
                                                     defaultValue=0))
        self.add_advanced(QgsProcessingParameterBoolean("ISO_POINTS", "Iso-Points guide the sampling",
                                                        defaultValue=True))
        self.add_number("IMAGE_SCALE", "Fit on images resized by", 1.0, minimum=1e-6, advanced=True)
        self.add_device_parameter()
        self.add_extra_args_parameter()
        self.addParameter(QgsProcessingParameterFolderDestination("OUTPUT", "Model folder"))
        self.addOutput(QgsProcessingOutputFile("MODEL", "Model file (model.pt)"))
        self.addOutput(QgsProcessingOutputFile("ISO_POINTS_FILE", "Iso-Points (LAZ)"))
        self.addOutput(QgsProcessingOutputFolder("CAMERAS", "Corrected cameras"))

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802
        views = self.parameterAsFile(parameters, "VIEWS", context)
        output = self.parameterAsString(parameters, "OUTPUT", context)
        args = ["surface", "fit", views, "--steps", str(self.parameterAsInt(parameters, "STEPS", context)),
                "--renderer", RENDERERS[self.parameterAsEnum(parameters, "RENDERER", context)],
                "--image-scale", repr(self.parameterAsDouble(parameters, "IMAGE_SCALE", context))]
        for path in self.parameterAsFileList(parameters, "POINTS", context) if parameters.get("POINTS") else []:
            args += ["--points", path]
        args += self.aoi_args(parameters, context, feedback, required=False)
        if self.parameterAsBoolean(parameters, "REFINE_CAMERAS", context):
            args.append("--refine-cameras")
        if not self.parameterAsBoolean(parameters, "ISO_POINTS", context):
            args.append("--no-iso-points")
        args += self.optional_device_args(parameters, context)
        args += self.extra_args(parameters, context)
        args += ["--overwrite", "-o", output]
        announced = self.run_geoimplicit(args, feedback, outputs=[output])
        return {"OUTPUT": output, "MODEL": announced.get("model"), "ISO_POINTS_FILE": announced.get("iso_points"),
                "CAMERAS": announced.get("cameras")}


class SurfaceDsm(GeoImplicitAlgorithm):
    NAME = "surface_dsm"
    DISPLAY = "Neural surface: DSM"
    GROUP = SURFACE_GROUP
    COMMAND = "surface dsm"
    OPTION_PARAMS = {"--resolution": "RESOLUTION", "--device": "DEVICE"}
    HELP = (
        "<p>The digital surface model of a fitted neural surface (from <i>Neural surface: fit</i>): in every cell "
        "of its box, the highest zero crossing of the signed distance, found by sampling the cell's column "
        "downwards and bisection. GeoTIFF (float32, nodata -9999) in the views' CRS, loaded with an elevation "
        "colour ramp.</p>"
    )

    def initAlgorithm(self, config=None):  # noqa: N802
        self.addParameter(QgsProcessingParameterFile("MODEL", "Model folder (from Neural surface: fit)",
                                                     behavior=QgsProcessingParameterFile.Folder))
        self.add_number("RESOLUTION", "Resolution (CRS units)", 0.5, minimum=1e-6)
        self.add_device_parameter()
        self.add_extra_args_parameter()
        self.addParameter(QgsProcessingParameterRasterDestination("OUTPUT", "DSM"))

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802
        model = self.parameterAsFile(parameters, "MODEL", context)
        output = self.parameterAsOutputLayer(parameters, "OUTPUT", context)
        args = ["surface", "dsm", model, "--resolution",
                repr(self.parameterAsDouble(parameters, "RESOLUTION", context))]
        args += self.optional_device_args(parameters, context) + self.extra_args(parameters, context)
        args += ["--overwrite", "-o", output]
        self.run_geoimplicit(args, feedback, outputs=[output])
        self.load_dsm_on_completion(output, context, "SDF DSM")
        return {"OUTPUT": output}


class SurfaceRender(GeoImplicitAlgorithm):
    NAME = "surface_render"
    DISPLAY = "Neural surface: render views"
    GROUP = SURFACE_GROUP
    COMMAND = "surface render"
    OPTION_PARAMS = {"--cams": "CAMS", "--device": "DEVICE"}
    HELP = (
        "<p>Renders images (PNG) and depth maps (float TIFF, depth along the camera axis, 0 where no surface) of "
        "a fitted neural surface for every camera file of a folder (LEVIR-NVS camera format, e.g. a view set's "
        "Track/ or Cams/).</p>"
    )

    def initAlgorithm(self, config=None):  # noqa: N802
        self.addParameter(QgsProcessingParameterFile("MODEL", "Model folder (from Neural surface: fit)",
                                                     behavior=QgsProcessingParameterFile.Folder))
        self.addParameter(QgsProcessingParameterFile("CAMS", "Camera files folder",
                                                     behavior=QgsProcessingParameterFile.Folder))
        self.add_device_parameter()
        self.add_extra_args_parameter()
        self.addParameter(QgsProcessingParameterFolderDestination("OUTPUT", "Output folder"))
        self.addOutput(QgsProcessingOutputFolder("IMAGES", "Rendered images"))
        self.addOutput(QgsProcessingOutputFolder("DEPTHS", "Rendered depth maps"))

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802
        model = self.parameterAsFile(parameters, "MODEL", context)
        cams = self.parameterAsFile(parameters, "CAMS", context)
        output = self.parameterAsString(parameters, "OUTPUT", context)
        args = ["surface", "render", model, "--cams", cams]
        args += self.optional_device_args(parameters, context) + self.extra_args(parameters, context)
        args += ["--overwrite", "-o", output]
        announced = self.run_geoimplicit(args, feedback, outputs=[output])
        return {"OUTPUT": output, "IMAGES": announced.get("images"), "DEPTHS": announced.get("depths")}


SURFACE_ALGORITHMS = [SurfaceFit, SurfaceDsm, SurfaceRender]
