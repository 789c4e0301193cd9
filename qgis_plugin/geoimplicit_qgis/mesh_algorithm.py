"""The "Reconstruct mesh" algorithm: ``geoimplicit mesh``."""

from qgis.core import (
    QgsProcessing,
    QgsProcessingException,
    QgsProcessingOutputFile,
    QgsProcessingParameterBoolean,
    QgsProcessingParameterEnum,
    QgsProcessingParameterFile,
    QgsProcessingParameterFileDestination,
    QgsProcessingParameterMultipleLayers,
    QgsProcessingParameterRasterDestination,
    QgsProcessingParameterRasterLayer,
    QgsProcessingParameterString,
)

from .base import GeoImplicitAlgorithm

FORMATS = ["ply", "obj", "glb"]
FORMAT_LABELS = ["PLY (float64 coordinates in the CRS)", "OBJ (local origin, .prj beside it)",
                 "glTF binary .glb (local origin, .prj beside it)"]


class ReconstructMesh(GeoImplicitAlgorithm):
    NAME = "mesh"
    DISPLAY = "Reconstruct mesh"
    GROUP = "Elevation"
    COMMAND = "mesh"
    OPTION_PARAMS = {"--crs": "CRS", "--aoi": "AOI", "--bbox": "EXTENT", "--resolution": "RESOLUTION",
                     "--tile-size": "TILE_SIZE", "--overlap": "OVERLAP", "--weights": "WEIGHTS", "--device": "DEVICE",
                     "--ortho": "ORTHO", "--points": "POINTS", "--dask-workers": "DASK_WORKERS",
                     "--scheduler": "SCHEDULER", "--workdir": "WORKDIR", "--format": "FORMAT",
                     "--dsm-output": "DSM", "--true-ortho": "TRUE_ORTHO", "--refiner": "REFINER"}
    HELP = (
        "<p>A triangle mesh of the surface (roofs, walls, ground, trees) from LAS/LAZ point clouds and, optionally, "
        "ortho-images: the neural occupancy field of <i>Reconstruct DSM</i> is evaluated coarse to fine in every "
        "tile (multiresolution iso-surface extraction) and meshed by marching cubes, with the vertices moved onto "
        "the surface, normals from the field and colours from the first ortho. Tiles are stitched without cracks "
        "and the mesh is clipped to the area of interest. The height refiner of <i>Reconstruct DSM</i> corrects "
        "the field as it does the DSM (the mesh's roofs are the DSM's; its walls vertical).</p>"
        "<p><b>Resolution</b>: the lattice spacing in CRS units (0.5 m: a vertex about every 0.5 m). "
        "<b>Format</b>: PLY keeps coordinates in the CRS as doubles (with a <code>comment crs</code> line); OBJ "
        "and glTF store offsets from a local origin written in the file, and a .prj beside it. "
        "<b>DSM from the mesh</b> (optional): the highest surface of the mesh in every cell, as a GeoTIFF that the "
        "<i>Accuracy report</i> scores like any DSM. The mesh opens in QGIS's 3D views and in any mesh viewer.</p>"
    )

    def initAlgorithm(self, config=None):  # noqa: N802
        self.addParameter(
            QgsProcessingParameterMultipleLayers("POINTS", "Point cloud files (LAS/LAZ)", QgsProcessing.TypeFile))
        self.addParameter(QgsProcessingParameterRasterLayer("ORTHO", "Ortho-image, RGB (optional; colours)",
                                                            optional=True))
        self.addParameter(QgsProcessingParameterBoolean(
            "TRUE_ORTHO", "The ortho-images are true orthos: every roof on its footprint", defaultValue=False))
        self.add_aoi_parameters()
        self.add_number("RESOLUTION", "Resolution (CRS units between vertices)", 0.5, minimum=1e-9)
        self.addParameter(QgsProcessingParameterEnum("FORMAT", "Format", options=FORMAT_LABELS, defaultValue=0))
        self.add_crs_parameter()
        self.add_advanced(QgsProcessingParameterRasterLayer("ORTHO2", "Second ortho-image: RGB or IRC",
                                                            optional=True))
        self.add_number("TILE_SIZE", "Tile size (CRS units, 0 = method default)", 0.0, minimum=0.0, advanced=True)
        self.add_number("OVERLAP", "Tile overlap (CRS units, 0 = method default)", 0.0, minimum=0.0, advanced=True)
        self.add_advanced(QgsProcessingParameterFile(
            "WEIGHTS", "Model weights (empty = the default model)", extension="pt", optional=True))
        self.add_advanced(QgsProcessingParameterFile(
            "REFINER", "Height refiner weights (empty = the shipped one, with the default model)", extension="pt",
            optional=True))
        self.add_advanced(QgsProcessingParameterBoolean(
            "NO_REFINER", "No height refiner: the occupancy field as it is (the DSM's heights before the refiner)",
            defaultValue=False))
        self.add_device_parameter()
        self.add_number("DASK_WORKERS", "Run the tiles on a local Dask cluster of N processes (0 = no Dask)", 0,
                        minimum=0, integer=True, advanced=True)
        self.add_advanced(QgsProcessingParameterString(
            "SCHEDULER", "Or: address of a running Dask scheduler (tcp://HOST:8786)", optional=True))
        self.add_advanced(QgsProcessingParameterFile(
            "WORKDIR", "Work folder (resumable; empty = <output>_work beside the output)",
            behavior=QgsProcessingParameterFile.Folder, optional=True))
        self.add_extra_args_parameter()
        self.addParameter(QgsProcessingParameterFileDestination(
            "OUTPUT", "Mesh", fileFilter="PLY (*.ply);;OBJ (*.obj);;glTF binary (*.glb)"))
        self.addParameter(QgsProcessingParameterRasterDestination(
            "DSM", "DSM from the mesh (highest surface per cell)", optional=True, createByDefault=False))
        self.addOutput(QgsProcessingOutputFile("TILES", "Tile index of the run (GeoPackage)"))

    def processAlgorithm(self, parameters, context, feedback):  # noqa: N802
        points = self.parameterAsFileList(parameters, "POINTS", context)
        if not points:
            raise QgsProcessingException("Point cloud files: give at least one LAS/LAZ file")
        fmt = FORMATS[self.parameterAsEnum(parameters, "FORMAT", context)]
        output = self.parameterAsFileOutput(parameters, "OUTPUT", context)
        if not output.lower().endswith("." + fmt):
            output = output.rsplit(".", 1)[0] + "." + fmt if "." in output.rsplit("/", 1)[-1] else f"{output}.{fmt}"
        args = ["mesh"]
        for path in points:
            args += ["--points", path]
        for name in ("ORTHO", "ORTHO2"):
            ortho = self.raster_path(parameters, name, context, required=False)
            if ortho:
                args += ["--ortho", ortho]
        args += self.aoi_args(parameters, context, feedback)
        args += ["--resolution", repr(self.parameterAsDouble(parameters, "RESOLUTION", context))]
        args += ["--format", fmt]
        args += self.crs_args(parameters, context)
        for name, option in (("TILE_SIZE", "--tile-size"), ("OVERLAP", "--overlap")):
            value = self.parameterAsDouble(parameters, name, context)
            if value > 0:
                args += [option, repr(value)]
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
        dsm = self.parameterAsOutputLayer(parameters, "DSM", context) if parameters.get("DSM") else None
        if dsm:
            args += ["--dsm-output", dsm]
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
        announced = self.run_geoimplicit(args, feedback, outputs=[output] + ([dsm] if dsm else []))
        if dsm:
            self.load_dsm_on_completion(dsm, context, name="DSM from the mesh")
        return {"OUTPUT": announced.get("mesh", output), "DSM": dsm, "TILES": announced.get("tiles")}
