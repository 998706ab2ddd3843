"""Training with weight streaming: each step's forward and backward run layer by layer through the JIT kernels,
the gradients stream out to the optimizer's store and AdamW updates the weights there.

    compile     the joint forward + backward graph (wsc.frontend.training) through the same passes as a
                forward: legalised (the backward ops included), cut into layers (the backward's run in
                reverse, each streaming its forward layer's weights again), partitioned, placed, routed
    step        the layers run on a micro-batch; each gradient is handed to the store as soon as its layer
                computes it (Executor.stream_out) and added there to the step's other micro-batches'
    optimizer   the store applies AdamW (runtime/optimizer.py): fp32 master weights and both moments in
                safetensors files beside each other; the next forward streams the updated weights
    verify      in lock step with torch.optim.AdamW: before each step the reference model and its optimizer
                are given the store's weights and moments; the loss and every gradient are then held to
                wsc.verification's bound for their path in the joint graph, and the updated weights and
                moments to what the gradients' measured difference makes of them through AdamW's arithmetic
                plus a few ulp of rounding. A gradient out of bound is located by the per-kernel golden diff
                over the joint graph: the first layer and kernel wrong by itself.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from wsc import pipeline, verification
from wsc.core.errors import WscError
from wsc.frontend.capture import to_numpy
from wsc.frontend.training import LanguageModelLoss, TrainingCapture, canonical_keys, capture_training
from wsc.options import CompileOptions
from wsc.runtime.executor import Executor
from wsc.runtime.optimizer import AdamWConfig, OptimizerState
from wsc.runtime.weight_store import WeightStore, write_store
from wsc.targets import Target

# Rounding allowed the fp32 update of an element beyond what the gradients' difference explains, in ulps of the
# largest magnitude it rounds (the result, the value before the step, the step): on each side the decay and the
# final add round to half an ulp of the weight, and the step (a sqrt, two divisions, an add, a multiply; torch's
# sqrt is itself off by an ulp on some elements) to about three ulps of itself, so about 4 per side, 8 in all.
UPDATE_ULPS = 8


def compile_training(model: torch.nn.Module, ids: torch.Tensor, targets: torch.Tensor, target: Target,
                     options: CompileOptions | None = None, *, model_name: str = "model",
                     verify_ir: bool = False, **keywords: Any) -> pipeline.Compiled:
    """The joint graph of the model's loss on (ids, targets), mapped onto `target`."""
    captured = capture_training(model, ids, targets)
    return pipeline.compile_captured(captured, int(ids.numel()), target, CompileOptions.of(options, **keywords),
                                     model_name=model_name, verify_ir=verify_ir)


def trained_weights(compiled: pipeline.Compiled) -> dict[str, np.ndarray]:
    """The store keys of the program's weights, each once, as fp32 arrays."""
    keys = dict.fromkeys(str(n.attrs["key"]) for n in compiled.program.graph.params)
    return {k: to_numpy(compiled.weights[k]).astype(np.float32) for k in keys}


def capture_of(compiled: pipeline.Compiled) -> TrainingCapture:
    captured = compiled.captured
    if not isinstance(captured, TrainingCapture):
        raise WscError("this program is a forward compile; compile the model for training (wsc train)")
    return captured


@dataclass
class StepCheck:
    step: int
    loss: dict[str, Any]
    gradients: dict[str, Any]
    weights: dict[str, Any]
    exp_avg: dict[str, Any]
    exp_avg_sq: dict[str, Any]

    @property
    def status(self) -> str:
        parts = (self.loss, self.gradients, self.weights, self.exp_avg, self.exp_avg_sq)
        return "pass" if all(p["status"] == "pass" for p in parts) else "fail"


@dataclass
class TrainingRun:
    losses: list[float] = field(default_factory=list)
    learning_rates: list[float] = field(default_factory=list)
    seconds: float = 0.0
    tokens: int = 0
    streamed_bytes: int = 0
    checks: list[StepCheck] = field(default_factory=list)
    located: dict[str, Any] | None = None

    @property
    def status(self) -> str:
        if not self.checks:
            return "none"
        return "pass" if all(c.status == "pass" for c in self.checks) else "fail"

    def summary(self) -> dict[str, Any]:
        """The report's `training` section."""
        worst = {part: max((getattr(c, part).get("max_abs_err") or 0.0 for c in self.checks), default=None)
                 for part in ("loss", "gradients", "weights", "exp_avg", "exp_avg_sq")}
        ratio = max((getattr(c, part).get("error_ratio") or 0.0 for c in self.checks
                     for part in ("loss", "gradients", "weights", "exp_avg", "exp_avg_sq")), default=None)
        shares = {part: max((getattr(c, part).get("error_ratio") or 0.0 for c in self.checks), default=None)
                  for part in ("loss", "gradients", "weights", "exp_avg", "exp_avg_sq")}
        first_fail = next((c for c in self.checks if c.status == "fail"), None)
        failing = None if first_fail is None else {
            part: {k: getattr(first_fail, part).get(k) for k in ("worst", "failing", "max_abs_err", "error_ratio")}
            for part in ("loss", "gradients", "weights", "exp_avg", "exp_avg_sq")
            if getattr(first_fail, part)["status"] == "fail"}
        return {
            "steps": len(self.losses), "loss": self.losses, "learning_rate": self.learning_rates,
            "status": self.status, "max_abs_err": worst, "worst_share_of_bound": ratio,
            "first_failing_step": None if first_fail is None else first_fail.step,
            "share_of_bound": shares, "first_failure": failing,
            "located": self.located, "host_seconds": self.seconds,
            "tokens_per_second": self.tokens / self.seconds if self.seconds else None,
            "streamed_bytes": self.streamed_bytes,
        }


def train(compiled: pipeline.Compiled, batches: Sequence[tuple[np.ndarray, np.ndarray]], config: AdamWConfig,
          folder: Path, *, reference: torch.nn.Module | None = None, tolerance: float = 1.0,
          on_step: Callable[[int, float, float], None] | None = None) -> TrainingRun:
    """Run one optimizer step per (ids, targets) batch, the optimizer's state kept in `folder`. With a
    `reference` model (the one compiled, at the same initial weights), every step is verified in lock step
    with torch.optim.AdamW on it; the reference is not changed."""
    captured = capture_of(compiled)
    program = compiled.program
    state = OptimizerState.create(folder, trained_weights(compiled), config)
    checker = _LockStep(compiled, reference, config, tolerance) if reference is not None else None
    run = TrainingRun()
    store = WeightStore(state.master_path)
    try:
        executor = Executor(program, store)
        executor.stream_out(list(range(1, len(program.graph.outputs))),
                            lambda position, value: state.accumulate(captured.gradients[position - 1], value))
        for step, (ids, targets) in enumerate(batches, start=1):
            if checker is not None:
                checker.start(state)
            state.zero_grad()
            start = time.perf_counter()
            outputs = executor.run_pass([np.asarray(ids), np.asarray(targets)])
            run.seconds += time.perf_counter() - start
            loss = float(np.asarray(outputs[0]).reshape(()))
            if checker is not None:
                check = checker.gradients(step, state, loss, ids, targets)
                if check.gradients["status"] == "fail" and run.located is None:
                    run.located = checker.locate(ids, targets)
            start = time.perf_counter()
            lr = state.apply()
            run.seconds += time.perf_counter() - start
            run.losses.append(loss)
            run.learning_rates.append(lr)
            run.tokens += int(np.asarray(ids).size)
            if checker is not None:
                checker.update(check, state)
                run.checks.append(check)
            if on_step is not None:
                on_step(step, loss, lr)
        run.streamed_bytes = store.streamed_bytes
    finally:
        store.close()
        state.close()
    return run


class _LockStep:
    """torch.optim.AdamW on a copy of the reference model, restarted before each step from the store's state."""

    def __init__(self, compiled: pipeline.Compiled, reference: torch.nn.Module, config: AdamWConfig,
                 tolerance: float):
        self.compiled, self.config, self.tolerance = compiled, config, tolerance
        self.model = copy.deepcopy(reference).float()
        self.model.train()
        self.loss = LanguageModelLoss(self.model)
        captured = capture_of(compiled)
        keys = canonical_keys(self.model)
        self.params = {keys[name]: p for name, p in self.model.named_parameters()}  # one per tensor
        missing = sorted(set(captured.gradients) - set(self.params))
        if missing:
            raise WscError(f"the reference model has no parameter {missing[0]}; give the model that was compiled")
        self.optimizer = torch.optim.AdamW(list(self.params.values()), lr=config.lr, betas=config.betas,
                                           eps=config.eps, weight_decay=config.weight_decay, foreach=False)
        self.counts = verification.path_counts(compiled.program.graph)
        self.gradient_terms: dict[str, Any] = {}
        for position, key in enumerate(captured.gradients, start=1):
            c = self.counts[compiled.program.graph.outputs[position]]
            held = self.gradient_terms.get(key)
            self.gradient_terms[key] = c if held is None or c.terms > held.terms else held

    def start(self, state: OptimizerState) -> None:
        """The reference given the store's weights and moments, and the step count: the step starts equal."""
        with torch.no_grad():
            for key, p in self.params.items():
                p.copy_(torch.from_numpy(np.array(state.weight(key))))
                if state.step:
                    self.optimizer.state[p] = {
                        "step": torch.tensor(float(state.step)),
                        "exp_avg": torch.from_numpy(np.array(state.exp_avg(key))),
                        "exp_avg_sq": torch.from_numpy(np.array(state.exp_avg_sq(key)))}
                else:
                    self.optimizer.state.pop(p, None)
        self.before = {key: (np.array(state.exp_avg(key), np.float64), np.array(state.exp_avg_sq(key), np.float64))
                       for key in self.params}
        self.before_weights = {key: np.array(state.weight(key), np.float64) for key in self.params}
        self.step_index = state.step + 1
        for group in self.optimizer.param_groups:
            group["lr"] = self.config.lr_at(self.step_index)

    def gradients(self, step: int, state: OptimizerState, loss: float, ids: np.ndarray,
                  targets: np.ndarray) -> StepCheck:
        self.optimizer.zero_grad(set_to_none=True)
        expected = self.loss(torch.from_numpy(np.asarray(ids)), torch.from_numpy(np.asarray(targets)))[0]
        expected.backward()
        loss_counts = self.counts[self.compiled.program.graph.outputs[0]]
        bound = verification.relative_bound(loss_counts.terms, loss_counts.weighted, "fp32", self.tolerance)
        loss_check = verification.compare(np.asarray(loss, np.float32).reshape(()),
                                          expected.detach().numpy().reshape(()), bound)
        per_key = []
        self.wsc_grads = {}
        for key, p in self.params.items():
            got = np.array(state.grad(key))
            self.wsc_grads[key] = got
            want = p.grad.detach().numpy() if p.grad is not None else np.zeros_like(got)
            c = self.gradient_terms[key]
            result = verification.compare(got, want, verification.relative_bound(c.terms, c.weighted, "fp32",
                                                                                 self.tolerance))
            per_key.append({"key": key, **result})
        return StepCheck(step, loss_check, _worst(per_key), {}, {}, {})

    def update(self, check: StepCheck, state: OptimizerState) -> None:
        """The store's AdamW step against torch's from the same state: each element within what the two
        gradients' difference makes of it (AdamW's arithmetic in float64 on both) plus UPDATE_ULPS of rounding."""
        self.optimizer.step()
        cfg = self.config
        beta1, beta2 = cfg.betas
        lr = cfg.lr_at(self.step_index)
        c1, c2 = 1 - beta1 ** self.step_index, 1 - beta2 ** self.step_index
        parts: dict[str, list[dict[str, Any]]] = {"weights": [], "exp_avg": [], "exp_avg_sq": []}
        for key, p in self.params.items():
            m0, v0 = self.before[key]
            g_w = self.wsc_grads[key].astype(np.float64)
            g_t = p.grad.detach().numpy().astype(np.float64) if p.grad is not None else np.zeros_like(g_w)
            m_w, m_t = beta1 * m0 + (1 - beta1) * g_w, beta1 * m0 + (1 - beta1) * g_t
            v_w, v_t = beta2 * v0 + (1 - beta2) * g_w * g_w, beta2 * v0 + (1 - beta2) * g_t * g_t
            u_w = m_w / c1 / (np.sqrt(v_w / c2) + cfg.eps)
            u_t = m_t / c1 / (np.sqrt(v_t / c2) + cfg.eps)
            state_t = self.optimizer.state[p]
            w_want = p.detach().numpy()
            m_want, v_want = state_t["exp_avg"].numpy(), state_t["exp_avg_sq"].numpy()
            w_got, m_got, v_got = (np.array(f(key)) for f in (state.weight, state.exp_avg, state.exp_avg_sq))
            w0 = self.before_weights[key]
            moved = np.maximum(np.abs(w0), lr * np.maximum(np.abs(u_w), np.abs(u_t)))
            # The first moment rounds to an ulp of its operands (m0, g), not of its result: where they nearly
            # cancel, that ulp is a large share of m, and the step carries it through the division (both sides).
            m_ulp = np.spacing(np.maximum(np.abs(m0), np.abs(g_t)).astype(np.float32)).astype(np.float64)
            m_rounding = lr * 2 * m_ulp / c1 / (np.sqrt(v_t / c2) + cfg.eps)
            for part, got, want, explained, terms in (
                    ("weights", w_got, w_want, lr * np.abs(u_w - u_t) + m_rounding, moved),
                    ("exp_avg", m_got, m_want, np.abs(m_w - m_t), np.maximum(np.abs(m0), np.abs(g_t))),
                    ("exp_avg_sq", v_got, v_want, np.abs(v_w - v_t), np.maximum(v0, g_t * g_t))):
                parts[part].append({"key": key, **_within(got, want, explained, terms)})
        check.weights, check.exp_avg, check.exp_avg_sq = (_worst(parts[k]) for k in ("weights", "exp_avg",
                                                                                      "exp_avg_sq"))

    def locate(self, ids: np.ndarray, targets: np.ndarray) -> dict[str, Any] | None:
        """The first layer and kernel of the joint graph wrong by itself, on the step's weights (the store's, which
        the reference holds until its optimizer steps)."""
        current = {k: p.detach().clone() for k, p in self.params.items()}
        captured = dataclasses.replace(self.compiled.captured, weights={**self.compiled.captured.weights, **current})
        compiled = dataclasses.replace(self.compiled, captured=captured)
        with tempfile.TemporaryDirectory(prefix="wsc-locate-") as tmp:
            weights = {k: p.numpy() for k, p in current.items()}
            path = write_store(Path(tmp) / "weights.safetensors", weights, dtype="fp32")
            diff = pipeline.diff_layers(compiled, self.model, (torch.from_numpy(np.asarray(ids)),
                                                                   torch.from_numpy(np.asarray(targets))),
                                        path, "fp32", self.tolerance)
        return None if diff is None else diff.located()


def _within(got: np.ndarray, want: np.ndarray, explained: np.ndarray,
            terms: np.ndarray | float = 0.0) -> dict[str, Any]:
    """|got - want| against `explained` plus UPDATE_ULPS ulp of the largest magnitude the update rounds (the
    results, and `terms`: the value before the step and the step itself), element by element."""
    got64, want64 = got.astype(np.float64), want.astype(np.float64)
    error = np.abs(got64 - want64)
    largest = np.maximum(np.maximum(np.abs(got64), np.abs(want64)), terms)
    ulp = np.spacing(largest.astype(np.float32)).astype(np.float64)
    allowed = explained + UPDATE_ULPS * ulp
    share = error / np.maximum(allowed, np.finfo(np.float64).tiny)
    worst = int(np.argmax(share)) if share.size else 0
    ratio = float(share.reshape(-1)[worst]) if share.size else 0.0
    return {"status": "pass" if bool(np.all(error <= allowed)) else "fail",
            "max_abs_err": float(error.max()) if error.size else 0.0,
            "allowed_abs_err": float(allowed.reshape(-1)[worst]) if share.size else 0.0,
            "error_ratio": ratio}


def _worst(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Every tensor's result in one: pass when all pass, the worst share of its bound and where."""
    if not results:
        return {"status": "pass", "max_abs_err": 0.0, "error_ratio": 0.0, "worst": None, "failing": []}
    worst = max(results, key=lambda r: r.get("error_ratio") or 0.0)
    return {"status": "pass" if all(r["status"] == "pass" for r in results) else "fail",
            "max_abs_err": max(r.get("max_abs_err") or 0.0 for r in results),
            "error_ratio": worst.get("error_ratio"), "worst": worst["key"],
            "failing": [r["key"] for r in results if r["status"] != "pass"][:10]}


def lm_batches(tokens: np.ndarray, batch: int, seq: int, steps: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """`steps` batches of [batch, seq] ids and their next-token targets, taken in order from a 1-D stream of
    token ids (wrapping around)."""
    tokens = np.asarray(tokens, dtype=np.int64).reshape(-1)
    need = batch * (seq + 1)
    if tokens.size < need:
        raise WscError(f"the data holds {tokens.size} tokens, fewer than one batch needs ({need}); give more tokens "
                       "or a smaller --micro-batch")
    out = []
    start = 0
    for _ in range(steps):
        rows = []
        for _ in range(batch):
            if start + seq + 1 > tokens.size:
                start = 0
            rows.append(tokens[start:start + seq + 1])
            start += seq + 1
        window = np.stack(rows)
        out.append((np.ascontiguousarray(window[:, :-1]), np.ascontiguousarray(window[:, 1:])))
    return out


def structured_tokens(vocab: int, length: int, seed: int = 0) -> np.ndarray:
    """A deterministic token stream a small model can learn within a few dozen steps: repeated phrases of a
    small set (each phrase a fixed run of tokens), chosen by a seeded generator, so the next token is mostly
    determined by the ones before it."""
    rng = np.random.default_rng(seed)
    words = min(vocab, 64)
    phrases = [rng.integers(0, words, size=int(rng.integers(3, 8))) for _ in range(12)]
    out: list[int] = []
    while len(out) < length:
        out.extend(int(t) for t in phrases[int(rng.integers(0, len(phrases)))])
    return np.asarray(out[:length], dtype=np.int64)


def loss_falls(losses: Sequence[float], window: int = 5) -> bool:
    """Whether the mean of the last `window` losses is below the mean of the first `window`."""
    if len(losses) < 2 * window:
        return False
    return float(np.mean(losses[-window:])) < float(np.mean(losses[:window]))



# ---------------------------------------------------------------------------------------------- wsc train


def read_tokens(path: str) -> np.ndarray:
    """The int token ids of a .npy file or of the one tensor of a .safetensors file, as one stream."""
    file = Path(path)
    if not file.is_file():
        raise WscError(f"--data {path} is not a file; give a .npy or .safetensors of int token ids")
    try:
        if file.suffix == ".npy":
            tokens = np.load(file, allow_pickle=False)
        elif file.suffix == ".safetensors":
            from safetensors.numpy import load_file
            tensors = load_file(str(file))
            if len(tensors) != 1:
                raise WscError(f"--data {path} holds {len(tensors)} tensors; give one tensor of token ids")
            tokens = next(iter(tensors.values()))
        else:
            raise WscError(f"--data {path} is neither .npy nor .safetensors; give token ids in one of them")
    except WscError:
        raise
    except Exception as error:
        raise WscError(f"--data {path} cannot be read ({type(error).__name__}); give a .npy or .safetensors "
                       "of int token ids") from None
    if tokens.dtype.kind not in "iu":
        raise WscError(f"--data {path} holds {tokens.dtype} values; give int token ids")
    return tokens.astype(np.int64).reshape(-1)


def vocabulary(model: torch.nn.Module) -> int:
    """The size of the model's token vocabulary: its first embedding's rows."""
    for module in model.modules():
        if isinstance(module, torch.nn.Embedding):
            return int(module.num_embeddings)
    raise WscError("the model has no token embedding (nn.Embedding); wsc train trains language models")


def refuse_foreign_out(out: Path) -> None:
    """`wsc train` replaces its --out folder whole: refuse one that holds anything but an earlier training's
    output (report.json with a `training` section and the optimizer's folder), so no other file is removed."""
    import json

    if not out.exists() or not any(out.iterdir()):
        return
    names = {p.name for p in out.iterdir()}
    try:
        ours = names <= {"report.json", "optimizer"} and "training" in json.loads((out / "report.json").read_text())
    except (OSError, ValueError):
        ours = False
    if not ours:
        raise WscError(f"--out {out} holds files that are not a wsc train output; give an empty or new folder")


def main(args: Any) -> int:
    import json
    import os
    import shutil

    from wsc.cli import check_out
    from wsc.frontend.modelfile import build, parse_model_args
    from wsc.targets import load_target

    if args.steps < 1:
        raise WscError(f"--steps {args.steps} is not a number of steps; give 1 or more")
    if args.lr <= 0 or not math.isfinite(args.lr):
        raise WscError(f"--lr {args.lr} is not a learning rate; give a positive number")
    if args.warmup < 0:
        raise WscError(f"--warmup {args.warmup} is negative; give 0 or more steps")
    if args.micro_batch is not None and args.micro_batch < 1:
        raise WscError(f"--micro-batch {args.micro_batch} is not a number of sequences; give 1 or more")
    target = load_target(args.target)
    name = Path(args.model).stem
    out = Path(args.out) if args.out else Path("wsc_out") / f"{name}-train"
    check_out(out, args.model, True)
    refuse_foreign_out(out)
    tokens_file = read_tokens(args.data) if args.data else None
    model, inputs, model_args = build(args.model, parse_model_args(args.model_arg))
    ids = inputs[0]
    if ids.dtype != torch.int64 or ids.dim() != 2:
        raise WscError(f"{args.model}: example_inputs gives {ids.dtype}{list(ids.shape)}; wsc train takes a "
                       "language model whose input is int64 token ids [batch, seq]")
    batch, seq = (args.micro_batch or ids.shape[0]), ids.shape[1]
    vocab = vocabulary(model)
    stream = tokens_file if tokens_file is not None else structured_tokens(vocab, batch * (seq + 1) * args.steps)
    if stream.size and (stream.min() < 0 or stream.max() >= vocab):
        raise WscError(f"--data holds token id {int(stream.max() if stream.max() >= vocab else stream.min())}, "
                       f"outside the model's vocabulary of {vocab}; give ids in [0, {vocab})")
    batches = lm_batches(stream, batch, seq, args.steps)
    config = AdamWConfig(lr=args.lr, warmup_steps=args.warmup, total_steps=args.steps)
    options = CompileOptions(**({"strategy": args.strategy} if args.strategy else {}))
    first_ids, first_targets = (torch.from_numpy(a) for a in batches[0])
    compiled = compile_training(model, first_ids, first_targets, target, options, model_name=name)
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        def said(step: int, loss: float, lr: float) -> None:
            print(f"step {step:4d}  loss {loss:.6f}  lr {lr:.3e}", flush=True)

        run = train(compiled, batches, config, work / "optimizer",
                    reference=None if args.no_verify else model, tolerance=args.tolerance, on_step=said)
        estimate = compiled.program.estimate.get("training", {})
        section = {**run.summary(), "predicted_step_seconds": estimate.get("step_seconds"),
                   "optimizer": {"name": "AdamW", "lr": config.lr, "betas": list(config.betas), "eps": config.eps,
                                 "weight_decay": config.weight_decay, "warmup_steps": config.warmup_steps,
                                 "total_steps": config.total_steps, "final_ratio": config.final_ratio},
                   "micro_batch": batch, "seq": seq,
                   "data": args.data or "structured (wsc.training.structured_tokens)"}
        report = {"model": name, "target": target.name, "origin": {"file": str(args.model), "args": model_args},
                  "training": section}
        (work / "report.json").write_text(json.dumps(report, indent=2, default=float))
        if out.exists():
            shutil.rmtree(out)
        os.replace(work, out)
    finally:
        if work.exists():
            shutil.rmtree(work, ignore_errors=True)
    status = section["status"]
    tps = section["tokens_per_second"]
    print(f"trained {run.tokens} tokens in {run.seconds:.2f} s on the host ({tps:.0f} tokens/s); predicted step on "
          f"{target.name}: {(section['predicted_step_seconds'] or 0) * 1e3:.3f} ms")
    if status != "none":
        print(f"verification {status} against torch.optim.AdamW in lock step: worst at "
              f"{section['worst_share_of_bound']:.3g} of its bound")
    if run.located:
        where = run.located
        print(f"  first wrong by itself: kernel {where['kernel']} ({where['op']}) in layer {where['layer']}")
    print(f"wrote {out}/report.json and {out}/optimizer/")
    return 1 if status == "fail" else 0
