"""The provider's setting: the path of the geoimplicit executable (read by the algorithms, made by the
provider; a module of its own so that neither imports the other)."""

from qgis.core import QgsSettings

SETTING_EXECUTABLE = "GEOIMPLICIT_EXECUTABLE"


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
