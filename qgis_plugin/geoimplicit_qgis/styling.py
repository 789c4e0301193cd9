"""Elevation styling of DSM layers loaded on completion (single-band pseudocolor)."""

import math

from qgis.core import (
    QgsColorRampShader,
    QgsProcessingLayerPostProcessorInterface,
    QgsRasterBandStats,
    QgsRasterLayer,
    QgsRasterShader,
    QgsSingleBandPseudoColorRenderer,
)
from qgis.PyQt.QtGui import QColor

# a terrain-like ramp: low green, mid yellow/brown, high white
ELEVATION_COLOURS = ["#1a9850", "#91cf60", "#d9ef8b", "#fee08b", "#fc8d59", "#a6611a", "#f7f7f7"]


def style_dsm(layer: QgsRasterLayer) -> bool:
    """Give a one-band height raster a pseudocolor elevation ramp stretched over its min..max.

    Returns False (and leaves the layer as it is) if the layer is invalid or has no valid pixels.
    """
    if layer is None or not layer.isValid():
        return False
    provider = layer.dataProvider()
    stats = provider.bandStatistics(1, QgsRasterBandStats.Min | QgsRasterBandStats.Max)
    low, high = stats.minimumValue, stats.maximumValue
    if not (math.isfinite(low) and math.isfinite(high)) or high < low:
        return False
    if high == low:
        high = low + 1.0
    ramp = QgsColorRampShader(low, high)
    ramp.setColorRampType(QgsColorRampShader.Interpolated)
    step = (high - low) / (len(ELEVATION_COLOURS) - 1)
    ramp.setColorRampItemList(
        [QgsColorRampShader.ColorRampItem(low + i * step, QColor(c), f"{low + i * step:.1f}")
         for i, c in enumerate(ELEVATION_COLOURS)]
    )
    shader = QgsRasterShader()
    shader.setRasterShaderFunction(ramp)
    renderer = QgsSingleBandPseudoColorRenderer(provider, 1, shader)
    renderer.setClassificationMin(low)
    renderer.setClassificationMax(high)
    layer.setRenderer(renderer)
    layer.triggerRepaint()
    return True


def style_residual(layer: QgsRasterLayer) -> bool:
    """A diverging blue-white-red ramp symmetric about 0 over the 2nd..98th percentile of |error|."""
    if layer is None or not layer.isValid():
        return False
    provider = layer.dataProvider()
    stats = provider.bandStatistics(1, QgsRasterBandStats.Min | QgsRasterBandStats.Max | QgsRasterBandStats.StdDev)
    if not (math.isfinite(stats.minimumValue) and math.isfinite(stats.maximumValue)):
        return False
    spread = max(abs(stats.minimumValue), abs(stats.maximumValue))
    if math.isfinite(stats.stdDev) and stats.stdDev > 0:
        spread = min(spread, 2.5 * stats.stdDev)
    spread = spread or 1.0
    ramp = QgsColorRampShader(-spread, spread)
    ramp.setColorRampType(QgsColorRampShader.Interpolated)
    ramp.setClip(False)
    ramp.setColorRampItemList([
        QgsColorRampShader.ColorRampItem(-spread, QColor("#2166ac"), f"{-spread:.2f}"),
        QgsColorRampShader.ColorRampItem(0.0, QColor("#f7f7f7"), "0"),
        QgsColorRampShader.ColorRampItem(spread, QColor("#b2182b"), f"+{spread:.2f}"),
    ])
    shader = QgsRasterShader()
    shader.setRasterShaderFunction(ramp)
    renderer = QgsSingleBandPseudoColorRenderer(provider, 1, shader)
    renderer.setClassificationMin(-spread)
    renderer.setClassificationMax(spread)
    layer.setRenderer(renderer)
    layer.triggerRepaint()
    return True


class DsmStyler(QgsProcessingLayerPostProcessorInterface):
    """Post-processor set on DSM outputs that are loaded into the project on completion."""

    _instances = []  # QGIS does not own post-processors: keep them alive

    style = staticmethod(style_dsm)

    def postProcessLayer(self, layer, context, feedback):  # noqa: N802 (QGIS's name)
        if isinstance(layer, QgsRasterLayer) and not self.style(layer):
            feedback.pushInfo(f"{layer.name()}: no valid values, left unstyled")

    @classmethod
    def create(cls):
        instance = cls()
        cls._instances.append(instance)
        del cls._instances[:-16]
        return instance


class ResidualStyler(DsmStyler):
    """Post-processor for error rasters (prediction minus truth)."""

    style = staticmethod(style_residual)
