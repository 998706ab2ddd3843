"""OpInfo conformance, every sample: each op wsc covers, run on all of torch's own sample inputs for it, compiled
by wsc and held to eager PyTorch (tests/opinfo_harness.py says how; tests/test_opinfo.py runs a handful).

    .venv/bin/python benchmarks/opinfo.py [--ops add,sub] [--limit N] [--json FILE] [--timeout SECONDS]

Prints, per op: its samples, how many matched, were refused, failed and were skipped, the share matched of
those not skipped, and the first messages of its failures and refusals (most frequent first); then a summary
line. Exits 1 when any op has a failure or matches under 90% of its samples (skipped ones left out).

Each op runs in a process of its own, forked from this one: a kernel that crashes the process or a compile that
hangs (past --timeout) costs its sample, recorded as failed, and the op goes on in a fresh process.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import signal
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import opinfo_harness as harness  # noqa: E402  (found through the path set just above)

STATUSES = ("matched", "refused", "failed", "skipped")
BAR = 0.9  # an op passes with no failure and at least this share of its expressible samples matched
MESSAGES_SHOWN = 3


def run_op(key: str, start: int, limit: int | None, connection) -> None:
    """In a forked process: run the op's samples from `start`, sending ("start", index) before each and
    ("done", index, record) after it, then ("end", count)."""
    import torch

    torch.set_num_threads(1)  # the samples are tiny; one thread shares the machine best
    op = harness.covered_ops([key])[key]
    every = harness.samples(op)
    if limit is not None:
        every = every[:limit]
    for index in range(start, len(every)):
        sample = every[index]
        connection.send(("start", index, harness.describe(sample)))
        begin = time.perf_counter()
        try:
            outcome = harness.run_sample(op, sample)
            record = {"status": outcome.status, "message": harness.short(outcome.message),
                      "max_abs_err": outcome.max_abs_err, "error_share": outcome.error_share}
        except Exception as error:  # the harness itself broke on this sample: still the op's failure to see
            record = {"status": "failed", "message": f"harness error: {type(error).__name__}: {error}"}
        record["seconds"] = round(time.perf_counter() - begin, 3)
        connection.send(("done", index, record))
    connection.send(("end", len(every)))


def run_covered_op(key: str, limit: int | None, timeout: float) -> list[dict]:
    """Every sample of one op, each as a record: index, sample, status, message, errors and seconds."""
    context = multiprocessing.get_context("fork")
    records: list[dict] = []
    start = 0
    while True:
        receive, send = context.Pipe(duplex=False)
        worker = context.Process(target=run_op, args=(key, start, limit, send), daemon=True)
        worker.start()
        send.close()
        current, described, ended = None, "", False
        while True:
            if not receive.poll(timeout):
                worker.kill()
                lost = f"timed out after {timeout:g} s"
                break
            try:
                message = receive.recv()
            except EOFError:
                worker.join()
                code = worker.exitcode or 0
                reason = signal.Signals(-code).name if code < 0 else f"exit code {code}"
                lost = f"the process died ({reason})"
                break
            if message[0] == "start":
                current, described = message[1], message[2]
            elif message[0] == "done":
                records.append({"index": message[1], "sample": described, **message[2]})
                current = None
            else:
                ended = True
                break
        worker.join()
        receive.close()
        if ended:
            return records
        if current is None:  # died between samples (while making the sample list): nothing more to run
            records.append({"index": start, "sample": "", "status": "failed", "message": lost, "seconds": None})
            return records
        records.append({"index": current, "sample": described, "status": "failed", "message": lost,
                        "seconds": None})
        start = current + 1


def summarise(key: str, records: list[dict]) -> dict:
    counts = Counter(r["status"] for r in records)
    expressible = len(records) - counts["skipped"]
    share = counts["matched"] / expressible if expressible else None
    messages: dict[str, Counter] = {status: Counter() for status in ("failed", "refused", "skipped")}
    for r in records:
        if r["status"] in messages:
            messages[r["status"]][r["message"]] += 1
    return {"op": key, "family": harness.COVERED[key], "samples": len(records),
            **{status: counts[status] for status in STATUSES}, "matched_share": share,
            "passes": counts["failed"] == 0 and share is not None and share >= BAR,
            "messages": {status: c.most_common() for status, c in messages.items()}, "records": records}


def print_row(row: dict, width: int) -> None:
    share = "-" if row["matched_share"] is None else f"{row['matched_share']:.0%}"
    mark = "" if row["passes"] else "  <-"
    print(f"{row['op']:<{width}} {row['family']:<11} {row['samples']:7d} {row['matched']:7d} {row['refused']:7d} "
          f"{row['failed']:6d} {row['skipped']:7d} {share:>8}{mark}", flush=True)
    for status in ("failed", "refused"):
        for message, times in row["messages"][status][:MESSAGES_SHOWN]:
            print(f"    {status} {times}x: {message}", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ops", help="comma-separated op_db names (default: every op wsc covers)")
    parser.add_argument("--limit", type=int, help="at most this many samples per op (the first ones)")
    parser.add_argument("--json", type=Path, help="write every sample's outcome to this file")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds one sample may take (default 300)")
    args = parser.parse_args()
    keys = args.ops.split(",") if args.ops else list(harness.COVERED)
    unknown = [k for k in keys if k not in harness.COVERED]
    if unknown:
        parser.error(f"not covered: {', '.join(unknown)}; the covered ops are {', '.join(harness.COVERED)}")
    harness.covered_ops(keys)  # op_db loaded once here, before the processes fork from this one
    width = max(len(k) for k in keys)
    print(f"OpInfo samples (float32, CPU) compiled for {harness.TARGET} with {harness.COMPILE_OPTIONS}")
    print(f"{'op':<{width}} {'family':<11} {'samples':>7} {'matched':>7} {'refused':>7} {'failed':>6} "
          f"{'skipped':>7} {'matched%':>8}", flush=True)
    begin = time.perf_counter()
    rows = []
    for key in keys:
        row = summarise(key, run_covered_op(key, args.limit, args.timeout))
        print_row(row, width)
        rows.append(row)
    totals = {status: sum(r[status] for r in rows) for status in ("samples", *STATUSES)}
    expressible = totals["samples"] - totals["skipped"]
    short_of = [r["op"] for r in rows if not r["passes"]]
    print(f"summary: {len(rows)} ops, {totals['samples']} samples: {totals['matched']} matched, "
          f"{totals['refused']} refused, {totals['failed']} failed, {totals['skipped']} skipped "
          f"({totals['matched'] / expressible:.1%} of the expressible matched); "
          f"{len(rows) - len(short_of)} ops pass, {len(short_of)} have a failure or match under {BAR:.0%}"
          f"{': ' + ', '.join(short_of) if short_of else ''} ({time.perf_counter() - begin:.0f} s)"
          if expressible else "summary: no expressible sample")
    if args.json:
        args.json.write_text(json.dumps({"target": harness.TARGET, "options": harness.COMPILE_OPTIONS,
                                         "totals": totals, "ops": rows}, indent=1))
    return 1 if short_of or not expressible else 0


if __name__ == "__main__":
    sys.exit(main())
