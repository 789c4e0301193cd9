"""The "geoimplicit" Processing provider and its setting (the path of the geoimplicit executable)."""

import os

from qgis.core import QgsProcessingProvider, QgsSettings
from qgis.PyQt.QtGui import QIcon

PROVIDER_ID = "geoimplicit"
SETTING_EXECUTABLE = "GEOIMPLICIT_EXECUTABLE"
ICON = os.path.join(os.path.dirname(__file__), "icon.svg")


def configured_executable() -> str:
    """The Processing setting's value ("" = find ``geoimplicit`` on PATH)."""
    try:
        from processing.core.ProcessingConfig import ProcessingConfig

        value = ProcessingConfig.getSetting(SETTING_EXECUTABLE)
        if value is not None:
            return str(value)
    except Exception:  # Processing not initialised (a bare script): fall back on the stored setting
        pass
    return str(QgsSettings().value(f"Processing/Configuration/{SETTING_EXECUTABLE}", "") or "")


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
        from .algorithms import ALGORITHMS

        for cls in ALGORITHMS:
            self.addAlgorithm(cls())
