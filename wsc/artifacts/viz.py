"""`wsc viz OUT [--layer N] [--highlight [LAYER:KERNEL[@X,Y]]] -o FILE.svg|.png|.html`: pictures of a compile,
from its output folder alone.

The map of the wafer with one layer's kernels on it, where that layer's links are hot, and the per-layer
time split into compute, fabric and weight streaming. `--highlight` outlines one kernel (and a PE of it) on
the map: the one named, or the one report.json's verification found computing a wrong value. The HTML is
one self-contained page (no fetches, so it opens offline and can be mailed): the summary, the SVG inline
and the per-layer table; every compile writes it as report.html.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

from wsc.artifacts import viz_data as vd
from wsc.artifacts.atomic import unwritable, write_atomic
from wsc.artifacts.report import SCHEMA_VERSION
from wsc.artifacts.viz_svg import render_svg
from wsc.core.errors import WscError

FORMATS = (".svg", ".png", ".html")
# A malformed file's error is quoted in the one line when this short; else only its type (--debug: all of it).
MALFORMED_QUOTE_CHARS = 60


def load(out: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """placement.json and report.json of a compile's output folder, or a one-line error naming what is
    wrong with it."""
    if not out.is_dir():
        raise WscError(f"{out} is not a folder; give the --out folder of a `wsc compile`")
    found = []
    for name in ("placement.json", "report.json"):
        path = out / name
        if not path.is_file():
            raise WscError(f"{path} is missing; give the --out folder of a `wsc compile`")
        try:
            found.append(json.loads(path.read_text()))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise WscError(f"{path} is not readable JSON ({str(error).splitlines()[0]}); compile again") from None
        if not isinstance(found[-1], dict):
            raise WscError(f"{path} is not a JSON object; compile again")
        schema = found[-1].get("schema", 1)
        if not isinstance(schema, int) or isinstance(schema, bool) or schema < 1:
            raise WscError(f"{path} has schema {schema!r}, not a version number; compile again")
        if schema > SCHEMA_VERSION:
            raise WscError(f"{path} has schema {schema}, newer than this wsc reads ({SCHEMA_VERSION}); draw it with "
                           "the wsc that wrote it, or compile again")
    return found[0], found[1]


def render(placement: dict[str, Any], report: dict[str, Any], fmt: str, layer_index: int | None = None,
           source: str = "the output folder", highlight: str | None = None) -> bytes:
    """The picture in `fmt` (.svg, .png or .html) as bytes. `highlight` is `--highlight`'s value (see
    `viz_data.highlight`). Missing keys or wrong types in the artifacts become a one-line error rather than
    a traceback."""
    try:
        if fmt == ".html" and not placement["layers"] and highlight is None:
            return render_html(placement, report, None).encode()  # a program of layout ops only: no kernels
        layer, marked = vd.highlight(placement, report, highlight, layer_index)
        if fmt == ".svg":
            return render_svg(placement, report, layer, marked).encode()
        if fmt == ".html":
            return render_html(placement, report, layer, marked).encode()
        from wsc.artifacts.viz_png import render_png  # matplotlib only when a PNG is asked for

        return render_png(placement, report, layer, marked)
    except (KeyError, TypeError, ValueError, IndexError, AttributeError) as error:
        said = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
        if len(said) > MALFORMED_QUOTE_CHARS:
            said = type(error).__name__
        raise WscError(f"{source} has a malformed placement.json or report.json ({said}); compile again",
                       details=f"{type(error).__name__}: {error}") from None


def main(out: str, output: str, layer: int | None = None, highlight: str | None = None) -> int:
    """`wsc viz`; `highlight` None (not given), "" (given bare: report.json's verification.located) or
    LAYER:KERNEL[@X,Y]."""
    fmt = Path(output).suffix.lower()
    if fmt not in FORMATS:
        raise WscError(f"-o {output}: unknown picture format {fmt or '(none)'!r}; use .svg, .png or .html")
    target = Path(output)
    if target.is_dir():
        raise WscError(f"-o {output} is a folder; give a file name ending in .svg, .png or .html")
    problem = unwritable(target.parent)
    if problem:
        raise WscError(f"-o {output} cannot be written: {problem}; give a file in a folder you can write")
    placement, report = load(Path(out))
    picture = render(placement, report, fmt, layer, source=out, highlight=highlight)
    try:
        write_atomic(target, picture)
    except OSError as error:  # the disk filled up: nothing is left (written under a temporary name)
        raise WscError(f"cannot write -o {output} ({error.strerror or type(error).__name__}); free some space or "
                       "give another file") from None
    print(f"wrote {output}")
    return 0


def _cell(value: Any) -> str:
    return escape(str(value))


def summary_rows(report: dict[str, Any]) -> list[tuple[str, str]]:
    m, t, s, v = report["model"], report["target"], report["simulation"], report["verification"]
    args = " ".join(f"{k}={val}" for k, val in (m.get("args") or {}).items())
    if v["status"] == "skipped":
        check = f"skipped ({v.get('note', '--no-verify')})"
    else:
        err = "nan" if v.get("max_abs_err") is None else f"{v['max_abs_err']:.2e}"
        ratio = v.get("error_ratio")
        share = f", worst element {ratio:.2g} of its bound" if ratio is not None else ""
        check = f"{v['status']}: max abs error {err}{share} (tolerance {v.get('tolerance', 0):g} x the derived bound)"
    return [
        ("model", f"{m['name']} {args} — {m['params'] / 1e6:.1f}M params, {m['layers']} layers, "
                  f"{m['flops_per_step'] / 1e9:.3g} GFLOP per step"),
        ("target", f"{t['name']}: {t['rows']}x{t['cols']} PEs at {t['clock_hz'] / 1e6:.0f} MHz"),
        ("step time", f"{vd.seconds_text(s['step_seconds'])} ({s.get('mode', '')}, {s.get('dtype', '')})"),
        ("bound", f"{vd.seconds_text(s['bound_seconds'])} (" + ", ".join(
            f"{k} {vd.seconds_text(val)}" for k, val in s.get("bounds", {}).items()) + ")"),
        ("bottleneck", f"{s['bottleneck']}"),
        ("throughput", f"{s.get('tokens_per_second', 0):,.0f} tokens/s, compute utilisation "
                       f"{s.get('compute_utilization', 0):.2%}"),
        ("verification", check),
    ]


def render_html(placement: dict[str, Any], report: dict[str, Any], layer: dict[str, Any] | None,
                highlight: vd.Highlight | None = None) -> str:
    """The page; `layer` None for a program without layers (only layout ops, which take no PEs)."""
    summary = summary_rows(report) + ([("highlight", highlight.label)] if highlight else [])
    rows = "".join(f"<tr><th>{_cell(k)}</th><td>{_cell(v)}</td></tr>" for k, v in summary)
    head = ("<tr><th>#</th><th>layer</th><th>seconds</th><th>bound</th><th>compute</th><th>fabric</th>"
            "<th>stream</th><th>GFLOP</th><th>weights</th><th>PEs</th></tr>")
    body = "".join(
        f"<tr><td>{i}</td><td>{_cell(e['layer'])}</td><td>{vd.seconds_text(e['seconds'])}</td>"
        f"<td>{_cell(e['bound'])}</td><td>{vd.seconds_text(e['compute_seconds'])}</td>"
        f"<td>{vd.seconds_text(e['fabric_seconds'])}</td><td>{vd.seconds_text(e['stream_seconds'])}</td>"
        f"<td>{e.get('flops', 0) / 1e9:.3g}</td><td>{vd.bytes_text(e.get('weight_bytes', 0))}</td>"
        f"<td>{e.get('pes', 0):,}</td></tr>"
        for i, e in enumerate(report["simulation"].get("layers", [])))
    name = _cell(f"wsc: {report['model']['name']} on {report['target']['name']}")
    picture = ("<p>The program has no kernels (only layout ops, which are routing): nothing is placed.</p>"
               if layer is None else render_svg(placement, report, layer, highlight))
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{name}</title>
<style>
body {{ font-family: sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; margin: 1em 0; }}
th, td {{ border: 1px solid #ccc; padding: 3px 8px; text-align: left; }}
table.layers td {{ text-align: right; font-variant-numeric: tabular-nums; }}
svg {{ max-width: 100%; height: auto; }}
</style></head>
<body>
<h1>{name}</h1>
<table class="summary">{rows}</table>
<h2>Placement, link load and per-layer time</h2>
{picture}
<h2>Layers</h2>
<table class="layers">{head}{body}</table>
</body></html>
"""
