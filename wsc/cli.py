"""The `wsc` command line: `wsc compile MODEL.py --target NAME|PATH.yaml`, `wsc run`, `wsc train`, `wsc check`,
`wsc viz` and `wsc ops`.

Bad input ends with one line `error: ...` and exit code 2; a verification mismatch exits with 1; Ctrl-C with
`interrupted` and 130, nothing written.
"""

from __future__ import annotations

import argparse
import sys
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from wsc.core.errors import WscError

if TYPE_CHECKING:
    from wsc.options import CompileOptions

EXIT_MISMATCH, EXIT_BAD_INPUT, EXIT_INTERNAL = 1, 2, 3
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports a process Ctrl-C ended


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except _UsageError as error:
        command = f"wsc {argv[0]}" if argv and argv[0] in COMMANDS else error.prog
        print(f"error: {error}; see `{command} --help`", file=sys.stderr)
        return EXIT_BAD_INPUT
    args.argv = argv
    debug = getattr(args, "debug", False)
    try:
        return args.run(args)
    except WscError as error:
        lines = str(error).splitlines() or [type(error).__name__]
        print(f"error: {lines[0]}", file=sys.stderr)
        for line in lines[1:]:  # the short list of a problem of several parts
            print(line, file=sys.stderr)
        if debug and error.details:
            print(error.details, file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:  # nothing was written: the output is written last, all of it or none
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # the reader (e.g. `| head`) went away: nothing left to say
        return 0
    except Exception as error:  # a compiler bug: one line, the traceback only on request
        message = f"error: internal error: {type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
        if debug:
            traceback.print_exc()
            print(f"{message} (the traceback is above)", file=sys.stderr)
        else:
            print(f"{message} (rerun with --debug for the traceback)", file=sys.stderr)
        return EXIT_INTERNAL


COMMANDS = ("compile", "ops", "check", "viz", "run", "train")


class _UsageError(Exception):
    """A command line argparse refuses (an unknown flag, a value of the wrong type, a missing argument)."""

    def __init__(self, prog: str, message: str):
        super().__init__(message)
        self.prog = prog


class _Parser(argparse.ArgumentParser):
    """argparse, with its refusals raised rather than printed after the usage text: `main` gives them the
    one line `error: ...` every bad input gets."""

    def error(self, message: str) -> NoReturn:
        raise _UsageError(self.prog, message)


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="wsc", description="Compile PyTorch models for wafer-scale meshes.")
    sub = parser.add_subparsers(required=True, metavar="COMMAND")
    c = sub.add_parser("compile", help="compile, place, run and verify a model file")
    c.add_argument("model", help="a .py file defining build_model(**kw) and example_inputs(**kw)")
    c.add_argument("--target", required=True, help="a packaged target name (cs2-sim) or a .yaml path")
    c.add_argument("--model-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="passed to build_model and example_inputs (repeatable)")
    c.add_argument("--out", help="output folder (default wsc_out/<model>)")
    c.add_argument("--force", action="store_true",
                   help="write into --out even when it holds another model's output (replacing its files)")
    # The compile options default to None here: CompileOptions holds the defaults and checks every value.
    c.add_argument("--strategy", help="placement: cpsat (default), greedy, row-major, snake, random or anneal")
    c.add_argument("--router", help="routing: congestion (default) or xy")
    c.add_argument("--mode", help="weight-streaming (default: one layer on the wafer at a time) or pipelined "
                                  "(all resident)")
    c.add_argument("--micro-batch", type=int, metavar="N",
                   help="sequences per pass: a step runs its batch in passes of N (default: the most that fit)")
    c.add_argument("--systems", type=int, metavar="N",
                   help="wafers working data parallel, each on 1/N of the batch (SwarmX; default 1)")
    c.add_argument("--no-verify", action="store_true", help="skip running the program and eager PyTorch")
    c.add_argument("--tolerance", type=float,
                   help="factor of the error bound derived from each output's arithmetic (default 1; see "
                        "docs/verification.md)")
    c.add_argument("--verify-layers", action="store_true",
                   help="diff every layer and kernel with eager PyTorch's values (done anyway when verification "
                        "fails)")
    c.add_argument("--weights", help="run on these weights: a safetensors file, a sharded checkpoint folder "
                                     "or its index (the model is then built without weights)")
    c.add_argument("--random-weights", type=int, metavar="SEED",
                   help="run and verify on wsc's seeded random weights instead of the model's own; `wsc run OUT "
                        "--random-weights SEED` draws the same from the folder alone")
    c.add_argument("--weights-dtype", metavar="{fp32,fp16}",
                   help="precision the weight store holds and streams (default fp32)")
    c.add_argument("--seed", type=int, help="placement seed (default 0)")
    c.add_argument("--time-limit", type=float,
                   help="CP-SAT deterministic seconds per distinct layer (default 2; reproducible)")
    c.add_argument("--debug", action="store_true", help="show tracebacks of internal errors")
    c.set_defaults(run=_compile)
    o = sub.add_parser("ops", help="list the supported ATen ops and wsc kernels")
    o.add_argument("--markdown", action="store_true", help="one table row per family of ATen ops (the README's)")
    o.set_defaults(run=_ops)
    k = sub.add_parser("check", help="prove a compile's placement.json legal, independently of the compiler")
    k.add_argument("out", help="the output folder of a compile")
    k.set_defaults(run=lambda args: __import__("wsc.artifacts.check", fromlist=["main"]).main([args.out]))
    v = sub.add_parser("viz", help="draw a compile's placement, link load and per-layer time")
    v.add_argument("out", help="the output folder of a compile")
    v.add_argument("--layer", type=int, default=None,
                   help="layer index to draw (default: the first layer with the most kernels)")
    v.add_argument("-o", "--output", required=True, metavar="FILE",
                   help="FILE.svg, FILE.png or FILE.html (self-contained page)")
    v.add_argument("--highlight", nargs="?", const="", default=None, metavar="LAYER:KERNEL[@X,Y]",
                   help="outline that kernel (and mark PE X,Y of it) on the layer drawn; given bare, the kernel "
                        "report.json's verification.located names")
    v.set_defaults(run=lambda args: __import__("wsc.artifacts.viz", fromlist=["main"]).main(
        args.out, args.output, args.layer, args.highlight))
    r = sub.add_parser("run", help="run a compiled program again from its output folder and weights alone")
    r.add_argument("out", help="the output folder of a compile (its program.json is read; nothing is executed)")
    weights = r.add_mutually_exclusive_group(required=True)
    weights.add_argument("--weights", help="a safetensors file, a sharded checkpoint folder or its index")
    weights.add_argument("--random-weights", type=int, metavar="SEED",
                         help="wsc's seeded random weights (those `wsc compile --random-weights SEED` used)")
    r.add_argument("--inputs", metavar="FILE.safetensors",
                   help="one tensor per program input, under its name (default: the compile's capture input)")
    r.add_argument("--outputs", metavar="FILE.safetensors", help="write the program's outputs there")
    r.add_argument("--weights-dtype", metavar="{fp32,fp16}",
                   help="precision the store holds and streams (default: the compile's)")
    r.add_argument("--tolerance", type=float, help="factor of the derived error bound (default 1)")
    r.add_argument("--debug", action="store_true", help="show tracebacks of internal errors")
    r.set_defaults(run=lambda args: __import__("wsc.run", fromlist=["main"]).main(args))
    t = sub.add_parser("train", help="train a language model with weight streaming and AdamW, verified against "
                                     "torch.optim.AdamW")
    t.add_argument("model", help="a .py file defining build_model(**kw) and example_inputs(**kw) (token ids)")
    t.add_argument("--target", required=True, help="a packaged target name (cs2-sim) or a .yaml path")
    t.add_argument("--model-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="passed to build_model and example_inputs (repeatable)")
    t.add_argument("--steps", type=int, default=3, help="optimizer steps (default 3)")
    t.add_argument("--lr", type=float, default=6e-4, help="peak learning rate (default 6e-4)")
    t.add_argument("--warmup", type=int, default=0, metavar="STEPS",
                   help="linear warm-up steps before the 10x cosine decay (default 0)")
    t.add_argument("--micro-batch", type=int, metavar="N",
                   help="sequences per step (default: the example inputs' batch)")
    t.add_argument("--data", metavar="FILE", help="token ids to train on: a .npy or a .safetensors of one int "
                                                 "tensor (default: a small structured stream wsc ships)")
    t.add_argument("--out", help="output folder (default wsc_out/<model>-train): report.json and the "
                                 "optimizer's state")
    t.add_argument("--no-verify", action="store_true", help="skip the lock-step check with torch.optim.AdamW")
    t.add_argument("--tolerance", type=float, default=1.0, help="factor of the derived error bound (default 1)")
    t.add_argument("--strategy", help="placement: cpsat (default), greedy, ...")
    t.add_argument("--debug", action="store_true", help="show tracebacks of internal errors")
    t.set_defaults(run=lambda args: __import__("wsc.training", fromlist=["main"]).main(args))
    return parser


def _ops(args: argparse.Namespace) -> int:
    from wsc.passes.legalize import families, refused_cases, supported_aten_ops
    from wsc.runtime.lowering import supported_ops

    if args.markdown:
        print("| family | ATen ops (`aten.` and overloads left out) | refused cases |")
        print("|---|---|---|")
        for family, aten_ops in families().items():
            names = sorted({op.split(".")[1] for op in aten_ops})
            refusals = sorted({refused_cases(op) for op in aten_ops} - {""})
            print(f"| {family} | {', '.join(names)} | {'; '.join(refusals) or '-'} |")
        return 0
    print("ATen ops wsc legalises (and the cases each refuses):")
    width = max(map(len, supported_aten_ops()))
    for op in supported_aten_ops():
        refuses = refused_cases(op)
        print(f"  {op:<{width}}  refuses: {refuses}" if refuses else f"  {op}")
    print("wsc kernels (each JIT-compiled to LLVM):")
    for op in supported_ops():
        print(f"  {op}")
    return 0


def compile_options(args: argparse.Namespace) -> CompileOptions:
    """The one CompileOptions of a `wsc compile`: the options given on the command line, checked."""
    from wsc.options import CompileOptions

    given = {"strategy": args.strategy, "router": args.router, "mode": args.mode, "micro_batch": args.micro_batch,
             "systems": args.systems, "verify": not args.no_verify, "tolerance": args.tolerance,
             "verify_layers": args.verify_layers or None,
             "weights": args.weights, "weights_dtype": args.weights_dtype, "random_weights": args.random_weights,
             "seed": args.seed,
             "time_limit": args.time_limit}
    return CompileOptions(**{name: value for name, value in given.items() if value is not None})


def _compile(args: argparse.Namespace) -> int:
    from wsc.targets import load_target

    # What the command line alone decides is checked before anything is imported, built or traced.
    options = compile_options(args)  # a bad option is refused before anything is built
    target = load_target(args.target)
    model_name = Path(args.model).stem
    out = Path(args.out) if args.out else Path("wsc_out") / model_name
    check_out(out, args.model, args.force)

    from wsc import api, progress
    from wsc.frontend import capture
    from wsc.frontend.meta import empty_weights
    from wsc.frontend.modelfile import build, load_exported, parse_model_args

    capture.VERBOSE = args.debug
    info: dict = {"file": str(args.model)}
    if args.model.endswith(".pt2"):
        if args.model_arg:
            raise WscError(f"--model-arg {' '.join(args.model_arg)} does not apply to a .pt2 file, whose inputs "
                           "were fixed when it was exported; drop --model-arg, or export it again with them")
        model, inputs = load_exported(args.model)
    else:
        model_args = parse_model_args(args.model_arg)
        # Build without weights first: compiling needs only shapes, and the size decides whether the
        # weights can be made (and the program verified) at all.
        with empty_weights():
            model, inputs, info["args"] = build(args.model, model_args)
        # Random weights are drawn after the compile for what the program streams: the model needs none.
        if options.verify and options.weights is None and options.random_weights is None and api.weights_fit(model):
            with progress.stage(f"building {model_name} with its weights"):  # random init of 1B weights takes seconds
                model, inputs, info["args"] = build(args.model, model_args)
    compiled = api.compile(model, inputs, target, options, model_name=model_name, model_info=info)
    compiled.report["origin"] = origin(args, info)
    with progress.stage(f"writing {out}"):
        try:
            compiled.save(out)
        except OSError as error:  # a full disk, a folder gone read-only: nothing was left (all or none)
            raise WscError(unwritable_message(out, error)) from None
    _print_summary(compiled.report, out)
    return EXIT_MISMATCH if compiled.report["verification"]["status"] == "fail" else 0


def origin(args: argparse.Namespace, info: dict) -> dict:
    """report.json's `origin`: the model file (its absolute path) and the arguments that wrote the folder. The
    command line is kept without its --out, which is the folder itself."""
    argv, kept = list(getattr(args, "argv", [])), []
    while argv:
        word = argv.pop(0)
        if word == "--out" and argv:
            argv.pop(0)
        elif not word.startswith("--out="):
            kept.append(word)
    return {"model_file": str(Path(args.model).resolve()), "model_args": info.get("args", {}), "argv": kept}


def check_out(out: Path, model: str, force: bool) -> None:
    """Refuse an --out that cannot be written (under a file, on a read-only or pseudo file system) or that holds
    another model's output (unless `force`), before anything is compiled."""
    from wsc.artifacts import OUTPUT_FILES
    from wsc.artifacts.atomic import unwritable

    if out.is_dir() and not force and any((out / name).exists() for name in OUTPUT_FILES):
        holder = _origin_model(out)
        if holder != str(Path(model).resolve()):
            whose = f"another model's output ({Path(holder).name})" if holder else "the output of another compile"
            raise WscError(f"--out {out} holds {whose}; give another --out, or --force to replace it")
    problem = unwritable(out)
    if problem:
        raise WscError(f"--out {out} cannot be written: {problem}; give a folder you can write")


def _origin_model(out: Path) -> str:
    """The model file that wrote `out`, as its report.json's origin records it (or, in a report written before
    origin was, as its model.file names it from here); '' when it does not say."""
    import json

    try:
        report = json.loads((out / "report.json").read_text(encoding="utf-8"))
        if "origin" in report:
            return str(report["origin"]["model_file"])
        return str(Path(report["model"]["file"]).resolve())
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError):
        return ""


def unwritable_message(out: Path, error: OSError) -> str:
    """The one line for a write into `out` that failed (the disk filled up, the folder went away)."""
    import errno

    if error.errno == errno.ENOSPC:
        return f"cannot write {out}: no space left on the device; free some space or give another --out"
    if error.errno == errno.EDQUOT:
        return f"cannot write {out}: over the disk quota; free some space or give another --out"
    return f"cannot write {out} ({error.strerror or type(error).__name__}); give a folder you can write"


def _print_summary(report: dict, out: Path) -> None:
    m, p, s, v = report["model"], report["placement"], report["simulation"], report["verification"]
    args = " ".join(f"{k}={val}" for k, val in m.get("args", {}).items())
    print(f"wsc: {m['name']} {args} on {report['target']['name']}")
    print(f"  model         {m['params'] / 1e6:.1f}M params, {m['layers']} layers, "
          f"{m['flops_per_step'] / 1e9:.1f} GFLOP per step ({m['capture']})")
    print(f"  placement     {placement_name(p, m['layers'])}: {p['pes_used']:,} PEs ({p['utilization']:.1%} of the "
          f"mesh), wirelength {p['wirelength']:.3g} byte-hops, max link load {p['max_link_load']:,} B")
    print(f"  simulation    {s['step_seconds'] * 1e3:.3f} ms per step (bound {s['bound_seconds'] * 1e3:.3f} ms), "
          f"{s['bottleneck']}-bound, {s['tokens_per_second']:,.0f} tokens/s, "
          f"{s['compute_utilization']:.1%} of peak")
    if s["micro_batches"] > 1 or s["systems"] > 1:
        print(f"  batching      {s['micro_batches']} micro-batches of {s['micro_batch_tokens']:,} tokens"
              + (f", {s['passes_per_system']} per system on {s['systems']} systems" if s["systems"] > 1 else ""))
    t = s["training"]
    if t:
        scaling = f", scaling efficiency {t['scaling_efficiency']:.1%}" if s["systems"] > 1 else ""
        bound = "bound by the step boundary" if t["bottleneck"] == "boundary" else f"{t['bottleneck']}-bound"
        print(f"  training      {t['step_seconds'] * 1e3:.3f} ms per step (forward + backward), "
              f"{bound}, {t['tokens_per_second']:,.0f} tokens/s, "
              f"{t['compute_utilization']:.1%} of peak{scaling}")
    defects = s.get("defects")
    if defects:
        cut = f", {defects['cut_off_pes']:,} more cut off" if defects["cut_off_pes"] else ""
        slowdown = f"{defects['slowdown']:.2f}x" if defects["slowdown"] is not None else "unknown against"
        print(f"  defects       {defects['dead_share']:.1%} of PEs dead ({defects['dead_pes']:,}{cut}): step "
              f"{slowdown} the perfect wafer's")
    for line in verification_lines(v, out):
        print(line)
    written = ["report.json", "placement.json", "trace.json", "report.html", "program.json"]
    if (report.get("program") or {}).get("reference"):
        written.append(report["program"]["reference"])
    print(f"  wrote         {out}/: {', '.join(written)} ({report['timings']['total']:.1f} s)")


def placement_name(p: dict, layers: int) -> str:
    """The summary's name for the placement: the strategy, and the baseline it fell back to in the layers its
    solver found no arrangement for."""
    solver = p.get("solver") or {}
    if not solver.get("fallback"):
        return str(p["strategy"])
    return (f"{p['strategy']} fell back to {solver['fallback']} (CP-SAT returned {solver['fallback_status']}, "
            f"no solution, in {len(solver['fallback_layers'])} of {layers} layers)")


def verification_lines(v: dict, out: Path) -> list[str]:
    """The summary's verification lines: the verdict with the worst error against its bound, and on a failure
    the first kernel wrong by itself, where it sits and how to see it."""
    if v["status"] == "skipped":
        return [f"  verification  skipped ({v.get('note', '--no-verify')})"]
    err = "nan" if v["max_abs_err"] is None else f"{v['max_abs_err']:.2e}"
    ratio = v.get("error_ratio")
    share = f"at {ratio:.2g} of its bound" if ratio is not None else (
        "non-finite where eager is not" if v["max_abs_err"] is None else "off where the bound is 0")
    inputs = len(v.get("inputs", [])) or 1
    scaled = "" if v["tolerance"] == 1 else f", the bound x {v['tolerance']:g}"
    lines = [f"  verification  {v['status']}: worst element {share} (max abs error {err}) vs eager PyTorch, "
             f"{inputs} inputs{scaled}"]
    where = v.get("located")
    if where:
        what = f"weight {where['key']}" if where["kind"] == "weight" else f"kernel {where['kernel']} ({where['op']})"
        at = ""
        if where.get("tile"):
            t = where["tile"]
            at = f", tile row block {t['row_block']} col block {t['col_block']}"
            if where.get("pe"):
                at += f" on PE ({where['pe'][0]}, {where['pe'][1]})"
        ratio = where.get("error_ratio")
        size = f"{ratio:.3g}x its bound" if ratio is not None else (
            "non-finite" if where.get("max_abs_err") is None else "off where its bound is 0")
        lines.append(f"  first wrong   {what} in layer {where['layer_index']} ({where['layer']}): {size} "
                     f"{where['wrong']}{at}")
        if where.get("source"):
            lines.append(f"                from {where['source']}")
        if where["kind"] != "weight":
            lines.append(f"                see it: wsc viz {out} --highlight -o {out / 'wrong.svg'}")
    return lines


if __name__ == "__main__":
    sys.exit(main())
