"""The GPU run of issue 17 (item 6) in one command: the suite's CUDA cases, the dense descent in
float32 / float64, the constructed Transformer's attention against scaled_dot_product_attention, and
the linear-time path against flash-linear-attention's chunk_delta_rule.

    python benchmarks/gpu_run.py --device cuda --out DIR               # on a GPU machine (budget 540 s)
    python benchmarks/gpu_run.py --device cpu --quick --out /tmp/gpu   # the CPU trial (Triton skipped)

Parts, in the order they run (each in a fresh process, ``--part NAME``, with its own timeout; the
whole run stops starting parts when ``--budget`` seconds are spent):

  suite      pytest -k cuda on the test files that mention cuda: passed / failed / skipped counts
  delta      ckd's linear-time depth inf (the chunked delta rule), B = 1, T = 2^16 (and 2^20 on
             CUDA), d = 8, float32 / float64, chunks 32 / 64 / 128; fla's plain references (no Triton)
  fla        the same against fla's Triton kernels (chunk_delta_rule, fused_recurrent_delta_rule),
             interleaved in one process: time ratio and relative difference (needs CUDA and fla)
  dense      ckd.predict(method="dense"), every kernel, depth 16, B = 16, d = 8, T = 512 (and 4096
             on CUDA), float32 vs float64
  attention  ckd.transformer.attend (the constructed Transformer's attention, every score function)
             against F.scaled_dot_product_attention on the same (B, H, T, E), and the transformer
             backend of ckd.predict against the descent
  fla_ieee   the fla part's float32 kernel again with TRITON_F32_DEFAULT=ieee (no TF32 products)

A part that fails, hangs or runs out of time is recorded as such (with what it had measured) and
the others go on. DIR gets results.json (everything), results.md (the tables) and log.txt (every
part's output); nothing is downloaded. fla comes from the environment (``pip install fla-core``, or
wheels installed with ``pip --no-index --target``: docs/performance.md, "The GPU run").
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PARTS = ("suite", "delta", "fla", "dense", "attention", "fla_ieee")
TIMEOUT = {"suite": 150, "delta": 90, "fla": 300, "dense": 60, "attention": 60, "fla_ieee": 90}  # seconds
ENV = {"fla_ieee": {"TRITON_F32_DEFAULT": "ieee"}}


def run_part(name: str, args, deadline: float, log) -> dict:
    """Run one part in a fresh process (its own session, killed whole on timeout); returns its record:
    status ok / error / timeout / skipped, wall_s, and the part's result (partial after a timeout)."""
    left = deadline - time.monotonic()
    if left < 15:
        return {"status": "skipped", "reason": f"no time left in the --budget ({left:.0f} s)"}
    limit = min(TIMEOUT[name] * (0.5 if args.quick else 1.0) * args.timeout_scale, left)
    with tempfile.TemporaryDirectory(prefix="ckd-gpu-") as tmp:
        out = Path(tmp) / "part.json"
        cmd = [sys.executable, str(Path(__file__).resolve()), "--part", name, "--device", args.device,
               "--json", str(out), "--seconds", f"{limit - 5:.0f}"] + (["--quick"] if args.quick else [])
        env = {**os.environ, **ENV.get(name, {}), "PYTHONUNBUFFERED": "1",
               "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")]))}
        log.write(f"\n===== part {name}: {' '.join(cmd)} (timeout {limit:.0f} s)\n")
        log.flush()
        start = time.monotonic()
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT, start_new_session=True)
        try:
            rc = proc.wait(timeout=limit)
            status = "ok" if rc == 0 else "error"
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the part and what it started (pytest)
            proc.wait()
            rc, status = None, "timeout"
        record = {"status": status, "returncode": rc, "wall_s": round(time.monotonic() - start, 2),
                  "timeout_s": round(limit)}
        if out.exists():
            record.update(json.loads(out.read_text()))  # may say skipped, or why it failed
        elif status == "ok":
            record["status"] = "error"
    if status == "timeout":
        record["reason"] = f"killed at its {limit:.0f} s timeout; what it had measured is kept"
    if record["status"] == "error":
        record["error"] = record.get("error") or "the part's process failed: see log.txt"
    return record


def markdown(results: dict) -> str:
    lines = [f"# GPU run (issue 17, item 6): device {results['device']}", "",
             f"Command: `{results['command']}`  ", f"Started {results['started']}; total wall time "
             f"{results.get('total_wall_s', float('nan')):.1f} s.", ""]
    env = next((r["env"] for r in results["parts"].values() if "env" in r), None)
    if env:
        lines += ["Environment: " + ", ".join(f"{k} {v}" for k, v in env.items()), ""]
    lines += ["| part | status | wall s |", "|---|---|---|"]
    for name, rec in results["parts"].items():
        note = rec.get("reason") or rec.get("error") or ""
        lines.append(f"| {name} | {rec['status']}{' (' + note + ')' if note else ''} | {rec.get('wall_s', '')} |")
    for name, rec in results["parts"].items():
        if rec.get("markdown"):
            lines += ["", f"## {name}" + (" (partial: the part timed out)" if rec["status"] == "timeout" else ""),
                      "", rec["markdown"]]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda (the GPU run) or cpu (the trial)")
    parser.add_argument("--out", type=Path, default=Path("gpu-run"))
    parser.add_argument("--quick", action="store_true", help="small sizes, few repeats")
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    parser.add_argument("--budget", type=float, default=540.0, help="seconds for the whole run (default 540)")
    parser.add_argument("--timeout-scale", type=float, default=1.0, help="multiply every part's timeout")
    parser.add_argument("--part", choices=PARTS, help=argparse.SUPPRESS)
    parser.add_argument("--json", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--seconds", type=float, default=60.0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.part:
        import gpu_delta  # imports torch and ckd: only in a part's own process
        import gpu_parts
        fn, table = {**gpu_parts.PARTS, **gpu_delta.PARTS}[args.part]
        return gpu_parts.run_in_process(args.part, fn, table, args.device, args.quick, args.json, args.seconds)
    start = time.monotonic()
    deadline = start + args.budget
    args.out.mkdir(parents=True, exist_ok=True)
    results = {"command": "python " + " ".join([os.path.relpath(__file__, ROOT), *(argv or sys.argv[1:])]),
               "device": args.device, "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "parts": {}}
    with open(args.out / "log.txt", "w") as log:
        for name in args.parts:
            rec = run_part(name, args, deadline, log)
            results["parts"][name] = rec
            results["total_wall_s"] = time.monotonic() - start
            print(f"[{name}] {rec['status']} {rec.get('wall_s', 0):.1f} s"
                  + (f": {rec.get('reason') or rec.get('error')}" if rec["status"] != "ok" else ""), flush=True)
            (args.out / "results.json").write_text(json.dumps(results, indent=1))  # after every part
            (args.out / "results.md").write_text(markdown(results))
    print(markdown(results))
    print(f"total wall time {results['total_wall_s']:.1f} s ({args.out / 'results.md'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
