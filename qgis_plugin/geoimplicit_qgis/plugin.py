"""The plugin object: registers the Processing provider (also in qgis_process, where there is no GUI)."""

from qgis.core import QgsApplication


class GeoImplicitPlugin:
    def __init__(self, iface=None):
        self.iface = iface
        self.provider = None

    def initProcessing(self):  # noqa: N802 (QGIS's name)
        from .provider import GeoImplicitProvider

        if self.provider is None:
            self.provider = GeoImplicitProvider()
            QgsApplication.processingRegistry().addProvider(self.provider)

    def initGui(self):  # noqa: N802
        self.initProcessing()

    def unload(self):
        if self.provider is not None:
            QgsApplication.processingRegistry().removeProvider(self.provider)
            self.provider = None
