"""The bad-input corpus: every input wsc must refuse, as data.

Each case is a command line run in a folder of its own (every path in it relative to that folder), the files
it needs there, and the pattern the first line wsc prints must match. Every case must end with exit code 2,
a first line under 160 characters matching `expect`, no traceback, and its output (`out`) as it was before: not
there when it was not, unchanged when it was. tests/bad_inputs/test_bad_inputs.py runs them;
tests/bad_inputs/make_doc.py writes docs/errors.md from them.

A file's content is text, bytes, a `Safetensors` (a weight file made from names and shapes, maybe cut short) or
an `Output` (the output folder of a real compile of the tiny model, maybe edited).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# A tiny model: two 16-wide linear layers on a [2, 8, 16] input. Each case changes one part of it.
LINEAR = '''\
import torch


class Tiny(torch.nn.Module):
    def __init__(self, d):
        super().__init__()
        self.a = torch.nn.Linear(d, d)
        self.b = torch.nn.Linear(d, d)

    def forward(self, x):
{forward}


def build_model(d: int = 16):
    torch.manual_seed(0)
    model = Tiny(d)
{build}
    return model


def example_inputs(d: int = 16):
    return {inputs}
'''

FORWARD = "return self.b(torch.relu(self.a(x)))"
INPUTS = "(torch.randn(2, 8, d, generator=torch.Generator().manual_seed(1)),)"


def linear(forward: str = FORWARD, build: str = "", inputs: str = INPUTS, head: str = "") -> str:
    """The tiny model's file with its forward's body, lines added to build_model, example_inputs' value or
    lines at its top replaced."""
    indent = lambda text, n: "\n".join(" " * n + line for line in text.splitlines())  # noqa: E731
    return head + LINEAR.format(forward=indent(forward, 8), build=indent(build, 4) if build else "", inputs=inputs)


# A token model (embedding, linear head) whose example input is float: the dtype the embedding refuses.
TOKENS = '''\
import torch


class Tokens(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.wte = torch.nn.Embedding(97, 16)
        self.head = torch.nn.Linear(16, 97)

    def forward(self, ids):
        return self.head(self.wte(ids))


def build_model():
    return Tokens()


def example_inputs():
    return (torch.rand(1, 12),)
'''

# mesh-16x16 as a target file, which cases break one field at a time.
MESH = '''\
name: tiny-mesh
description: a 16 x 16 mesh of CS-2-like PEs
mesh: {{rows: {rows}, cols: {cols}}}
pe:
  sram_bytes: {sram}
  flops_per_cycle: {{fp16: 8, fp32: 2}}
clock_hz: {clock}
fabric: {{link_bytes_per_cycle: 4, hop_latency_cycles: 1, colors: {colors}{reserved}}}
io: {{stream_bytes_per_second: 1.0e+9}}
{extra}'''


def mesh(rows: Any = 16, cols: Any = 16, sram: Any = 49152, clock: Any = "1.0e+9", colors: Any = 8,
         reserved: str = "", extra: str = "", drop: str = "") -> str:
    """The 16 x 16 mesh's target file with one field changed (`drop`: a line left out)."""
    text = MESH.format(rows=rows, cols=cols, sram=sram, clock=clock, colors=colors,
                       reserved=f", reserved_colors: {reserved}" if reserved else "", extra=extra)
    return "".join(line for line in text.splitlines(keepends=True) if not (drop and line.startswith(drop)))


# The tiny model's parameters, as a weight file of them holds them.
PARAMETERS = {"a.weight": (16, 16), "a.bias": (16,), "b.weight": (16, 16), "b.bias": (16,)}


@dataclass(frozen=True)
class Safetensors:
    """A safetensors file of these tensors (name -> shape, float32), its last `cut` bytes cut off, or `header`
    written in place of its header."""

    tensors: dict[str, tuple[int, ...]] = field(default_factory=lambda: dict(PARAMETERS))
    cut: int = 0
    header: bytes = b""


@dataclass(frozen=True)
class Output:
    """The output folder of a compile of the tiny model (`wsc compile tiny.py --random-weights 0` elsewhere), with
    `edits` made to it in order: (file, "cut", n) keeps its first n bytes, (file, "set", "dotted.key", value)
    changes a JSON field, (file, "delete") removes the file, and ("program.json", "rehash") makes its content hash
    match its content again (a forged program)."""

    edits: tuple[tuple[Any, ...], ...] = ()


@dataclass(frozen=True)
class Case:
    name: str
    category: str  # model, target, weights, artifacts or cli
    what: str  # the bad input, in words
    argv: tuple[str, ...]
    expect: str  # a regex the first line printed must match (re.search)
    files: dict[str, Any] = field(default_factory=dict)
    out: str | None = "out"  # what the command must leave as it was; None: it writes nothing
    patch: str = ""  # a failure simulated in the process: "disk-full" (every file but the first fails to be
    # written), "disk-full-now" (every file fails)
    xfail: str = ""  # why the message is not yet what `expect` asks (code this corpus may not change)
    process: bool = False  # also run end to end, as the `wsc` command in a process of its own


def compile_(*extra: str, model: str = "model.py", target: str = "mesh-16x16", out: str = "out",
             strategy: str = "greedy") -> tuple[str, ...]:
    """`wsc compile` of the case's model into `out`, quick: greedy placement, and no verification where the case
    gives QUICK (one that needs the weights built leaves it out)."""
    return ("compile", model, "--target", target, "--out", out, "--strategy", strategy, *extra)


QUICK = "--no-verify"
MODEL = {"model.py": linear()}

CASES: list[Case] = [
    # ------------------------------------------------------------------------------------------ model files
    Case("model-syntax-error", "model", "a model file that is not valid Python",
         compile_(QUICK), r"model file model\.py has a syntax error at line 1: .*; fix it",
         {"model.py": "def build_model(:\n    pass\n"}),
    Case("model-import-error", "model", "a model file importing a package that is not installed",
         compile_(QUICK), r"model file model\.py imports not_installed_pkg, which is not installed; install it",
         {"model.py": linear(head="import not_installed_pkg\n")}),
    Case("model-raises-on-import", "model", "a model file whose top level raises",
         compile_(QUICK), r"model file model\.py failed to import: ValueError: bad config; fix it",
         {"model.py": linear(head="raise ValueError('bad config')\n")}),
    Case("model-file-missing", "model", "a model file that does not exist",
         compile_(QUICK), r"model file model\.py does not exist; give the path of a \.py file", {}),
    Case("no-build-model", "model", "a model file without build_model",
         compile_(QUICK), r"model file model\.py does not define build_model\(\*\*kwargs\)",
         {"model.py": linear().replace("def build_model", "def make_model")}),
    Case("no-example-inputs", "model", "a model file without example_inputs",
         compile_(QUICK), r"model file model\.py does not define example_inputs\(\*\*kwargs\)",
         {"model.py": linear().replace("def example_inputs", "def inputs")}),
    Case("build-model-raises", "model", "build_model raising an exception",
         compile_(QUICK), r"model\.py: build_model\(\) raised RuntimeError: no such size; fix the model file",
         {"model.py": linear(build="raise RuntimeError('no such size')")}),
    Case("build-model-not-a-module", "model", "build_model returning something that is not a module",
         compile_(QUICK), r"model\.py: build_model returned dict, not a torch\.nn\.Module",
         {"model.py": linear().replace("    return model\n", "    return {'model': model}\n")}),
    Case("example-inputs-not-tensors", "model", "example_inputs returning something that is not tensors",
         compile_(QUICK), r"model\.py: example_inputs returned a list holding a list, not a tuple of tensors",
         {"model.py": linear(inputs="[[1, 2, 3]]")}),
    Case("model-arg-unknown", "model", "a --model-arg build_model does not take",
         compile_(QUICK, "--model-arg", "depth=3"), r"unexpected keyword argument 'depth'; check the --model-arg",
         MODEL),
    Case("model-arg-malformed", "model", "a --model-arg that is not KEY=VALUE",
         compile_(QUICK, "--model-arg", "depth"), r"--model-arg 'depth' is not KEY=VALUE", MODEL),
    Case("forward-raises", "model", "a model whose forward raises",
         compile_(), r"the model fails on its example inputs \(float32\[2, 8, 16\]\): RuntimeError: boom",
         {"model.py": linear(forward="raise RuntimeError('boom')")}),
    Case("forward-raises-without-weights", "model", "a model whose forward raises, built without weights",
         compile_(QUICK), r"the model fails on its example inputs \(float32\[2, 8, 16\]\): RuntimeError: boom",
         {"model.py": linear(forward="raise RuntimeError('boom')")}),
    Case("unsupported-op", "model", "a model using an op wsc has no lowering for (cumsum)",
         compile_(QUICK), r"unsupported op aten\.cumsum\.default at model\.py:\d+: .*`wsc ops` lists",
         {"model.py": linear(forward="return self.b(x).cumsum(-1)")}),
    Case("several-unsupported-ops", "model", "a model using two ops wsc has no lowering for",
         compile_(QUICK), r"2 unsupported ops or uses, the first: unsupported op aten\.cumsum\.default",
         {"model.py": linear(forward="h = self.a(x).cumsum(-1)\nreturn self.b(h).cumprod(-1)")}),
    Case("data-dependent-branch", "model", "a model that branches on a tensor's value",
         compile_(QUICK), r"cannot capture the model: .*data-dependent control flow .*make the branch static",
         {"model.py": linear(forward="y = self.a(x)\nif y.sum() > 0:\n    return y * 2.0\nreturn y")}),
    Case("nan-weight", "model", "a parameter holding NaN",
         compile_(), r"parameter b\.weight holds NaN at index \[3, 5\]; give the model finite weights",
         {"model.py": linear(build="with torch.no_grad():\n    model.b.weight[3, 5] = float('nan')")}),
    Case("inf-weight", "model", "a parameter holding an infinity",
         compile_(), r"parameter a\.bias holds -inf at index \[7\] \(and 1 more non-finite value\)",
         {"model.py": linear(build="with torch.no_grad():\n    model.a.bias[7] = -float('inf')\n"
                                   "    model.a.bias[9] = float('inf')")}),
    Case("wrong-input-dtype", "model", "float token ids for an embedding",
         compile_(QUICK), r"the model fails on its example inputs \(float32\[1, 12\]\).*dtype and shape its forward",
         {"model.py": TOKENS}, process=True),
    Case("wrong-input-shape", "model", "an input of the wrong width",
         compile_(QUICK), r"the model fails on its example inputs \(float32\[2, 8, 12\]\).*dtype and shape",
         {"model.py": linear(inputs="(torch.randn(2, 8, 12),)")}),
    Case("returns-a-string", "model", "a model returning a string beside its tensor",
         compile_(QUICK), r"model output of type str is not supported; return tensors",
         {"model.py": linear(forward="return self.a(x), 'done'")}),
    Case("returns-an-object", "model", "a model returning an object that is not a tensor",
         compile_(QUICK), r"its output holds an object of class Holder, which is not a tensor; return tensors",
         {"model.py": linear(head="class Holder:\n    def __init__(self, x):\n        self.x = x\n\n\n",
                             forward="return self.a(x), Holder(x)")}),
    Case("not-a-pt2-file", "model", "a .pt2 file that torch.export did not write",
         compile_(QUICK, model="model.pt2"), r"cannot load model\.pt2 as a torch\.export program",
         {"model.pt2": b"not a zip archive"}),
    Case("model-arg-for-pt2", "model", "a --model-arg for an exported program, whose inputs are fixed",
         compile_(QUICK, "--model-arg", "seq=64", model="model.pt2"),
         r"--model-arg seq=64 does not apply to a \.pt2 file, .*drop --model-arg", {"model.pt2": b"PK"}),
    # ------------------------------------------------------------------------------------------ targets
    Case("target-unknown", "target", "a target name that is not packaged",
         compile_(QUICK, target="cs9-sim"), r"unknown target 'cs9-sim'; available targets: cs2-sim", MODEL),
    Case("target-file-missing", "target", "a target file that does not exist",
         compile_(QUICK, target="nope.yaml"), r"target file nope\.yaml does not exist", MODEL),
    Case("target-invalid-yaml", "target", "a target file that is not YAML",
         compile_(QUICK, target="t.yaml"), r"target file t\.yaml: invalid YAML at line \d+; fix the syntax",
         {**MODEL, "t.yaml": "mesh: {rows: 16\ncols: [\n"}),
    Case("target-missing-field", "target", "a target file without clock_hz",
         compile_(QUICK, target="t.yaml"), r"target file t\.yaml: field 'clock_hz' is missing; add it",
         {**MODEL, "t.yaml": mesh(drop="clock_hz")}),
    Case("target-mistyped-field", "target", "a mesh size that is not a number",
         compile_(QUICK, target="t.yaml"), r"field 'mesh\.rows' must be a positive integer, got 'sixteen'",
         {**MODEL, "t.yaml": mesh(rows="sixteen")}),
    Case("target-unknown-key", "target", "a misspelt key",
         compile_(QUICK, target="t.yaml"), r"field 'fabric\.colours' is not a known key; allowed here: ",
         {**MODEL, "t.yaml": mesh().replace("colors: 8", "colours: 8")}),
    Case("target-zero-rows", "target", "a mesh of zero rows",
         compile_(QUICK, target="t.yaml"), r"field 'mesh\.rows' must be positive, got 0",
         {**MODEL, "t.yaml": mesh(rows=0)}),
    Case("target-negative-sram", "target", "a negative SRAM size",
         compile_(QUICK, target="t.yaml"), r"field 'pe\.sram_bytes' must be positive, got -49152",
         {**MODEL, "t.yaml": mesh(sram=-49152)}),
    Case("target-zero-clock", "target", "a clock of 0 Hz",
         compile_(QUICK, target="t.yaml"), r"field 'clock_hz' must be a positive finite number, got 0",
         {**MODEL, "t.yaml": mesh(clock=0)}),
    Case("target-reserved-colors", "target", "more reserved colors than the fabric has",
         compile_(QUICK, target="t.yaml"), r"field 'fabric\.reserved_colors' must be an integer from 0 to",
         {**MODEL, "t.yaml": mesh(reserved="8")}),
    Case("target-empty-file", "target", "an empty target file",
         compile_(QUICK, target="t.yaml"), r"target file t\.yaml must be a mapping of the target's fields \(clock_hz",
         {**MODEL, "t.yaml": ""}),
    Case("target-mesh-too-large", "target", "a mesh of 10^10 PEs, more than any grid of it fits in memory",
         compile_(QUICK, target="t.yaml"), r"field 'mesh' has 10,000,000,000 PEs, more than the 16,777,216 wsc places",
         {**MODEL, "t.yaml": mesh(rows=100000, cols=100000)}),
    Case("target-mesh-too-small", "target", "a 1 x 1 mesh, too small for any tile",
         compile_(QUICK, target="t.yaml"), r"layer \w+ needs \d+ PEs .*; use a bigger target",
         {**MODEL, "t.yaml": mesh(rows=1, cols=1)},),
    Case("target-sram-too-small", "target", "PEs of 64 bytes of SRAM, less than the runtime keeps",
         compile_(QUICK, target="t.yaml"), r"does not fit: .*SRAM",
         {**MODEL, "t.yaml": mesh(sram=64)},),
    Case("target-every-pe-dead", "target", "dead rows covering the whole mesh",
         compile_(QUICK, target="t.yaml"), r"field 'defects' marks every PE dead; at least one PE must be usable",
         {**MODEL, "t.yaml": mesh(extra=f"defects: {{dead_rows: {list(range(16))}}}\n")}),
    Case("target-dead-pe-outside", "target", "a dead PE outside the mesh",
         compile_(QUICK, target="t.yaml"), r"field 'defects\.dead_pes\[0\]' = \[16, 3\] is outside the 16 x 16",
         {**MODEL, "t.yaml": mesh(extra="defects: {dead_pes: [[16, 3]]}\n")}),
    Case("target-defect-rate-one", "target", "a defect rate of 1 (every PE dead)",
         compile_(QUICK, target="t.yaml"), r"field 'defects\.rate' must be a fraction of PEs in \[0, 1\), got 1",
         {**MODEL, "t.yaml": mesh(extra="defects: {rate: 1}\n")}),
    Case("target-dead-rows-leave-no-room", "target", "dead rows leaving one row for a layer that needs more",
         compile_(QUICK, "--model-arg", "d=1024", target="t.yaml"), r"does not fit.* dead rows",
         {**MODEL, "t.yaml": mesh(extra=f"defects: {{dead_rows: {list(range(1, 16))}}}\n")},),
    # ------------------------------------------------------------------------------------------ weights
    Case("weights-missing", "weights", "--weights naming a file that does not exist",
         compile_("--weights", "w.safetensors"), r"--weights w\.safetensors does not exist; give a safetensors",
         MODEL),
    Case("weights-wrong-names", "weights", "a checkpoint of another model (other tensor names)",
         compile_("--weights", "w.safetensors"),
         r"--weights w\.safetensors holds no tensor for parameter a\.weight \(and 3 more\); give the checkpoint",
         {**MODEL, "w.safetensors": Safetensors({f"enc.{k}": s for k, s in PARAMETERS.items()})}),
    Case("weights-wrong-shapes", "weights", "a checkpoint whose tensors have other shapes",
         compile_("--weights", "w.safetensors"),
         r"--weights w\.safetensors does not fit: parameter a\.weight is \[16, 8\] there, \[16, 16\] in the model",
         {**MODEL, "w.safetensors": Safetensors({**PARAMETERS, "a.weight": (16, 8)})}),
    Case("weights-truncated", "weights", "a safetensors file cut short",
         compile_("--weights", "w.safetensors"),
         r"weight store w\.safetensors is truncated: [\w.]+ ends past the end of the file; give the whole",
         {**MODEL, "w.safetensors": Safetensors(cut=40)}),
    Case("weights-corrupted", "weights", "a safetensors file whose header is not JSON",
         compile_("--weights", "w.safetensors"),
         r"cannot read weight store w\.safetensors: its header is not JSON; give a safetensors file",
         {**MODEL, "w.safetensors": Safetensors(header=b"\x00garbage{")}),
    Case("weights-empty-file", "weights", "an empty file given as weights",
         compile_("--weights", "w.safetensors"),
         r"cannot read weight store w\.safetensors: it is too short for a safetensors header; give a safetensors",
         {**MODEL, "w.safetensors": b""}),
    Case("weights-malformed-header", "weights", "a safetensors header whose entry has no data offsets",
         compile_("--weights", "w.safetensors"),
         r"weight a\.weight in w\.safetensors has a malformed header entry .*; give a safetensors file",
         {**MODEL, "w.safetensors": Safetensors(header=b'{"a.weight": {"dtype": "F32", "shape": [16, 16]}}')}),
    Case("weights-empty-folder", "weights", "a checkpoint folder without weight files",
         compile_("--weights", "ckpt"), r"weight directory ckpt has no model\.safetensors\.index\.json and no",
         {**MODEL, "ckpt/README.md": "nothing here\n"}),
    Case("weights-bad-index", "weights", "a checkpoint index that is not JSON",
         compile_("--weights", "model.safetensors.index.json"),
         r"cannot read weight index model\.safetensors\.index\.json: .*give a Hugging Face index",
         {**MODEL, "model.safetensors.index.json": "{\"weight_map\": "}),
    # ------------------------------------------------------------------------------------------ artifacts
    Case("check-truncated-json", "artifacts", "`wsc check` of a placement.json cut short",
         ("check", "compiled"), r"compiled/placement\.json: not valid JSON .*; compile again",
         {"compiled": Output((("placement.json", "cut", 200),))}, out=None),
    Case("check-field-of-wrong-type", "artifacts", "`wsc check` of a placement.json with a mesh size as text",
         ("check", "compiled"), r"compiled/placement\.json: key 'rows' must be int, got str; compile again",
         {"compiled": Output((("placement.json", "set", "mesh.rows", "16"),))}, out=None),
    Case("check-future-schema", "artifacts", "`wsc check` of a placement.json from a newer wsc",
         ("check", "compiled"), r"placement\.json: schema 2 is newer than this wsc reads \(1\)",
         {"compiled": Output((("placement.json", "set", "schema", 2),))}, out=None),
    Case("check-other-tool-folder", "artifacts", "`wsc check` of a folder another tool wrote",
         ("check", "results"), r"results/placement\.json: no such file; run `wsc compile` first",
         {"results/metrics.csv": "step,loss\n0,1.0\n"}, out=None),
    Case("check-no-folder", "artifacts", "`wsc check` of a folder that does not exist",
         ("check", "nowhere"), r"nowhere/placement\.json: no such folder; give the --out folder", out=None),
    Case("check-a-file", "artifacts", "`wsc check` of a file, not a folder",
         ("check", "model.py"), r"model\.py/placement\.json: model\.py is a file, not a folder; give the --out folder",
         MODEL, out=None),
    Case("viz-truncated-json", "artifacts", "`wsc viz` of a report.json cut short",
         ("viz", "compiled", "-o", "map.svg"), r"compiled/report\.json is not readable JSON .*; compile again",
         {"compiled": Output((("report.json", "cut", 100),))}, out="map.svg", process=True),
    Case("viz-field-of-wrong-type", "artifacts", "`wsc viz` of a placement.json with a kernel's width as text",
         ("viz", "compiled", "-o", "map.svg"),
         r"compiled has a malformed placement\.json or report\.json \(TypeError.*\); compile again",
         {"compiled": Output((("placement.json", "set", "layers.0.kernels.0.w", "wide"),))}, out="map.svg"),
    Case("viz-future-schema", "artifacts", "`wsc viz` of a report.json from a newer wsc",
         ("viz", "compiled", "-o", "map.svg"), r"compiled/report\.json has schema 7, newer than this wsc reads \(1\)",
         {"compiled": Output((("report.json", "set", "schema", 7),))}, out="map.svg"),
    Case("viz-other-tool-folder", "artifacts", "`wsc viz` of a folder another tool wrote",
         ("viz", "results", "-o", "map.svg"), r"results/placement\.json is missing; give the --out folder",
         {"results/metrics.csv": "step,loss\n0,1.0\n"}, out="map.svg"),
    Case("viz-unknown-format", "artifacts", "`wsc viz -o` of a format it does not draw",
         ("viz", "compiled", "-o", "map.gif"), r"-o map\.gif: unknown picture format '\.gif'; use \.svg, \.png",
         {"compiled": Output()}, out="map.gif"),
    Case("viz-output-under-a-file", "artifacts", "`wsc viz -o` under a file",
         ("viz", "compiled", "-o", "notes.txt/map.svg"),
         r"-o notes\.txt/map\.svg cannot be written: notes\.txt is a file, not a folder",
         {"compiled": Output(), "notes.txt": "mine\n"}, out="notes.txt"),
    Case("viz-disk-full", "artifacts", "the disk full when `wsc viz` writes its picture",
         ("viz", "compiled", "-o", "map.svg"), r"cannot write -o map\.svg \(No space left on device\); free some",
         {"compiled": Output()}, out="map.svg", patch="disk-full-now"),
    Case("run-other-tool-folder", "artifacts", "`wsc run` of a folder another tool wrote",
         ("run", "results", "--random-weights", "0"),
         r"results/program\.json: no such file; compile the model \(wsc compile\) into results first",
         {"results/metrics.csv": "step,loss\n0,1.0\n"}, out="results"),
    Case("run-not-a-folder", "artifacts", "`wsc run` of a file, not a folder",
         ("run", "model.py", "--random-weights", "0"), r"model\.py is not a folder; give the output folder of",
         MODEL, out="model.py"),
    Case("run-truncated-program", "artifacts", "`wsc run` of a program.json cut short",
         ("run", "compiled", "--random-weights", "0"),
         r"compiled/program\.json is not valid JSON \(truncated or edited: .*\); compile the model again",
         {"compiled": Output((("program.json", "cut", 300),))}, out="compiled", process=True),
    Case("run-edited-program", "artifacts", "`wsc run` of a program.json edited by hand (a shape changed)",
         ("run", "compiled", "--random-weights", "0"),
         r"compiled/program\.json was changed after it was written \(its content hash does not match\)",
         {"compiled": Output((("program.json", "set", "nodes.5.shape", [2, 8, 17]),))}, out="compiled"),
    Case("run-future-version", "artifacts", "`wsc run` of a program.json from a newer wsc",
         ("run", "compiled", "--random-weights", "0"),
         r"compiled/program\.json is of version 2, newer than this wsc reads \(1\); update wsc",
         {"compiled": Output((("program.json", "set", "version", 2), ("program.json", "rehash")))}, out="compiled"),
    Case("run-other-format", "artifacts", "`wsc run` of a JSON file of another format named program.json",
         ("run", "compiled", "--random-weights", "0"),
         r"compiled/program\.json is not a wsc program \(no format 'wsc-program'\)",
         {"compiled": Output((("program.json", "set", "format", "onnx"),))}, out="compiled"),
    Case("run-forged-op", "artifacts", "`wsc run` of a forged program (hash made to match) naming an op wsc lacks",
         ("run", "compiled", "--random-weights", "0"),
         r"node relu\.op 'os\.system' is not an op of this wsc's op table; compile the model again",
         {"compiled": Output((("program.json", "set", "nodes.6.op", "os.system"), ("program.json", "rehash")))},
         out="compiled"),
    Case("run-forged-pickle", "artifacts", "`wsc run` of a forged program whose attribute is a pickle",
         ("run", "compiled", "--random-weights", "0"),
         r"node linear\.attrs\.bias is a 'pickle' value wsc does not write; compile the model again",
         {"compiled": Output((("program.json", "set", "nodes.5.attrs.bias", {"pickle": "gASVAAAAAAAAAAB9lC4="}),
                              ("program.json", "rehash")))}, out="compiled"),
    Case("run-forged-graph", "artifacts", "`wsc run` of a forged program whose node reads a value never computed",
         ("run", "compiled", "--random-weights", "0"),
         r"compiled/program\.json: node relu reads nowhere, which is not defined before it; compile the model again",
         {"compiled": Output((("program.json", "set", "nodes.6.inputs", ["nowhere"]), ("program.json", "rehash")))},
         out="compiled"),
    Case("run-forged-shape", "artifacts", "`wsc run` of a forged program whose kernel's shapes disagree",
         ("run", "compiled", "--random-weights", "0"),
         r"compiled/program\.json: program breaks an invariant of the IR \(.*\); compile the model again",
         {"compiled": Output((("program.json", "set", "nodes.6.shape", [2, 8, 17]), ("program.json", "rehash")))},
         out="compiled"),
    Case("run-forged-weights-dtype", "artifacts", "`wsc run` of a forged program streaming a precision wsc lacks",
         ("run", "compiled", "--random-weights", "0"),
         r"compiled/program\.json: weights\.dtype 'fp8' is not one of fp32, fp16; compile the model again",
         {"compiled": Output((("program.json", "set", "weights.dtype", "fp8"), ("program.json", "rehash")))},
         out="compiled"),
    Case("run-edited-reference", "artifacts", "`wsc run` of a folder whose reference.safetensors was cut short",
         ("run", "compiled", "--random-weights", "0"),
         r"compiled/reference\.safetensors was changed after it was written \(its sha256 does not match",
         {"compiled": Output((("reference.safetensors", "cut", 100),))}, out="compiled"),
    Case("run-no-weights", "artifacts", "`wsc run` without weights to run on",
         ("run", "compiled"), r"one of the arguments --weights --random-weights is required; see `wsc run --help`",
         {"compiled": Output()}, out="compiled"),
    Case("run-two-weights", "artifacts", "`wsc run` given both --weights and --random-weights",
         ("run", "compiled", "--weights", "w.safetensors", "--random-weights", "0"),
         r"argument --random-weights: not allowed with argument --weights",
         {"compiled": Output(), "w.safetensors": Safetensors()}, out="compiled"),
    Case("run-negative-seed", "artifacts", "`wsc run --random-weights` of a negative seed",
         ("run", "compiled", "--random-weights", "-3"),
         r"--random-weights -3 is out of range; give a whole number from 0 to", {"compiled": Output()}, out="compiled"),
    Case("run-weights-missing", "artifacts", "`wsc run --weights` of a file that does not exist",
         ("run", "compiled", "--weights", "gone.safetensors"),
         r"--weights gone\.safetensors does not exist; give a safetensors file", {"compiled": Output()},
         out="compiled"),
    Case("run-weights-wrong-names", "artifacts", "`wsc run --weights` of another model's checkpoint",
         ("run", "compiled", "--weights", "w.safetensors"),
         r"--weights w\.safetensors holds no tensor for weight a\.weight \(and 3 more\); give the checkpoint of",
         {"compiled": Output(), "w.safetensors": Safetensors({"encoder.weight": (16, 16)})}, out="compiled"),
    Case("run-weights-wrong-shape", "artifacts", "`wsc run --weights` of a checkpoint of another width",
         ("run", "compiled", "--weights", "w.safetensors"),
         r"--weights w\.safetensors does not fit: weight a\.weight is \[16, 8\] there, \[16, 16\] in the program",
         {"compiled": Output(), "w.safetensors": Safetensors({**PARAMETERS, "a.weight": (16, 8)})}, out="compiled"),
    Case("run-weights-truncated", "artifacts", "`wsc run --weights` of a safetensors file cut short",
         ("run", "compiled", "--weights", "w.safetensors"),
         r"weight store w\.safetensors is truncated: [\w.]+ ends past the end of the file",
         {"compiled": Output(), "w.safetensors": Safetensors(cut=64)}, out="compiled"),
    Case("run-inputs-wrong-name", "artifacts", "`wsc run --inputs` naming no input of the program",
         ("run", "compiled", "--random-weights", "0", "--inputs", "in.safetensors"),
         r"--inputs in\.safetensors holds no tensor x; give one tensor per input: x float32\[2, 8, 16\]",
         {"compiled": Output(), "in.safetensors": Safetensors({"input_ids": (2, 8, 16)})}, out="compiled"),
    Case("run-inputs-wrong-shape", "artifacts", "`wsc run --inputs` of another shape than the compiled one",
         ("run", "compiled", "--random-weights", "0", "--inputs", "in.safetensors"),
         r"--inputs in\.safetensors: x is float32\[4, 8, 16\], the program takes float32\[2, 8, 16\]",
         {"compiled": Output(), "in.safetensors": Safetensors({"x": (4, 8, 16)})}, out="compiled"),
    Case("run-inputs-not-safetensors", "artifacts", "`wsc run --inputs` of a file that is not safetensors",
         ("run", "compiled", "--random-weights", "0", "--inputs", "in.safetensors"),
         r"in\.safetensors is not a readable safetensors file \(.*\); give one written by safetensors",
         {"compiled": Output(), "in.safetensors": "x = [1, 2, 3]\n"}, out="compiled"),
    Case("run-outputs-under-a-file", "artifacts", "`wsc run --outputs` under a file",
         ("run", "compiled", "--random-weights", "0", "--outputs", "notes.txt/out.safetensors"),
         r"--outputs notes\.txt/out\.safetensors cannot be written: notes\.txt is a file, not a folder",
         {"compiled": Output(), "notes.txt": "mine\n"}, out="notes.txt"),
    Case("run-outputs-wrong-suffix", "artifacts", "`wsc run --outputs` of a file that is not .safetensors",
         ("run", "compiled", "--random-weights", "0", "--outputs", "out.npy"),
         r"--outputs out\.npy is not a \.safetensors file; give a path ending in \.safetensors",
         {"compiled": Output()}, out="out.npy"),
    Case("run-disk-full", "artifacts", "the disk full when `wsc run` writes its outputs",
         ("run", "compiled", "--random-weights", "0", "--outputs", "out.safetensors"),
         r"cannot write --outputs out\.safetensors \(No space left on device\); give a file you can write",
         {"compiled": Output()}, out="out.safetensors", patch="disk-full-now"),
    # ------------------------------------------------------------------------------------------ the CLI
    Case("unknown-flag", "cli", "a flag wsc compile does not have",
         compile_("--frobnicate"), r"unrecognized arguments: --frobnicate; see `wsc compile --help`", MODEL,
         process=True),
    Case("unknown-command", "cli", "a command wsc does not have",
         ("simulate", "model.py"), r"invalid choice: 'simulate' \(choose from .*\); see `wsc --help`", MODEL,
         out=None),
    Case("missing-target", "cli", "wsc compile without --target",
         ("compile", "model.py", "--out", "out"), r"the following arguments are required: --target", MODEL),
    Case("not-a-number", "cli", "a word where a number goes",
         compile_("--micro-batch", "many"), r"argument --micro-batch: invalid int value: 'many'", MODEL),
    Case("negative-time-limit", "cli", "a negative --time-limit",
         compile_("--time-limit", "-1"), r"--time-limit -1\.0 is not a time; give the placer's deterministic", MODEL),
    Case("micro-batch-zero", "cli", "--micro-batch 0",
         compile_("--micro-batch", "0"), r"--micro-batch 0 is not a number of sequences; give 1 or more", MODEL),
    Case("negative-tolerance", "cli", "a negative --tolerance",
         compile_("--tolerance", "-1"), r"--tolerance -1\.0 is not a factor of the derived error bound", MODEL),
    Case("systems-zero", "cli", "--systems 0",
         compile_("--systems", "0"), r"--systems 0 is not a number of wafers; give 1 or more", MODEL),
    Case("systems-not-dividing", "cli", "--systems that does not divide the batch",
         compile_(QUICK, "--systems", "3"), r"--systems 3 does not divide the batch of 2 sequences", MODEL),
    Case("seed-out-of-range", "cli", "a negative --seed",
         compile_("--seed", "-1"), r"--seed -1 is out of range; give a whole number from 0 to", MODEL),
    Case("unknown-strategy", "cli", "a placement strategy that does not exist",
         compile_(strategy="best"), r"unknown placement strategy 'best'; use one of cpsat", MODEL),
    Case("out-under-a-file", "cli", "--out under an existing file",
         compile_(QUICK, out="notes.txt/sub"),
         r"--out notes\.txt/sub cannot be written: notes\.txt is a file, not a folder; give a folder",
         {**MODEL, "notes.txt": "mine\n"}, out="notes.txt", process=True),
    Case("out-is-a-file", "cli", "--out naming an existing file",
         compile_(QUICK, out="notes.txt"), r"--out notes\.txt cannot be written: notes\.txt is a file, not a folder",
         {**MODEL, "notes.txt": "mine\n"}, out="notes.txt"),
    Case("out-under-proc", "cli", "--out on a file system that takes no folders (/proc)",
         compile_(QUICK, out="/proc/wsc-out"),
         r"--out /proc/wsc-out cannot be written: making a folder there failed \(.+\); give a folder", MODEL,
         out="/proc/wsc-out"),
    Case("out-holds-another-model", "cli", "--out holding another model's output",
         compile_(QUICK), r"--out out holds another model's output \(tiny\.py\); give another --out, or --force",
         {**MODEL, "out": Output()}),
    Case("out-holds-unknown-output", "cli", "--out holding a compile's output that records no origin",
         compile_(QUICK), r"--out out holds the output of another compile; give another --out, or --force",
         {**MODEL, "out": Output((("report.json", "delete"),))}),
    Case("disk-full", "cli", "the disk filling up while the output is written",
         compile_(QUICK), r"cannot write out: no space left on the device; free some space or give another --out",
         MODEL, patch="disk-full"),
]
