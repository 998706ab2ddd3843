"""What the sweep knows (models, targets, modes) and the cells a command line asks for."""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from wsc.passes import placers

from .cells import Cell, Model, SweepTarget

ROOT = Path(__file__).resolve().parents[2]
SMALL_MESH_PES = 100_000  # a target below this is a test mesh, for the tiny models
CARD_SEQ = 2048
# Cerebras-GPT card: size -> (training batch, micro-batch). The micro-batches are those wsc picks with cpsat
# (docs/cerebras-gpt-performance.md), fixed here so that every strategy compiles the same passes.
CARD_TRAINING = {"111M": (120, 15), "256M": (264, 12), "590M": (264, 4), "1.3B": (528, 16), "2.7B": (528, 12),
                 "6.7B": (1040, 5), "13B": (720, 3)}
# The Hugging Face models have no card batch: 8 sequences in passes of one (what fits any model that fits at
# all), the small ones in passes of four.
HF_TRAINING = (8, 1)
HF_SMALL_TRAINING = {("gpt2", "124M"): (8, 4), ("bert", "base"): (8, 4), ("bert", "large"): (8, 4)}
MODES = ("inference", "training", "pipelined")
DEFAULT_TARGETS = ("cs2-sim", "cs3-sim", "cs2-sim-defects", "mesh-64x64-thin-links")
QUICK = [  # (model, target, modes): placement that cannot matter, that may, and that does
    ("cerebras-gpt-111M", "cs2-sim", ("inference", "training")),
    ("cerebras-gpt-111M@128", "cs2-sim", ("pipelined",)),  # at 2048 tokens a block does not fit its band
    ("tiny-gpt", "mesh-64x64-thin-links", MODES),
    ("hf-gpt2-124M", "cs2-sim", ("training",)),  # 1024 tokens, 8 sequences in passes of 4: the fabric binds
]


def load_example(path: Path):  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location(f"mapping_sweep_{path.stem}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def models() -> dict[str, Model]:
    """The models the sweep knows, by name: Cerebras-GPT's sizes, the published Hugging Face ones, a tiny GPT."""
    known: dict[str, Model] = {}
    gpt_file, hf_file = ROOT / "examples" / "cerebras_gpt.py", ROOT / "examples" / "hf_models.py"
    for size in load_example(gpt_file).SIZES:
        known[f"cerebras-gpt-{size}"] = Model(f"cerebras-gpt-{size}", str(gpt_file),
                                              (("size", size), ("seq", CARD_SEQ)), CARD_TRAINING[size])
    for arch, sizes in load_example(hf_file).SIZES.items():
        for size, config in sizes.items():
            if size == "tiny":
                continue
            positions = config.get("max_position_embeddings", config.get("n_positions", CARD_SEQ))
            known[f"hf-{arch}-{size}"] = Model(f"hf-{arch}-{size}", str(hf_file),
                                               (("arch", arch), ("size", size), ("seq", min(CARD_SEQ, positions))),
                                               HF_SMALL_TRAINING.get((arch, size), HF_TRAINING))
    known["tiny-gpt"] = Model("tiny-gpt", str(ROOT / "tests" / "models" / "tiny_gpt.py"), (("seq", 48),), (8, 2),
                              tiny=True)
    return known


def model_named(name: str, known: dict[str, Model]) -> Model:
    """A known model, or one at another sequence length: `NAME@SEQ`."""
    base, _, seq = name.partition("@")
    if base not in known:
        raise SystemExit(f"error: unknown model {base!r}; give one of {', '.join(known)} (or NAME@SEQ)")
    model = known[base]
    if not seq:
        return model
    args = tuple((k, v) for k, v in model.args if k != "seq") + (("seq", int(seq)),)
    return Model(name, model.file, args, model.training, model.tiny)


def packaged_yaml(name: str) -> dict[str, Any]:
    return yaml.safe_load(resources.files("wsc.targets").joinpath(f"{name}.yaml").read_text(encoding="utf-8"))


def derived_targets() -> dict[str, dict[str, Any]]:
    """The targets the sweep writes from packaged ones, as YAML data."""
    cs2, mesh = packaged_yaml("cs2-sim"), packaged_yaml("mesh-64x64")
    return {
        "cs2-sim-defects": {**cs2, "name": "cs2-sim-defects",
                            "description": "cs2-sim with 1% of its PEs dead at random and row 375 dead",
                            "defects": {"rate": 0.01, "seed": 0, "dead_rows": [375]}},
        # With 4-byte links and a 4 GB/s stream a tiny model is stream-bound on mesh-64x64; a quarter of the link
        # bandwidth and a 16x faster stream put its traffic on the critical path.
        "mesh-64x64-thin-links": {**mesh, "name": "mesh-64x64-thin-links",
                                  "description": "mesh-64x64 with 1-byte links and a 64 GB/s stream: fabric-bound",
                                  "fabric": {**mesh["fabric"], "link_bytes_per_cycle": 1},
                                  "io": {"stream_bytes_per_second": 64.0e9}},
    }


def target_named(name: str) -> SweepTarget:
    """A target of the sweep, a packaged one, or a target YAML file."""
    from wsc.targets import available_targets

    derived = derived_targets()
    if name in derived:
        data, text = derived[name], yaml.safe_dump(derived[name], sort_keys=False)
    elif name in available_targets():
        data, text = packaged_yaml(name), None
    elif Path(name).is_file():
        text = Path(name).read_text(encoding="utf-8")
        data = yaml.safe_load(text)
    else:
        raise SystemExit(f"error: unknown target {name!r}; give one of {', '.join([*derived, *available_targets()])}"
                         " or a target YAML file")
    return SweepTarget(str(data.get("name", Path(name).stem)), int(data["mesh"]["rows"] * data["mesh"]["cols"]), text)


def shape_of(model: Model, mode: str) -> tuple[str, int, int]:
    """A mode of the sweep as wsc's mode, the batch and the micro-batch."""
    if mode == "training":
        return ("weight-streaming", *model.training)
    return ("pipelined" if mode == "pipelined" else "weight-streaming", 1, 1)


def plan_cells(*, quick: bool, model_names: Sequence[str] = (), target_names: Sequence[str] = (),
               modes: Sequence[str] = (),
               strategies: Sequence[str] = (), seeds: Sequence[int] = (0,), time_limit: float = 2.0,
               all_pairs: bool = False) -> list[Cell]:
    """The cells asked for, in a stable order: the quick preset's, or every chosen model on every chosen target
    (tiny models on small meshes, the others on wafers, unless `all_pairs`), in every chosen mode, each with
    every strategy and seed. An empty choice means all."""
    known = models()
    strategies = list(strategies or placers.names())
    for strategy in strategies:
        placers.get(strategy)  # an unknown name is refused before anything runs
    for mode in modes:
        if mode not in MODES:
            raise SystemExit(f"error: unknown mode {mode!r}; give some of {', '.join(MODES)}")
    if quick:
        combos = [(m, t, ms) for m, t, ms in QUICK
                  if (not model_names or m in model_names) and (not target_names or t in target_names)]
    else:
        combos = [(m, t, MODES) for m in (model_names or known) for t in (target_names or DEFAULT_TARGETS)]
    chosen_targets = {t: target_named(t) for _, t, _ in combos}
    cells = []
    for model_name, target_name, combo_modes in combos:
        model, target = model_named(model_name, known), chosen_targets[target_name]
        if not (quick or all_pairs) and model.tiny != (target.pes < SMALL_MESH_PES):
            continue
        for mode in combo_modes:
            if modes and mode not in modes:
                continue
            wsc_mode, batch, micro_batch = shape_of(model, mode)
            cells += [Cell(strategy, model, target, wsc_mode, batch, micro_batch, seed, time_limit)
                      for seed in seeds for strategy in strategies]
    return cells
