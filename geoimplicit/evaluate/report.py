"""Write an accuracy report folder: report.json, report.csv, report.html, PNG figures, residual GeoTIFF.

The folder is written under a temporary name and renamed when complete (``atomic_output``).

Layout::

    REPORT_DIR/
      report.json      every number (machine-readable)
      report.csv       one row per group (overall, class, slope band, tile), one column per statistic
      report.html      the same for a person, with the figures
      residual.tif     prediction - truth on the truth's grid (COG, float32, nodata -9999, band unit)
      figures/error_map.png, histogram.png, cdf.png, per_class.png, per_slope.png, per_tile.png
"""

from __future__ import annotations

import csv
import html
import json
import math
import os
from pathlib import Path

import numpy as np

from geoimplicit.evaluate.metrics import STAT_KEYS
from geoimplicit.outputs import atomic_output

NODATA = -9999.0
# what a report folder holds (its manifest): --overwrite replaces these names and nothing else in the folder
REPORT_PRODUCTS = ("report.json", "report.csv", "report.html", "residual.tif", "figures")

_GROUP_TITLES = {
    "overall": "Overall",
    "overall_before_coregistration": "Overall, before co-registration",
    "per_class": "Per class",
    "per_slope_band": "Per slope band of the truth",
    "per_tile": "Per tile",
}


def _clean(value):
    """JSON-safe: NaN/inf -> None, numpy scalars -> Python."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def csv_rows(report: dict) -> list[dict]:
    """Flatten the report's statistics: one dict per group row (group, name, then STAT_KEYS)."""
    rows = []
    for group in ("overall", "overall_before_coregistration"):
        if report.get(group):
            rows.append({"group": group, "name": "all", **{k: report[group].get(k) for k in STAT_KEYS}})
    for group, label in (("per_class", "class"), ("per_slope_band", "band"), ("per_tile", "tile")):
        for entry in report.get(group) or []:
            rows.append({"group": group, "name": entry[label], **{k: entry.get(k) for k in STAT_KEYS}})
    return rows


def write_residual_tif(path: Path, residual: np.ndarray, grid, tags: dict | None = None,
                       unit: str | None = None) -> None:
    """The residual as a Cloud-Optimized GeoTIFF (float32, nodata -9999, band unit ``unit``)."""
    from geoimplicit.io.raster import write_geotiff

    data = np.where(np.isfinite(residual), residual, NODATA).astype(np.float32)
    write_geotiff(path, data, grid.transform, grid.crs, nodata=NODATA, cog=True, tags=tags,
                  band_descriptions=["residual = prediction - truth"], band_units=unit)


def _figures(folder: Path, residual: np.ndarray, report: dict, units: str) -> dict[str, str]:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.colors import TwoSlopeNorm

    folder.mkdir(parents=True, exist_ok=True)
    out: dict[str, str] = {}
    values = residual[np.isfinite(residual)]
    overall = report["overall"]

    # error map, diverging colours centred on 0, clipped at the 98th percentile of |e|
    limit = float(np.percentile(np.abs(values), 98)) if values.size else 1.0
    limit = limit if limit > 0 else 1.0
    fig, ax = plt.subplots(figsize=(7, 6))
    image = ax.imshow(np.ma.masked_invalid(residual), cmap="RdBu_r",
                      norm=TwoSlopeNorm(vcenter=0.0, vmin=-limit, vmax=limit), interpolation="nearest")
    ax.set_title("Residual: prediction - truth")
    ax.set_xlabel("column")
    ax.set_ylabel("row")
    bar = fig.colorbar(image, ax=ax, extend="both")
    bar.set_label(f"height error ({units})")
    fig.tight_layout()
    fig.savefig(folder / "error_map.png", dpi=110)
    plt.close(fig)
    out["error_map"] = "figures/error_map.png"

    if values.size:
        lo, hi = np.percentile(values, [0.5, 99.5])
        if hi <= lo:
            lo, hi = lo - 1.0, hi + 1.0
        fig, ax = plt.subplots(figsize=(7, 4))
        ax.hist(np.clip(values, lo, hi), bins=100, range=(lo, hi), color="0.35")
        ax.axvline(0.0, color="k", lw=0.8)
        ax.axvline(overall["median"], color="tab:red", lw=1.2, label=f"median {overall['median']:.3f}")
        ax.axvline(overall["bias"], color="tab:blue", lw=1.2, ls="--", label=f"mean {overall['bias']:.3f}")
        ax.set_xlabel(f"prediction - truth ({units}); 0.5-99.5 percentile range, tails clipped")
        ax.set_ylabel("cells")
        ax.legend()
        fig.tight_layout()
        fig.savefig(folder / "histogram.png", dpi=110)
        plt.close(fig)
        out["histogram"] = "figures/histogram.png"

        abs_sorted = np.sort(np.abs(values))
        frac = np.arange(1, abs_sorted.size + 1) / abs_sorted.size
        step = max(1, abs_sorted.size // 5000)
        fig, ax = plt.subplots(figsize=(7, 4))
        ax.plot(abs_sorted[::step], frac[::step], color="k")
        for key, colour in (("le68", "tab:green"), ("le90", "tab:orange"), ("le95", "tab:red")):
            ax.axvline(overall[key], color=colour, ls=":", label=f"{key.upper()} {overall[key]:.3f}")
        ax.set_xlim(0, max(float(np.percentile(abs_sorted, 99)), 1e-9))
        ax.set_ylim(0, 1)
        ax.set_xlabel(f"|prediction - truth| ({units})")
        ax.set_ylabel("fraction of cells")
        ax.set_title("Cumulative distribution of absolute errors")
        ax.legend(loc="lower right")
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(folder / "cdf.png", dpi=110)
        plt.close(fig)
        out["cdf"] = "figures/cdf.png"

    for group, label, name in (("per_class", "class", "per_class"), ("per_slope_band", "band", "per_slope"),
                               ("per_tile", "tile", "per_tile")):
        entries = [e for e in report.get(group) or [] if e.get("count")]
        if not entries or len(entries) > 60:
            continue
        names = [str(e[label]) for e in entries]
        x = np.arange(len(entries))
        width = 0.27
        fig, ax = plt.subplots(figsize=(max(6, 0.6 * len(entries) + 3), 4))
        for i, (key, colour) in enumerate((("median", "tab:blue"), ("nmad", "tab:orange"), ("rmse", "tab:red"))):
            ax.bar(x + (i - 1) * width, [e[key] if e[key] is not None else np.nan for e in entries], width,
                   label=key.upper() if key != "median" else "median", color=colour)
        ax.axhline(0.0, color="k", lw=0.8)
        ax.set_xticks(x, names, rotation=30 if len(entries) > 4 else 0, ha="right" if len(entries) > 4 else "center")
        ax.set_ylabel(units)
        ax.set_title(_GROUP_TITLES[group])
        ax.legend()
        fig.tight_layout()
        fig.savefig(folder / f"{name}.png", dpi=110)
        plt.close(fig)
        out[name] = f"figures/{name}.png"
    return out


def _fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e4 else f"{value:.6g}"
    return html.escape(str(value))


def _kept(coreg: dict) -> str:
    k = coreg.get("kept_iteration", coreg["iterations"])
    return ("no shift (no iteration improved the fit)" if k == 0
            else f"the shift of iteration {k} (the best fit: lowest mean absolute deviation from the median)")


def _html(report: dict) -> str:
    units = report["units"]["vertical"]
    keys = list(STAT_KEYS)
    head = "".join(f"<th>{html.escape(k)}</th>" for k in ["group", "name", *keys])

    def table(rows):
        body = "".join(
            "<tr>" + "".join(f"<td>{_fmt(r.get(k))}</td>" for k in ["group", "name", *keys]) + "</tr>" for r in rows
        )
        return f"<table><tr>{head}</tr>{body}</table>"

    rows = csv_rows(report)
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>DSM accuracy report</title>",
        "<style>body{font-family:sans-serif;margin:2em;max-width:1200px}table{border-collapse:collapse;"
        "font-size:12px}td,th{border:1px solid #bbb;padding:2px 6px;text-align:right}th{background:#eee}"
        "img{max-width:100%;margin:8px 0}</style></head><body>",
        "<h1>DSM accuracy report</h1>",
        f"<p>Prediction <code>{html.escape(report['inputs']['prediction'])}</code> against truth "
        f"<code>{html.escape(report['inputs']['truth'])}</code>. Residual = prediction - truth, in {units}; "
        f"grid {report['grid']['shape'][1]} x {report['grid']['shape'][0]} cells, {html.escape(report['grid']['crs'])}, "
        f"pixel {report['grid']['resolution'][0]:.6g} {html.escape(report['units']['horizontal'])}.</p>",
        f"<p>Valid overlap: {report['overlap']['both_valid']:,} cells, "
        f"{100 * report['overlap']['valid_overlap_fraction']:.2f}% of the truth's valid cells.</p>",
    ]
    o = report["overall"]
    if o.get("count"):
        parts.append(
            f"<p><b>Overall</b>: bias {_fmt(o['bias'])}, median {_fmt(o['median'])}, NMAD {_fmt(o['nmad'])}, "
            f"RMSE {_fmt(o['rmse'])}, MAE {_fmt(o['mae'])}, LE90 {_fmt(o['le90'])} {units}; "
            f"{100 * o['within_1']:.1f}% of cells within 1 {units}.</p>"
        )
    c = report.get("coregistration")
    if c:
        parts.append(
            "<h2>Co-registration (Nuth and Kaab 2011)</h2>"
            f"<p>Shift that moves the prediction onto the truth: dx = {c['dx_px']:.3f} px, dy = {c['dy_px']:.3f} px "
            "(columns right, rows down); "
            f"{c['dx_crs']:.6g}, {c['dy_crs']:.6g} {html.escape(c['crs_units'])} (x east, y north); "
            f"{c['dx_m']:.3f} m east, {c['dy_m']:.3f} m north; dz (median after the shift, not removed) = "
            f"{c['dz']:.3f} {units}. {c['iterations']} iterations; stopped: {html.escape(c.get('stop_reason', ''))}; "
            f"kept {_kept(c)}; NMAD {c['nmad_before']:.3f} -> {c['nmad_after']:.3f}. Statistics below are after "
            "the horizontal shift.</p>"
        )
    figures = report.get("files", {}).get("figures", {})
    for key in ("error_map", "histogram", "cdf"):
        if key in figures:
            parts.append(f"<img src='{figures[key]}' alt='{key}'>")
    parts.append("<h2>Statistics</h2>" + table(rows))
    for key in ("per_class", "per_slope", "per_tile"):
        if key in figures:
            parts.append(f"<img src='{figures[key]}' alt='{key}'>")
    parts.append(
        "<p>NMAD = 1.4826 x median(|e - median(e)|); LEp = p-th percentile of |e|; within_T = fraction of cells "
        f"with |e| &le; T {units}; std is the population standard deviation. Residual raster: "
        "<a href='residual.tif'>residual.tif</a>; all numbers: <a href='report.json'>report.json</a>, "
        "<a href='report.csv'>report.csv</a>.</p>"
    )
    parts.append(f"<p style='color:#777'>geoimplicit {html.escape(report['software']['version'])}</p></body></html>")
    return "\n".join(parts)


def write_report(output_dir: str | os.PathLike, report: dict, residual: np.ndarray, grid, *,
                 overwrite: bool = False, figures: bool = True, inputs=()) -> dict[str, Path]:
    """Write the report folder atomically; return the paths of its files.

    ``report`` is the dictionary built by :func:`geoimplicit.evaluate.evaluate_dsm` (its ``files`` entry is
    filled in here). Into an existing folder only :data:`REPORT_PRODUCTS` are replaced; a folder holding one of
    ``inputs`` is refused.
    """
    output_dir = Path(output_dir)
    with atomic_output(output_dir, overwrite=overwrite, products=REPORT_PRODUCTS, inputs=inputs) as tmp:
        tmp.mkdir(parents=True)
        units = report["units"]["vertical"]
        from geoimplicit.io.crs import height_unit

        write_residual_tif(tmp / "residual.tif", residual, grid,
                           tags={"GEOIMPLICIT_RESIDUAL": "prediction - truth", "UNITS": units},
                           unit=height_unit(grid.crs))
        figs = _figures(tmp / "figures", residual, report, units) if figures else {}
        report["files"] = {"json": "report.json", "csv": "report.csv", "html": "report.html",
                           "residual": "residual.tif", "figures": figs}
        clean = _clean(report)
        (tmp / "report.json").write_text(json.dumps(clean, indent=2, allow_nan=False))
        with open(tmp / "report.csv", "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=["group", "name", *STAT_KEYS])
            writer.writeheader()
            for row in csv_rows(clean):
                writer.writerow({k: ("" if v is None else v) for k, v in row.items()})
        (tmp / "report.html").write_text(_html(clean))
    files = {"report_dir": output_dir, "json": output_dir / "report.json", "csv": output_dir / "report.csv",
             "html": output_dir / "report.html", "residual": output_dir / "residual.tif"}
    files.update({k: output_dir / v for k, v in report["files"]["figures"].items()})
    return files
