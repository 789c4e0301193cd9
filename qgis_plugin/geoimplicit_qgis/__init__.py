"""geoimplicit for QGIS: a Processing provider that runs the geoimplicit command line."""


def classFactory(iface):  # noqa: N802 (QGIS's name)
    """Called by QGIS when the plugin is loaded."""
    from .plugin import GeoImplicitPlugin

    return GeoImplicitPlugin(iface)
