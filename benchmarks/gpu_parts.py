"""The parts of ``benchmarks/gpu_run.py`` that need no Triton: the suite's CUDA cases, the dense
descent, the constructed Transformer's attention; and the process wrapper every part runs in.

Times are wall-clock medians of interleaved repeats (``perf_common.interleaved``, synchronised on
CUDA). "rel diff" is max |a - b| / max |b| over the whole output (``perf_common.rel_diff``)."""

from __future__ import annotations

import importlib.metadata
import json
import math
import platform
import re
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

import torch
import torch.nn.functional as F
from perf_common import CLOCK, ROOT, data, interleaved, rel_diff

import ckd
from ckd.attention import ATTENTION
from ckd.kernels import KERNELS
from ckd.transformer import attend


class Part:
    """What a part gets: device, quick, seconds left, and ``save`` (writes what it has measured so far,
    so that a part stopped by its timeout still reports it)."""

    def __init__(self, name: str, device: str, quick: bool, path: Path, seconds: float, table):
        self.name, self.device, self.quick, self.path, self.table = name, device, quick, path, table
        self.deadline = time.monotonic() + seconds
        self.record: dict = {"env": environment(device)}
        self.cuda = device.startswith("cuda")

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def save(self, result: dict) -> None:
        self.record["result"] = result
        try:  # a table that cannot be drawn must not lose the numbers
            self.record["markdown"] = self.table(result) if result else ""
        except Exception as exc:
            self.record["markdown"] = f"(no table: {type(exc).__name__}: {exc})"
        self.path.write_text(json.dumps(self.record, indent=1))

    def skip(self, reason: str) -> None:
        self.record.update(status="skipped", reason=reason)
        self.save({"skipped": reason})


def environment(device: str) -> dict:
    env = {"python": platform.python_version(), "torch": torch.__version__, "device": device}
    if device.startswith("cuda") and torch.cuda.is_available():
        env.update(gpu=torch.cuda.get_device_name(), cuda=torch.version.cuda)
    for dist in ("triton", "fla-core"):
        try:
            env[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            env[dist] = None
    return env


def run_in_process(name: str, fn, table, device: str, quick: bool, path: Path, seconds: float) -> int:
    """One part, ``fn(part)`` with its markdown ``table(result)``, in this process (``gpu_run.py --part
    NAME``): writes its record to ``path``; 1 when it raised (recorded with what it had saved)."""
    CLOCK["clock"] = "wall"
    warnings.simplefilter("ignore", ckd.StabilityWarning)  # random long prompts: growth warnings expected
    part = Part(name, device, quick, path, seconds, table)
    if device.startswith("cuda") and not torch.cuda.is_available():
        part.record.update(status="error", error="--device cuda but torch sees no CUDA device")
        part.save({})
        return 1
    try:
        fn(part)
    except Exception as exc:  # recorded, and the runner goes on with the next part
        traceback.print_exc()
        part.record["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300]
        part.save(part.record.get("result", {}))
        return 1
    return 0


# ---- suite: pytest -k cuda -------------------------------------------------------------------------------

def part_suite(part: Part) -> None:
    files = sorted(p for p in (ROOT / "tests").glob("test_*.py") if "cuda" in p.read_text())
    with tempfile.TemporaryDirectory() as tmp:
        xml = Path(tmp) / "junit.xml"
        cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", "cuda", "-rfEs",
               f"--junitxml={xml}", *(str(f.relative_to(ROOT)) for f in files)]
        print(" ".join(cmd), flush=True)
        start = time.monotonic()
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=max(part.left() - 3, 1))
        print(proc.stdout[-20000:], proc.stderr[-5000:], sep="\n", flush=True)
        result = {"command": "python -m pytest -q -k cuda " + " ".join(str(f.relative_to(ROOT)) for f in files),
                  "returncode": proc.returncode, "seconds": round(time.monotonic() - start, 1)}
        result.update(junit_counts(xml) if xml.exists() else {"error": "pytest wrote no report"})
        result["summary"] = (proc.stdout.strip().splitlines() or [""])[-1]
    if result.get("failed") or result.get("errors"):
        part.record["error"] = f"{result['failed']} failed, {result['errors']} errors"
    part.save(result)


def junit_counts(xml: Path) -> dict:
    """Counts of a pytest --junitxml report, the failed cases (with the first line of their message)
    and the skip reasons."""
    cases = ET.parse(xml).getroot().iter("testcase")
    out = Counter()
    failed, skips = [], Counter()
    for case in cases:
        out["tests"] += 1
        name = f"{case.get('classname', '')}::{case.get('name', '')}"
        bad = case.find("failure") if case.find("failure") is not None else case.find("error")
        skipped = case.find("skipped")
        if bad is not None:
            out["failed" if bad.tag == "failure" else "errors"] += 1
            failed.append(f"{name}: {(bad.get('message') or '').splitlines()[0][:200] if bad.get('message') else ''}")
        elif skipped is not None:
            out["skipped"] += 1
            skips[re.sub(r"^Skipped: ", "", skipped.get("message") or "")[:120]] += 1
        else:
            out["passed"] += 1
    return {"tests": out["tests"], "passed": out["passed"], "failed": out["failed"], "errors": out["errors"],
            "skipped": out["skipped"], "failed_cases": failed, "skip_reasons": dict(skips)}


def table_suite(r: dict) -> str:
    if "skipped" in r and isinstance(r["skipped"], str):
        return f"Skipped: {r['skipped']}"
    if "tests" not in r:
        return f"No report: {r.get('error', '')}"
    lines = [f"`{r['command']}` ({r['seconds']} s, exit {r['returncode']}): **{r['passed']} passed, {r['failed']} "
             f"failed, {r['errors']} errors, {r['skipped']} skipped** of {r['tests']}."]
    lines += [f"- failed: {c}" for c in r["failed_cases"]]
    lines += [f"- skipped ({n}): {why}" for why, n in r["skip_reasons"].items()]
    return "\n".join(lines)


# ---- dense: ckd.predict(method="dense"), float32 vs float64 ---------------------------------------------

def sizes(part: Part, cuda: list[int], cpu: list[int], quick: list[int]) -> list[int]:
    return quick if part.quick else (cuda if part.cuda else cpu)


def part_dense(part: Part) -> None:
    B, d, N = (4 if part.quick else 16), 8, 16
    reps = 3 if part.quick else 10
    result = {"B": B, "d": d, "depth": N, "reps": reps, "rows": []}
    for T in sizes(part, [512, 4096], [512], [128]):
        if part.left() < 10:
            result["stopped"] = f"T = {T} and later: no time left"
            break
        x = data(B, T, d, part.device)
        for kernel in KERNELS:
            res = interleaved({
                "float64": lambda k=kernel: ckd.predict(x, k, depth=N, method="dense"),
                "float32": lambda k=kernel: ckd.predict(x, k, depth=N, dtype=torch.float32, method="dense"),
            }, reps, part.device)
            diff = rel_diff(ckd.predict(x, kernel, depth=N, dtype=torch.float32, method="dense"),
                            ckd.predict(x, kernel, depth=N, method="dense"))
            result["rows"].append({"T": T, "kernel": kernel, "float64_s": res["float64"]["median"],
                                   "float32_s": res["float32"]["median"],
                                   "ratio": res["float64"]["median"] / res["float32"]["median"], "rel_diff_f32": diff})
            part.save(result)
    part.save(result)


def table_dense(r: dict) -> str:
    lines = [f"`ckd.predict(x, kernel, depth={r['depth']}, method='dense')`, B = {r['B']}, d = {r['d']}, median of "
             f"{r['reps']} (wall, synchronised). rel diff: float32's prediction against float64's.", "",
             "| T | kernel | float64 ms | float32 ms | float64 / float32 | rel diff float32 |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {w['T']} | {w['kernel']} | {1e3 * w['float64_s']:.2f} | {1e3 * w['float32_s']:.2f} | "
              f"{w['ratio']:.2f} | {w['rel_diff_f32']:.1e} |" for w in r["rows"]]
    return "\n".join(lines + ([f"\n{r['stopped']}"] if "stopped" in r else []))


# ---- attention: ckd.transformer.attend vs F.scaled_dot_product_attention ---------------------------------

def dense_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, kind: str) -> torch.Tensor:
    """The T x T reference of ``attend`` (ckd.attention's score functions, causal, scale 1)."""
    T = q.shape[-2]
    keep = torch.ones(T, T, dtype=torch.bool, device=q.device).tril()
    s = q @ k.transpose(-1, -2)
    if kind == "softmax":
        w = s.masked_fill(~keep, -math.inf).softmax(-1)
    elif kind == "gaussian":
        w = (-0.5 * (q.square().sum(-1, keepdim=True) + k.square().sum(-1)[..., None, :] - 2 * s)).exp()
    else:
        w = s.exp() if kind == "exp" else s
    return w.masked_fill(~keep, 0.0) @ v


def part_attention(part: Part) -> None:
    B, H, d = (4 if part.quick else 16), 2, 8  # the construction's two heads, head and value size d
    reps = 3 if part.quick else 10
    result = {"B": B, "H": H, "E": d, "reps": reps, "rows": [], "backends": []}
    gen = torch.Generator().manual_seed(0)
    for T in sizes(part, [512, 4096], [512], [128]):
        if part.left() < 10:
            result["stopped"] = f"T = {T} and later: no time left"
            break
        q64, k64 = (torch.randn(B, H, T, d, generator=gen, dtype=torch.float64) / math.sqrt(d) for _ in range(2))
        v64 = torch.randn(B, H, T, d, generator=gen, dtype=torch.float64)
        fits = B * H * T * T * 8 * 4 <= 16 * 2**30  # the T x T reference and its temporaries
        args64 = [t.to(part.device) for t in (q64, k64, v64)]
        refs = {kind: dense_attention(*args64, kind) for kind in ATTENTION} if fits else {}
        for dtype in (torch.float64, torch.float32):
            q, k, v = (t.to(dtype) for t in args64)
            for kind in ATTENTION:
                res = interleaved({"ours": lambda kd=kind: attend(q, k, v, kd),
                                   "sdpa": lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=1.0)},
                                  reps, part.device)
                ours = attend(q, k, v, kind)
                row = {"T": T, "dtype": str(dtype).removeprefix("torch."), "kind": kind,
                       "ours_s": res["ours"]["median"], "sdpa_s": res["sdpa"]["median"],
                       "ratio": res["ours"]["median"] / res["sdpa"]["median"],
                       "rel_diff_reference": rel_diff(ours, refs[kind]) if refs else None}
                if kind == "softmax":
                    sdpa = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=1.0)
                    row["rel_diff_sdpa"] = rel_diff(ours, sdpa)
                result["rows"].append(row)
            part.save(result)
        del refs
    backends(part, result, reps)
    part.save(result)


def backends(part: Part, result: dict, reps: int) -> None:
    """ckd.predict's transformer backend (the constructed model, built per call) against the descent."""
    B, T, d, N = (4, 128, 8, 16) if part.quick else (16, 512, 8, 16)
    x = data(B, T, d, part.device)
    for dtype in (torch.float64, torch.float32):
        for kernel in KERNELS:
            if part.left() < 10:
                result["stopped"] = "backends: no time left"
                return
            res = interleaved({
                "descent": lambda k=kernel: ckd.predict(x, k, depth=N, dtype=dtype),
                "transformer": lambda k=kernel: ckd.predict(x, k, depth=N, dtype=dtype, backend="transformer"),
            }, max(3, reps // 2), part.device)
            diff = rel_diff(ckd.predict(x, kernel, depth=N, dtype=dtype, backend="transformer"),
                            ckd.predict(x, kernel, depth=N, dtype=dtype))
            result["backends"].append({"B": B, "T": T, "depth": N, "dtype": str(dtype).removeprefix("torch."),
                                       "kernel": kernel, "descent_s": res["descent"]["median"],
                                       "transformer_s": res["transformer"]["median"],
                                       "ratio": res["transformer"]["median"] / res["descent"]["median"],
                                       "rel_diff": diff})
            part.save(result)


def table_attention(r: dict) -> str:
    lines = [f"`ckd.transformer.attend(q, k, v, kind)` (the constructed Transformer's attention: softmax is SDPA "
             f"itself, exp SDPA with a sink key, gaussian exp on extended q, k, linear chunked prefix sums) against "
             f"`F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=1)` on the same q, k, v (B = {r['B']}, "
             f"H = {r['H']}, E = Ev = {r['E']}), median of {r['reps']}. Only softmax computes the same function as "
             "SDPA (\"rel diff SDPA\"); every kind is compared with its T x T float64 reference (\"rel diff ref\": "
             "masked scores, exp / softmax / Gaussian weights, times v).", "",
             "| T | dtype | kind | attend ms | SDPA ms | attend / SDPA | rel diff ref | rel diff SDPA |",
             "|---|---|---|---|---|---|---|---|"]
    for w in r["rows"]:
        ref = "—" if w["rel_diff_reference"] is None else f"{w['rel_diff_reference']:.1e}"
        sd = f"{w['rel_diff_sdpa']:.1e}" if "rel_diff_sdpa" in w else "(not the same function)"
        lines.append(f"| {w['T']} | {w['dtype']} | {w['kind']} | {1e3 * w['ours_s']:.3f} | {1e3 * w['sdpa_s']:.3f} | "
                     f"{w['ratio']:.2f} | {ref} | {sd} |")
    if r["backends"]:
        b = r["backends"][0]
        lines += ["", f"`ckd.predict(x, kernel, depth={b['depth']}, backend=...)`, B = {b['B']}, T = {b['T']}, d = 8; "
                  "rel diff: the transformer's prediction against the descent's.", "",
                  "| dtype | kernel | descent ms | transformer ms | transformer / descent | rel diff |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {w['dtype']} | {w['kernel']} | {1e3 * w['descent_s']:.2f} | {1e3 * w['transformer_s']:.2f} | "
                  f"{w['ratio']:.2f} | {w['rel_diff']:.1e} |" for w in r["backends"]]
    return "\n".join(lines + ([f"\n{r['stopped']}"] if "stopped" in r else []))


PARTS = {"suite": (part_suite, table_suite), "dense": (part_dense, table_dense),
         "attention": (part_attention, table_attention)}
