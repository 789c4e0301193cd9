"""Every exception and warning class of geoimplicit.

Each error carries the file it is about and the fix, so that the CLI (and the QGIS plugin, through the CLI)
can show one line that a user can act on. Input and usage errors exit with code 2.
"""

from __future__ import annotations

import os


class GeoImplicitError(Exception):
    """Root of all geoimplicit errors.

    Args:
        message: what is wrong, without the file name.
        path: the file or folder the error is about, if any.
        hint: how to fix it ("pass --crs EPSG:2154").
    """

    exit_code = 1

    def __init__(self, message: str, *, path: str | os.PathLike | None = None, hint: str | None = None):
        self.message = message
        self.path = None if path is None else os.fspath(path)
        self.hint = hint
        super().__init__(str(self))

    def __reduce__(self):  # raised in a worker process, re-raised here with its path and hint
        return _rebuild, (type(self), self.message, self.path, self.hint, dict(self.__dict__))

    def __str__(self) -> str:
        text = f"{self.path}: {self.message}" if self.path else self.message
        if self.hint:
            text = f"{text.rstrip('.')}. {self.hint}"
        return text


def _rebuild(cls, message, path, hint, state):
    err = GeoImplicitError.__new__(cls)
    GeoImplicitError.__init__(err, message, path=path, hint=hint)
    err.__dict__.update(state)
    return err


class InputError(GeoImplicitError, ValueError):
    """A user input (file, option, value) cannot be used as given."""

    exit_code = 2


class InputFileNotFoundError(InputError, FileNotFoundError):
    """An input file or folder does not exist."""


class CorruptInputError(InputError):
    """A file exists but cannot be read as what it claims to be (truncated LAZ, a TIFF that is not a raster)."""


class CRSError(InputError):
    """Root of coordinate reference system problems."""


class MissingCRSError(CRSError):
    """No CRS in the file and none given by the user."""


class CRSMismatchError(CRSError):
    """Inputs are in different CRSs and no working CRS was chosen."""


class GeographicCRSError(CRSError):
    """A geographic CRS (degrees) where a projected CRS in metres or feet is needed."""


class AOIError(InputError):
    """The area of interest is invalid or does not overlap the data."""


class EmptyTileError(InputError):
    """A tile or crop holds no usable data (no points, only nodata)."""


class NoDataError(InputError):
    """An input holds only nodata or NaN values."""


class CameraFileError(InputError):
    """A camera file or view folder is malformed."""


class ConfigError(InputError):
    """A YAML config is invalid (unknown key, wrong type, missing inherited file)."""


class WeightsError(InputError):
    """A model checkpoint is missing, corrupt or incompatible."""


class ShapeError(GeoImplicitError, ValueError):
    """An array or tensor has the wrong shape or dtype at a library boundary (the message says expected vs actual)."""


class OutputExistsError(GeoImplicitError, FileExistsError):
    """An output exists and --overwrite was not given."""

    exit_code = 2


class DiskFullError(GeoImplicitError, OSError):
    """The disk filled up while writing an output; the partial output was removed."""

    exit_code = 1


class DeviceError(GeoImplicitError):
    """The requested compute device is not available (--device cuda without a GPU)."""

    exit_code = 2


class RunError(GeoImplicitError):
    """A tiled run did not finish: a tile job failed or returned something unusable, or tiles are left
    unfinished. The finished tiles are kept: re-running the same command resumes."""


class CancelledError(GeoImplicitError):
    """The run was cancelled by the user (Ctrl-C or the QGIS cancel button)."""

    exit_code = 130


class GeoImplicitWarning(UserWarning):
    """Root of geoimplicit warnings."""
