"""`wsc viz`: SVG, PNG and HTML pictures of a compile, read back and checked element by element."""

from __future__ import annotations

import json
import re
import shutil
import struct
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

from wsc.artifacts.viz_data import HIGHLIGHT, PALETTE, TERM_COLOURS, dead_runs, link_load
from wsc.artifacts.viz_png import PNG_SIZE
from wsc.cli import main

MODELS = Path(__file__).resolve().parent / "models"
SVG = "{http://www.w3.org/2000/svg}"


EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.fixture(scope="module", params=["tiny", "1.3B"])
def out(request, tiny_out, tmp_path_factory) -> Path:
    """The tiny GPT's compile, and Cerebras-GPT 1.3B's on the whole cs2-sim wafer (built without weights;
    the greedy placer keeps it quick): every picture test runs on both."""
    if request.param == "tiny":
        return tiny_out
    folder = tmp_path_factory.mktemp("gpt_1_3b")
    assert main(["compile", str(EXAMPLES / "cerebras_gpt.py"), "--target", "cs2-sim", "--model-arg", "size=1.3B",
                 "--strategy", "greedy", "--no-verify", "--out", str(folder)]) == 0
    return folder


@pytest.fixture(scope="module")
def placement(out) -> dict:
    return json.loads((out / "placement.json").read_text())


def biggest_layer(placement: dict) -> dict:
    most = max(len(layer["kernels"]) for layer in placement["layers"])
    return next(layer for layer in placement["layers"] if len(layer["kernels"]) == most)


def kernel_rects(svg: Path) -> list[ET.Element]:
    root = ET.parse(svg).getroot()
    return [r for r in root.iter(f"{SVG}rect") if r.get("class") == "kernel"]


def test_svg_has_one_labelled_rect_per_kernel_of_the_default_layer(out, placement, capsys):
    assert main(["viz", str(out), "-o", str(out / "map.svg")]) == 0
    layer = biggest_layer(placement)
    rects = kernel_rects(out / "map.svg")
    assert len(rects) == len(layer["kernels"])
    for rect, kernel in zip(rects, layer["kernels"], strict=True):
        assert (rect.get("x"), rect.get("y"), rect.get("width"), rect.get("height")) == tuple(
            str(kernel[k]) for k in ("x", "y", "w", "h"))
        assert rect.find(f"{SVG}title").text.startswith(f"{kernel['name']} ({kernel['op']})")
    root = ET.parse(out / "map.svg").getroot()
    labels = [t.text for t in root.iter(f"{SVG}text") if t.get("class") == "label"]
    assert labels == [k["op"] for k in layer["kernels"]]
    assert len({r.get("fill") for r in rects}) == len(rects)  # coloured by kernel
    # The timeline: three bars per layer.
    bars = [r for r in root.iter(f"{SVG}rect") if (r.get("class") or "").startswith("bar ")]
    assert len(bars) == 3 * len(placement["layers"])


def test_svg_of_a_chosen_layer(out, placement):
    assert main(["viz", str(out), "--layer", "3", "-o", str(out / "head.svg")]) == 0
    head = next(layer for layer in placement["layers"] if layer["index"] == 3)
    assert len(kernel_rects(out / "head.svg")) == len(head["kernels"])


def test_dead_pes_are_drawn_as_runs(out, tmp_path):
    faulty = tmp_path / "faulty"
    shutil.copytree(out, faulty)
    data = json.loads((faulty / "placement.json").read_text())
    data["mesh"]["dead_pes"] = [[2, 3], [2, 4], [2, 5], [7, 0], [9, 9]]
    (faulty / "placement.json").write_text(json.dumps(data))
    assert main(["viz", str(faulty), "-o", str(faulty / "map.svg")]) == 0
    root = ET.parse(faulty / "map.svg").getroot()
    (dead,) = [p for p in root.iter(f"{SVG}path") if p.get("class") == "dead"]
    assert dead.get("d") == "M3 2h3v1h-3zM0 7h1v1h-1zM9 9h1v1h-1z"
    assert dead_runs({"rows": 2, "cols": 3, "dead_pes": [[0, 1], [0, 0], [1, 0]]}) == [(0, 0, 2), (1, 0, 1)]


def test_link_load_counts_each_pe_of_a_lane_once():
    layer = {"edges": [{"bytes": 20, "route": {"lanes": 2, "paths": [[[0, 0], [0, 3], [2, 3]], [[3, 3], [3, 1]]]}}]}
    load = link_load(layer, 4, 4)
    expected = np.zeros((4, 4))
    expected[0, 0:4] = 10
    expected[1:3, 3] = 10
    expected[3, 1:4] = 10
    assert np.array_equal(load, expected)


def test_png_header_and_size(out):
    assert main(["viz", str(out), "-o", str(out / "map.png")]) == 0
    data = (out / "map.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    assert struct.unpack(">II", data[16:24]) == PNG_SIZE


def test_html_is_self_contained_with_svg_and_layer_table(out, placement):
    assert main(["viz", str(out), "-o", str(out / "map.html")]) == 0
    for page in (out / "map.html", out / "report.html"):  # every compile writes the same page
        html = page.read_text()
        assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", html, re.IGNORECASE)
        assert "<script" not in html and "<link" not in html and "@import" not in html
        assert "<svg" in html and 'class="kernel"' in html
        table = re.search(r'<table class="layers">(.*?)</table>', html, re.S).group(1)
        assert table.count("<tr>") == 1 + len(placement["layers"])
        for layer in placement["layers"]:
            assert f"<td>{layer['name']}</td>" in table
        # The summary names the bottleneck the report holds, in its row and in the timeline's caption.
        bottleneck = json.loads((out / "report.json").read_text())["simulation"]["bottleneck"]
        assert f"<tr><th>bottleneck</th><td>{bottleneck}</td></tr>" in html and f"{bottleneck}-bound" in html


def test_html_bottleneck_is_the_reports(out, tmp_path):
    """The page reads the word from report.json: another bottleneck there gives another word on the page."""
    folder = tmp_path / "other"
    shutil.copytree(out, folder)
    report = json.loads((folder / "report.json").read_text())
    was = report["simulation"]["bottleneck"]
    report["simulation"]["bottleneck"] = other = next(w for w in ("compute", "fabric", "stream") if w != was)
    (folder / "report.json").write_text(json.dumps(report))
    assert main(["viz", str(folder), "-o", str(folder / "map.html")]) == 0
    html = (folder / "map.html").read_text()
    assert f"<tr><th>bottleneck</th><td>{other}</td></tr>" in html and f"{other}-bound" in html
    assert f"<td>{was}</td></tr>" not in html


@pytest.mark.parametrize("args", [["-o", "map.pdf"], ["-o", "map"]])
def test_bad_extension_is_one_line_exit_2(out, args, capsys):
    assert main(["viz", str(out), *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and ".svg, .png or .html" in err


def test_missing_or_malformed_folder_is_one_line_exit_2(out, tmp_path, capsys):
    assert main(["viz", str(tmp_path / "nope"), "-o", str(tmp_path / "x.svg")]) == 2
    broken = tmp_path / "broken"
    shutil.copytree(out, broken)
    (broken / "report.json").write_text("{not json")
    assert main(["viz", str(broken), "-o", str(tmp_path / "y.svg")]) == 2
    (broken / "report.json").write_text("{}")
    assert main(["viz", str(broken), "-o", str(tmp_path / "z.svg")]) == 2
    assert main(["viz", str(out), "--layer", "99", "-o", str(tmp_path / "w.svg")]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 4 and all(line.startswith("error: ") for line in lines)
    assert "not a folder" in lines[0] and "not readable JSON" in lines[1] and "malformed" in lines[2]
    assert not any((tmp_path / n).exists() for n in ("x.svg", "y.svg", "z.svg", "w.svg"))


# ------------------------------------------------------------------------------------------ --highlight


def highlighted(svg: Path) -> tuple[list[ET.Element], list[ET.Element], list[ET.Element]]:
    """The highlight's outline, its PE marks and its label."""
    root = ET.parse(svg).getroot()
    marks = [e for e in root.iter() if (e.get("class") or "").startswith("highlight")]
    return ([e for e in marks if e.get("class") == "highlight" and e.tag == f"{SVG}rect"],
            [e for e in marks if e.get("class") == "highlight-pe"],
            [e for e in marks if e.get("class") == "highlight-label"])


def last_layer(placement: dict) -> dict:
    """The head: never the layer drawn by default, so drawing it shows the highlight chose the layer."""
    layer = placement["layers"][-1]
    assert layer is not biggest_layer(placement)
    return layer


def test_highlight_outlines_the_kernel_and_marks_its_pe_in_svg(out, placement, tmp_path):
    layer = last_layer(placement)
    kernel = layer["kernels"][-1]
    x, y = kernel["x"] + kernel["w"] // 2, kernel["y"] + kernel["h"] - 1
    svg = tmp_path / "hl.svg"
    assert main(["viz", str(out), "--highlight", f"{layer['index']}:{kernel['name']}@{x},{y}", "-o", str(svg)]) == 0
    (outline,), pe, (label,) = highlighted(svg)
    assert [outline.get(a) for a in ("x", "y", "width", "height")] == [str(kernel[k]) for k in ("x", "y", "w", "h")]
    assert outline.get("fill") == "none" and outline.get("stroke") == HIGHLIGHT
    # Thick: six times the kernels' own outline (3 px on screen).
    rects = kernel_rects(svg)
    assert float(outline.get("stroke-width")) == pytest.approx(6 * float(rects[0].get("stroke-width")), rel=1e-3)
    cell = next(e for e in pe if e.tag == f"{SVG}rect")
    assert (cell.get("x"), cell.get("y"), cell.get("width"), cell.get("height")) == (str(x), str(y), "1", "1")
    assert label.text == f"layer {layer['index']} {kernel['name']} ({kernel['op']}) PE ({x}, {y})"
    # The layer drawn is the highlighted one.
    assert len(rects) == len(layer["kernels"])
    assert f"layer {layer['index']} {layer['name']}; highlighted" in ET.parse(svg).getroot().find(f"{SVG}title").text
    # No other element uses the highlight's colour, and it is none of the kernels' or the timeline's.
    assert HIGHLIGHT not in PALETTE and HIGHLIGHT not in TERM_COLOURS.values()
    others = [e for e in ET.parse(svg).getroot().iter() if not (e.get("class") or "").startswith("highlight")]
    assert not [e for e in others if HIGHLIGHT in (e.get("fill"), e.get("stroke"))]


def located_folder(out: Path, tmp_path: Path, located) -> Path:
    """A copy of the compile's folder whose report.json says the verification located `located`."""
    folder = tmp_path / "located"
    shutil.copytree(out, folder, dirs_exist_ok=True)
    report = json.loads((folder / "report.json").read_text())
    if located is None:
        report["verification"].pop("located", None)
    else:
        report["verification"]["located"] = located
    (folder / "report.json").write_text(json.dumps(report))
    return folder


def test_bare_highlight_reads_the_located_kernel_from_report_json(tiny_out, tmp_path):
    placement = json.loads((tiny_out / "placement.json").read_text())
    layer = last_layer(placement)
    kernel = layer["kernels"][0]
    pe = [kernel["x"] + kernel["w"] - 1, kernel["y"]]
    folder = located_folder(tiny_out, tmp_path, {"kind": "kernel", "layer_index": layer["index"],
                                                 "layer": layer["name"], "kernel": kernel["name"], "pe": pe})
    assert main(["viz", str(folder), "--highlight", "-o", str(folder / "hl.svg")]) == 0
    (outline,), marks, _ = highlighted(folder / "hl.svg")
    assert (outline.get("x"), outline.get("y")) == (str(kernel["x"]), str(kernel["y"]))
    assert (marks[0].get("x"), marks[0].get("y")) == tuple(map(str, pe))
    assert len(kernel_rects(folder / "hl.svg")) == len(layer["kernels"])
    # `pe` null: the kernel alone.
    folder = located_folder(tiny_out, tmp_path, {"layer_index": layer["index"], "kernel": kernel["name"], "pe": None})
    assert main(["viz", str(folder), "--highlight", "--layer", str(layer["index"]), "-o", str(folder / "k.svg")]) == 0
    outlines, marks, _ = highlighted(folder / "k.svg")
    assert len(outlines) == 1 and marks == []


def test_highlight_in_png_and_html(tiny_out, tmp_path):
    import matplotlib.image

    placement = json.loads((tiny_out / "placement.json").read_text())
    layer = last_layer(placement)
    kernel = layer["kernels"][0]
    spec = f"{layer['index']}:{kernel['name']}@{kernel['x']},{kernel['y']}"

    def magenta(png: Path) -> int:
        rgb = (matplotlib.image.imread(png)[..., :3] * 255).round().astype(int)
        return int((rgb == [255, 0, 255]).all(axis=-1).sum())

    assert main(["viz", str(tiny_out), "--layer", str(layer["index"]), "-o", str(tmp_path / "plain.png")]) == 0
    assert main(["viz", str(tiny_out), "--highlight", spec, "-o", str(tmp_path / "hl.png")]) == 0
    data = (tmp_path / "hl.png").read_bytes()
    assert struct.unpack(">II", data[16:24]) == PNG_SIZE
    assert magenta(tmp_path / "plain.png") == 0 and magenta(tmp_path / "hl.png") > 200  # the outline is drawn
    assert main(["viz", str(tiny_out), "--highlight", spec, "-o", str(tmp_path / "hl.html")]) == 0
    html = (tmp_path / "hl.html").read_text()
    assert html.count('class="highlight"') == 2  # the group and the outline
    assert (f"<tr><th>highlight</th><td>layer {layer['index']} {kernel['name']} ({kernel['op']}) PE "
            f"({kernel['x']}, {kernel['y']})</td></tr>") in html


def highlight_error(argv: list[str], capsys) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: "), err
    return err.strip()


def test_highlight_errors_are_one_line_exit_2(tiny_out, tmp_path, capsys):
    placement = json.loads((tiny_out / "placement.json").read_text())
    layer = last_layer(placement)
    kernel = layer["kernels"][0]
    svg = str(tmp_path / "x.svg")
    i, name = layer["index"], kernel["name"]
    # No verification.located in report.json (a passing or skipped verification).
    folder = located_folder(tiny_out, tmp_path, None)
    assert highlight_error(["viz", str(folder), "--highlight", "-o", svg], capsys) == (
        "error: report.json's verification found no failing kernel to highlight (it has no verification.located); "
        "give --highlight LAYER:KERNEL")
    err = highlight_error(["viz", str(tiny_out), "--highlight", f"99:{name}", "-o", svg], capsys)
    assert err == f"error: --highlight 99:{name}: layer 99 is not a layer of this compile; give one of 0..3"
    err = highlight_error(["viz", str(tiny_out), "--highlight", f"{i}:nope", "-o", svg], capsys)
    assert err.startswith(f"error: --highlight {i}:nope: layer {i} ({layer['name']}) has no kernel 'nope'; its "
                          f"{len(layer['kernels'])} kernels are {name}") and err.endswith("; give one of them")
    err = highlight_error(["viz", str(tiny_out), "--highlight", name, "-o", svg], capsys)
    assert err == f"error: --highlight {name}: not LAYER:KERNEL[@X,Y]; give e.g. --highlight 1:linear or 1:linear@3,4"
    err = highlight_error(["viz", str(tiny_out), "--highlight", f"{i}:{name}", "--layer", "1", "-o", svg], capsys)
    assert err == (f"error: --layer 1 disagrees with --highlight {i}:{name} (layer {i}); drop --layer or give "
                   f"--layer {i}")
    x, y = kernel["x"] + kernel["w"], kernel["y"]
    err = highlight_error(["viz", str(tiny_out), "--highlight", f"{i}:{name}@{x},{y}", "-o", svg], capsys)
    assert err.startswith(f"error: --highlight {i}:{name}@{x},{y}: PE ({x}, {y}) is not inside kernel {name}'s "
                          f"rectangle (x {kernel['x']}..{x - 1}, ")
    folder = located_folder(tiny_out, tmp_path, {"kind": "weight", "layer_index": i, "kernel": "p_w", "key": "w",
                                                 "read_by": [name], "pe": None})
    err = highlight_error(["viz", str(folder), "--highlight", "-o", svg], capsys)
    assert err == (f"error: report.json's verification.located is weight 'w', not a kernel on the mesh; give "
                   f"--highlight LAYER:KERNEL, e.g. {i}:{name}, a kernel reading it")
    folder = located_folder(tiny_out, tmp_path, {"kind": "layout", "layer_index": i, "kernel": "view_3", "pe": None})
    err = highlight_error(["viz", str(folder), "--highlight", "-o", svg], capsys)
    assert err == ("error: report.json's verification.located is layout 'view_3', which holds no PE of the mesh; "
                   "give --highlight LAYER:KERNEL")
    folder = located_folder(tiny_out, tmp_path, {"layer_index": "one", "kernel": name})
    err = highlight_error(["viz", str(folder), "--highlight", "-o", svg], capsys)
    assert err.startswith("error: report.json's verification.located is not {layer_index: int, kernel: str, pe: ")
    assert not (tmp_path / "x.svg").exists()
