"""Tall block grids folded near square: what the last try of the fill search does when a layer's strips leave no
band for its widest kernel (a 7B decoder at 2048 tokens on cs2-sim)."""

from __future__ import annotations

import pytest
from conftest import tiny_gpt

import wsc
from wsc.core.errors import DoesNotPlace
from wsc.core.program import Cut
from wsc.passes import place
from wsc.passes.partition import Area, rectangle

AREA = Area(rows=750, cols=994, pes=745_500)


def test_a_strip_taller_than_half_the_mesh_folds_near_square_only_when_asked():
    strip = Cut(row_blocks=713, col_blocks=35)
    assert rectangle(strip, AREA) == (713, 35)  # the block grid itself
    h, w = rectangle(strip, AREA, fold_strips=True)
    assert h * w >= strip.pes and h <= AREA.rows // 2 + 1 and abs(h - w) <= 1 + h // 10  # near square, same PEs
    short = Cut(row_blocks=300, col_blocks=40)
    assert rectangle(short, AREA, fold_strips=True) == (300, 40)  # under half the height: left as it is


def test_the_fill_search_ends_with_a_folded_try(monkeypatch):
    tried = []
    unpatched = place.Place.__call__

    def places_only_folded(self, program):
        tried.append((program.fill, program.compact))
        if not program.compact:
            raise DoesNotPlace("does not pack", 1, 0)
        return unpatched(self, program)

    monkeypatch.setattr(place.Place, "__call__", places_only_folded)
    model, inputs = tiny_gpt(layers=1)
    compiled = wsc.compile(model, inputs, "mesh-16x16", time_limit=0.3, verify=False)
    assert tried[:3] == [(0.65, False), (0.5, False), (0.5, True)]
    assert compiled.report["placement"]["compact"] is True
    assert compiled.report["placement"]["fill"] == 0.5


def test_when_every_try_fails_the_last_refusal_is_raised(monkeypatch):
    def never(self, program):
        raise DoesNotPlace(f"does not pack at {program.fill} compact={program.compact}", 1, 0)

    monkeypatch.setattr(place.Place, "__call__", never)
    model, inputs = tiny_gpt(layers=1)
    with pytest.raises(DoesNotPlace, match="at 0.5 compact=True"):
        wsc.compile(model, inputs, "mesh-16x16", time_limit=0.3, verify=False)
