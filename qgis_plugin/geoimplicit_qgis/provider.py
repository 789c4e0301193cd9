"""The "geoimplicit" Processing provider and its setting (the path of the geoimplicit executable)."""

import os

from qgis.core import QgsProcessingProvider
from qgis.PyQt.QtGui import QIcon

from .algorithms import ALGORITHMS
from .settings import SETTING_EXECUTABLE

PROVIDER_ID = "geoimplicit"
ICON = os.path.join(os.path.dirname(__file__), "icon.svg")


class GeoImplicitProvider(QgsProcessingProvider):
    def load(self):
        try:
            from processing.core.ProcessingConfig import ProcessingConfig, Setting

            ProcessingConfig.settingIcons[self.name()] = self.icon()
            ProcessingConfig.addSetting(
                Setting(
                    self.name(), SETTING_EXECUTABLE,
                    self.tr("geoimplicit executable (empty: 'geoimplicit' on PATH)"), "",
                    valuetype=Setting.FILE,
                )
            )
            ProcessingConfig.readSettings()
        except ImportError:  # Processing plugin absent: the setting lives in QgsSettings only
            pass
        self.refreshAlgorithms()
        return True

    def unload(self):
        try:
            from processing.core.ProcessingConfig import ProcessingConfig

            ProcessingConfig.removeSetting(SETTING_EXECUTABLE)
        except (ImportError, KeyError):
            pass

    def id(self):
        return PROVIDER_ID

    def name(self):
        return "geoimplicit"

    def longName(self):  # noqa: N802
        return self.tr("geoimplicit: DSMs, accuracy reports, tiles, mosaics, novel views")

    def icon(self):
        return QIcon(ICON)

    def svgIconPath(self):  # noqa: N802
        return ICON

    def supportedOutputRasterLayerExtensions(self):  # noqa: N802
        return ["tif"]

    def supportedOutputVectorLayerExtensions(self):  # noqa: N802
        return ["gpkg"]

    def supportsNonFileBasedOutput(self):  # noqa: N802 - the CLI writes files
        return False

    def loadAlgorithms(self):  # noqa: N802
        for cls in ALGORITHMS:
            self.addAlgorithm(cls())
        from .mesh_algorithm import ReconstructMesh

        self.addAlgorithm(ReconstructMesh())
