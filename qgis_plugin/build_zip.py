"""Build the zip that QGIS's "Install from ZIP" accepts: one top-level folder, the plugin package.

    python qgis_plugin/build_zip.py dist/geoimplicit_qgis_plugin.zip

Only source files go in (no __pycache__, *.pyc, editor or test leftovers). Uses the standard library only,
so any Python 3 builds it.
"""

from __future__ import annotations

import argparse
import configparser
import sys
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
PLUGIN_DIR = HERE / "geoimplicit_qgis"
INCLUDE_SUFFIXES = {".py", ".txt", ".svg", ".png", ".md", ".qml", ".ui"}
EXCLUDE_PARTS = {"__pycache__", ".pytest_cache", ".mypy_cache", ".git"}


def plugin_files(plugin_dir: Path = PLUGIN_DIR):
    """The files that belong in the zip, sorted (reproducible archives)."""
    for path in sorted(plugin_dir.rglob("*")):
        if not path.is_file() or EXCLUDE_PARTS.intersection(path.relative_to(plugin_dir).parts):
            continue
        if path.suffix in INCLUDE_SUFFIXES or path.name == "LICENSE":
            yield path


def check_metadata(plugin_dir: Path = PLUGIN_DIR) -> dict:
    """The [general] section of metadata.txt, checked for what the plugin manager requires."""
    parser = configparser.ConfigParser(interpolation=None)
    if not parser.read(plugin_dir / "metadata.txt", encoding="utf-8"):
        raise SystemExit(f"{plugin_dir / 'metadata.txt'}: missing")
    general = dict(parser["general"])
    missing = [k for k in ("name", "qgisminimumversion", "description", "about", "version", "author", "email",
                           "repository") if not general.get(k)]
    if missing:
        raise SystemExit(f"{plugin_dir / 'metadata.txt'}: missing keys {', '.join(missing)}")
    if general.get("hasprocessingprovider", "").lower() != "yes":
        raise SystemExit(f"{plugin_dir / 'metadata.txt'}: hasProcessingProvider=yes is required")
    return general


def build(output: Path, plugin_dir: Path = PLUGIN_DIR) -> Path:
    """Write the zip to ``output`` (atomically) and return its path."""
    meta = check_metadata(plugin_dir)
    output = Path(output).resolve()
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(f".{output.name}.partial")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for path in plugin_files(plugin_dir):
            arcname = f"{plugin_dir.name}/{path.relative_to(plugin_dir).as_posix()}"
            info = zipfile.ZipInfo(arcname, date_time=(2024, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, path.read_bytes())
    tmp.replace(output)
    print(f"{output} (plugin '{meta['name']}' {meta['version']}, folder {plugin_dir.name}/)")
    return output


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output", nargs="?", default="dist/geoimplicit_qgis_plugin.zip")
    args = parser.parse_args(argv)
    build(Path(args.output))


if __name__ == "__main__":
    main(sys.argv[1:])
