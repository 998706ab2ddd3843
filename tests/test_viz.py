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

from wsc.artifacts.viz_data import dead_runs, link_load
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
        assert "stream-bound" in html or "bottleneck" in html


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
