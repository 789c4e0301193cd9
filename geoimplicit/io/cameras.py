"""Camera files: pinhole cameras in the LEVIR-NVS (ImMPI/MVSNet) text format, affine satellite cameras, view sets.

The camera models themselves (:class:`PinholeCamera`, :class:`AffineCamera`) live in :mod:`geoimplicit.geometry`
and are re-exported here. Conventions (``docs/conventions.md``): the extrinsic is WORLD-TO-CAMERA,
``X_cam = R @ X_world + t``; OpenCV axes (x right, y down, z forward); depth is ``z_cam``; pixel
``(u, v) = (col, row)`` with the centre of the top-left pixel at ``(0, 0)``. Coordinates are float64.

The text format::

    extrinsic
    E00 E01 E02 E03
    ... (4 rows)

    intrinsic
    K00 K01 K02
    ... (3 rows)

    DEPTH_MIN DEPTH_MAX

Numbers may be separated by whitespace or commas. A depth line of four numbers (MVSNet's
``DEPTH_MIN INTERVAL NUM DEPTH_MAX``) is accepted too.
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from geoimplicit.errors import CameraFileError, InputFileNotFoundError
from geoimplicit.geometry.cameras import AffineCamera, PinholeCamera

log = logging.getLogger(__name__)

__all__ = [
    "PinholeCamera",
    "AffineCamera",
    "ViewSet",
    "read_camera",
    "write_camera",
    "write_cameras_dir",
    "parse_camera_text",
    "format_camera",
    "read_affine_cameras",
    "read_view_split",
    "read_cameras_dir",
]

_SPLIT = re.compile(r"[\s,;]+")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")


def _numbers(text: str) -> list[str]:
    return [tok for tok in _SPLIT.split(text.strip()) if tok]


def _floats(tokens: list[str], path, lineno: int, what: str) -> list[float]:
    try:
        return [float(tok) for tok in tokens]
    except ValueError:
        raise CameraFileError(
            f"line {lineno}: {what} holds a value that is not a number: {' '.join(tokens)!r}",
            path=path,
            hint="each row must hold only numbers separated by spaces or commas",
        ) from None


def parse_camera_text(text: str, path: str | os.PathLike = "<string>") -> PinholeCamera:
    """Parse the LEVIR-NVS camera text; errors name ``path`` and the line."""
    lines = [(i + 1, line.split("#", 1)[0].strip()) for i, line in enumerate(text.splitlines())]
    lines = [(n, line) for n, line in lines if line]
    hint = "expected 'extrinsic' + 4 rows of 4 numbers, 'intrinsic' + 3 rows of 3, then 'DEPTH_MIN DEPTH_MAX'"
    pos = 0

    def block(keyword: str, rows: int, cols: int) -> np.ndarray:
        nonlocal pos
        if pos >= len(lines):
            last = lines[-1][0] if lines else 0
            raise CameraFileError(f"line {last + 1}: missing '{keyword}' block (file ends early)", path=path, hint=hint)
        n, line = lines[pos]
        if line.strip(" ,:").lower() != keyword:
            raise CameraFileError(f"line {n}: expected '{keyword}', found {line[:40]!r}", path=path, hint=hint)
        pos += 1
        values = []
        for r in range(rows):
            if pos >= len(lines):
                raise CameraFileError(
                    f"line {n + r + 1}: '{keyword}' has {r} rows, expected {rows} (file ends early)", path=path, hint=hint
                )
            ln, row = lines[pos]
            toks = _numbers(row)
            if len(toks) != cols:
                raise CameraFileError(
                    f"line {ln}: {keyword} row {r + 1} has {len(toks)} values, expected {cols}", path=path, hint=hint
                )
            values.append(_floats(toks, path, ln, keyword))
            pos += 1
        arr = np.array(values, dtype=np.float64)
        if not np.all(np.isfinite(arr)):
            raise CameraFileError(f"line {n}: {keyword} holds NaN or infinite values", path=path, hint=hint)
        return arr

    ext = block("extrinsic", 4, 4)
    K = block("intrinsic", 3, 3)
    if pos >= len(lines):
        last = lines[-1][0] if lines else 0
        raise CameraFileError(f"line {last + 1}: missing 'DEPTH_MIN DEPTH_MAX' line", path=path, hint=hint)
    ln, row = lines[pos]
    toks = _numbers(row)
    vals = _floats(toks, path, ln, "depth range")
    if len(vals) == 2:
        dmin, dmax = vals
    elif len(vals) == 4:  # MVSNet: DEPTH_MIN INTERVAL NUM DEPTH_MAX
        dmin, dmax = vals[0], vals[3]
    elif len(vals) == 3:  # DEPTH_MIN INTERVAL NUM
        dmin, dmax = vals[0], vals[0] + vals[1] * (vals[2] - 1)
    else:
        raise CameraFileError(f"line {ln}: depth range has {len(vals)} values, expected 2", path=path, hint=hint)
    if not (np.isfinite(dmin) and np.isfinite(dmax) and 0 < dmin < dmax):
        raise CameraFileError(
            f"line {ln}: depth range {dmin} {dmax} is invalid", path=path, hint="need 0 < DEPTH_MIN < DEPTH_MAX"
        )
    if pos + 1 < len(lines):
        log.debug("%s: ignoring %d trailing lines", path, len(lines) - pos - 1)
    if not np.allclose(ext[3], [0, 0, 0, 1]):
        raise CameraFileError(
            f"line {lines[0][0] + 4}: last extrinsic row must be '0 0 0 1'", path=path, hint="is this a 3x4 projection?"
        )
    R = ext[:3, :3]
    if not np.allclose(R @ R.T, np.eye(3), atol=1e-5):
        raise CameraFileError(
            f"line {lines[0][0] + 1}: extrinsic rotation is not orthonormal",
            path=path,
            hint="the extrinsic must be world-to-camera [R | t] with a rotation R",
        )
    if abs(K[2, 2]) < 1e-12 or K[0, 0] <= 0 or K[1, 1] == 0:
        raise CameraFileError(f"line {lines[0][0] + 5}: intrinsic has no focal length", path=path, hint=hint)
    return PinholeCamera(ext, K / K[2, 2], dmin, dmax)


def read_camera(path: str | os.PathLike) -> PinholeCamera:
    """Read a LEVIR-NVS camera file (whitespace- or comma-separated). Raises :class:`CameraFileError`."""
    path = Path(path)
    if not path.is_file():
        raise InputFileNotFoundError("camera file not found", path=path, hint="check the path")
    try:
        text = path.read_text(encoding="utf-8", errors="strict")
    except UnicodeDecodeError:
        raise CameraFileError("not a text file", path=path, hint="camera files are plain text") from None
    return parse_camera_text(text, path)


def format_camera(cam: PinholeCamera) -> str:
    """The LEVIR-NVS text of a camera, 17 significant digits (exact float64 round trip)."""

    def row(values) -> str:
        return " ".join(f"{float(v):.17g}" for v in values)

    out = ["extrinsic"] + [row(r) for r in cam.extrinsic] + ["", "intrinsic"] + [row(r) for r in cam.intrinsic]
    out += ["", row([cam.depth_min, cam.depth_max]), ""]
    return "\n".join(out)


def write_camera(path: str | os.PathLike, cam: PinholeCamera, *, overwrite: bool = True) -> Path:
    """Write ``cam`` in the LEVIR-NVS format (atomic)."""
    from geoimplicit.outputs import atomic_output

    path = Path(path)
    with atomic_output(path, overwrite=overwrite) as tmp:
        tmp.write_text(format_camera(cam), encoding="utf-8")
    return path


def write_cameras_dir(folder: str | os.PathLike, cameras: dict[str, PinholeCamera], *,
                      overwrite: bool = False) -> Path:
    """Write ``cameras`` (id -> camera, world coordinates) as a LEVIR-NVS ``Cams`` folder ``folder/<id>.txt``
    (what :func:`read_cameras_dir` and ``ViewSet.load`` read back), atomically: the folder appears complete or
    not at all; an existing folder is replaced only with ``overwrite``, and then its old camera files go too
    (a stale ``NNN.txt`` would be read back as a camera) while any other file stays."""
    from geoimplicit.outputs import atomic_output

    folder = Path(folder)
    old_cameras = sorted(p.name for p in folder.glob("*.txt")) if folder.is_dir() else []
    products = old_cameras + [f"{vid}.txt" for vid in cameras]
    with atomic_output(folder, overwrite, products=products) as tmp:
        tmp.mkdir(parents=True)
        for vid, cam in cameras.items():
            (tmp / f"{vid}.txt").write_text(format_camera(cam), encoding="utf-8")
    return folder


def read_cameras_dir(folder: str | os.PathLike) -> dict[str, PinholeCamera]:
    """Every ``*.txt`` camera of a folder, keyed by file stem, sorted."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputFileNotFoundError("camera folder not found", path=folder, hint="pass a folder of NNN.txt files")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() == ".txt")
    if not files:
        raise CameraFileError("no camera files (*.txt) in folder", path=folder, hint="expected Cams/NNN.txt files")
    return {p.stem: read_camera(p) for p in files}


# --------------------------------------------------------------------------------------------------------------
# Affine cameras (JSON)
# --------------------------------------------------------------------------------------------------------------
def read_affine_cameras(json_path: str | os.PathLike) -> dict[str, AffineCamera]:
    """Read affine cameras from JSON: ``{"sets": {name: {"crs", "images": {img: {"P_affine_2x4", ...}}}}}``.

    A flat ``{"crs": ..., "images": {...}}`` or ``{img: {"P": ...}}`` is accepted too. Keys are image names.
    """
    path = Path(json_path)
    if not path.is_file():
        raise InputFileNotFoundError("affine camera file not found", path=path, hint="check the path")
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CameraFileError(f"not valid JSON ({exc})", path=path, hint="expected a JSON file of 2x4 matrices") from None
    sets = doc.get("sets") if isinstance(doc, dict) else None
    if sets is None:
        sets = {"": doc}
    cams: dict[str, AffineCamera] = {}
    for set_name, entry in sets.items():
        if not isinstance(entry, dict):
            continue
        crs = entry.get("crs")
        images = entry.get("images", entry)
        for name, rec in images.items():
            if not isinstance(rec, dict):
                continue
            P = rec.get("P_affine_2x4", rec.get("P"))
            if P is None:
                continue
            arr = np.asarray(P, dtype=np.float64)
            if arr.shape != (2, 4) or not np.all(np.isfinite(arr)):
                raise CameraFileError(f"camera {name!r}: P must be a finite 2x4 matrix, got shape {arr.shape}", path=path)
            cams[name] = AffineCamera(arr, rec.get("width"), rec.get("height"), crs, name)
    if not cams:
        raise CameraFileError("no affine cameras found", path=path, hint="expected 'P_affine_2x4' entries")
    return cams


# --------------------------------------------------------------------------------------------------------------
# View sets (LEVIR-NVS layout)
# --------------------------------------------------------------------------------------------------------------
def read_view_split(path: str | os.PathLike, ids: list[str]) -> tuple[list[str], list[str]]:
    """Parse ``view_split.txt``: train count, train ids, [test count, test ids]; test = the others if absent."""
    path = Path(path)
    tokens: list[tuple[int, str]] = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        tokens += [(n, tok) for tok in _numbers(line.split("#", 1)[0])]
    by_int = {}
    for vid in ids:
        try:
            by_int[int(vid)] = vid
        except ValueError:
            by_int[vid] = vid

    def take(start: int) -> tuple[list[str], int]:
        n, tok = tokens[start]
        try:
            count = int(tok)
        except ValueError:
            raise CameraFileError(f"line {n}: expected a view count, found {tok!r}", path=path) from None
        if start + 1 + count > len(tokens):
            raise CameraFileError(f"line {n}: says {count} views but fewer ids follow", path=path)
        out = []
        for ln, t in tokens[start + 1 : start + 1 + count]:
            key = int(t) if t.lstrip("-").isdigit() else t
            if key not in by_int:
                raise CameraFileError(
                    f"line {ln}: view id {t!r} has no image/camera", path=path, hint="ids must match Images/NNN.png"
                )
            out.append(by_int[key])
        return out, start + 1 + count

    if not tokens:
        raise CameraFileError("view split is empty", path=path, hint="first line: the number of train views")
    train, nxt = take(0)
    if nxt < len(tokens):
        test, _ = take(nxt)
    else:
        test = [v for v in ids if v not in set(train)]
    return train, test


@dataclass
class ViewSet:
    """A folder of views in the LEVIR-NVS layout (``Images/``, ``Cams/``, ``Depths/``, ``Track/``)."""

    root: Path
    ids: list[str]
    image_paths: dict[str, Path]
    cameras: dict[str, PinholeCamera]
    depth_paths: dict[str, Path] = field(default_factory=dict)
    track: list[PinholeCamera] = field(default_factory=list)
    train_ids: list[str] = field(default_factory=list)
    test_ids: list[str] = field(default_factory=list)
    crs: object = None

    @classmethod
    def load(cls, folder: str | os.PathLike) -> "ViewSet":
        root = Path(folder)
        if not root.is_dir():
            raise InputFileNotFoundError("view folder not found", path=root, hint="pass a folder with Images/ and Cams/")
        img_dir, cam_dir = root / "Images", root / "Cams"
        for d in (img_dir, cam_dir):
            if not d.is_dir():
                raise CameraFileError(
                    f"missing {d.name}/ folder", path=root, hint="expected the LEVIR-NVS layout Images/NNN.png, Cams/NNN.txt"
                )
        images = {p.stem: p for p in sorted(img_dir.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES}
        cams = {p.stem: p for p in sorted(cam_dir.iterdir()) if p.suffix.lower() == ".txt"}
        if not images:
            raise CameraFileError("no images in Images/", path=img_dir, hint="expected NNN.png files")
        missing = sorted(set(images) - set(cams))
        if missing:
            raise CameraFileError(
                f"images without a camera file: {', '.join(missing[:5])}", path=cam_dir, hint="add Cams/<id>.txt"
            )
        ids = sorted(images)
        cameras = {}
        for vid in ids:
            cam = read_camera(cams[vid])
            w, h = _image_size(images[vid])
            cam.width, cam.height = w, h
            cameras[vid] = cam
        depth_paths = {}
        ddir = root / "Depths"
        if ddir.is_dir():
            for p in ddir.iterdir():
                if p.suffix.lower() in (".tif", ".tiff", ".pfm", ".npy") and p.stem in images:
                    depth_paths[p.stem] = p
        track: list[PinholeCamera] = []
        tdir = root / "Track"
        if tdir.is_dir():
            w0, h0 = cameras[ids[0]].width, cameras[ids[0]].height
            for p in sorted(tdir.iterdir()):
                if p.suffix.lower() == ".txt":
                    cam = read_camera(p)
                    cam.width, cam.height = w0, h0
                    track.append(cam)
        split = root / "view_split.txt"
        if split.is_file():
            train, test = read_view_split(split, ids)
        else:
            train, test = list(ids), []
        crs = None
        crs_file = root / "crs.txt"
        if crs_file.is_file():
            crs = _read_crs(crs_file)
        return cls(root, ids, images, cameras, depth_paths, track, train, test, crs)

    def read_image(self, vid: str) -> np.ndarray:
        """The image of view ``vid`` as float32 (H, W, 3) in [0, 1]."""
        return read_image(self.image_paths[vid])

    def read_depth(self, vid: str) -> np.ndarray | None:
        p = self.depth_paths.get(vid)
        return None if p is None else read_depth(p)


def _image_size(path: Path) -> tuple[int, int]:
    from PIL import Image

    try:
        with Image.open(path) as im:
            return im.size
    except Exception as exc:  # noqa: BLE001 - any decoder failure is a corrupt input
        raise CameraFileError(f"cannot read image ({exc})", path=path, hint="re-export it as PNG") from None


def read_image(path: str | os.PathLike) -> np.ndarray:
    """An image file as float32 (H, W, 3) in [0, 1] (grey -> 3 channels, alpha dropped, 16-bit scaled)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            arr = np.asarray(im)
    except Exception as exc:  # noqa: BLE001
        raise CameraFileError(f"cannot read image ({exc})", path=path, hint="re-export it as PNG") from None
    if arr.dtype == np.uint8:
        arr = arr.astype(np.float32) / 255.0
    elif arr.dtype == np.uint16:
        arr = arr.astype(np.float32) / 65535.0
    else:
        arr = arr.astype(np.float32)
        hi = float(np.nanmax(arr)) if arr.size else 1.0
        if hi > 1.0:
            arr = arr / hi
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    if arr.shape[2] == 4:
        arr = arr[:, :, :3]
    elif arr.shape[2] == 2:
        arr = np.repeat(arr[:, :, :1], 3, axis=2)
    return np.ascontiguousarray(arr)


def read_depth(path: str | os.PathLike) -> np.ndarray:
    """A depth map (float TIFF, .npy) as float32 (H, W); non-positive or non-finite = NaN."""
    path = Path(path)
    if path.suffix.lower() == ".npy":
        arr = np.load(path).astype(np.float32)
    else:
        from PIL import Image

        try:
            with Image.open(path) as im:
                arr = np.asarray(im).astype(np.float32)
        except Exception:  # noqa: BLE001 - PIL cannot read every float TIFF: try tifffile/rasterio
            arr = _read_tiff_fallback(path)
    if arr.ndim == 3:
        arr = arr[..., 0] if arr.shape[-1] <= 4 else arr[0]
    arr = arr.astype(np.float32)
    arr[~np.isfinite(arr) | (arr <= 0)] = np.nan
    return arr


def _read_tiff_fallback(path: Path) -> np.ndarray:
    try:
        import rasterio
    except ImportError:  # pragma: no cover
        raise CameraFileError("cannot read depth map", path=path, hint="write float32 TIFFs") from None
    try:
        with rasterio.open(path) as ds:
            return ds.read(1).astype(np.float32)
    except Exception as exc:  # noqa: BLE001
        raise CameraFileError(f"cannot read depth map ({exc})", path=path, hint="write float32 TIFFs") from None


def _read_crs(path: Path):
    text = path.read_text(encoding="utf-8").strip()
    try:
        from geoimplicit.io.crs import parse_crs

        return parse_crs(text, source=path)
    except ImportError:
        pass
    try:
        import pyproj

        return pyproj.CRS.from_user_input(text)
    except ImportError:
        return text
    except Exception as exc:  # noqa: BLE001
        raise CameraFileError(f"cannot parse CRS ({exc})", path=path, hint="write an EPSG code or WKT") from None
