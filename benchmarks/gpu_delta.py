"""The linear-time parts of ``benchmarks/gpu_run.py``: ckd's chunked delta rule (depth inf, linear
kernel) alone (``delta``) and against flash-linear-attention's Triton kernels (``fla``, ``fla_ieee``).

The mapping (``ckd.linear_time.deltanet``, tested in tests/test_deltanet.py): fla's delta rule with
q_i = x_{i+1}, k_i = x_i, v_i = x_{i+1}, beta_i = 1 / |x_i|^2, scale 1, no initial state, no q/k
normalisation, layout [B, T-1, H = 1, d], is ckd.predict(x, "linear", depth="inf") rows 1..T-1.
fla 0.6's ``chunk_delta_rule`` refuses float32 (an assert: "use bfloat16"); we run it in bfloat16
and float16, its float32 forward ``chunk_delta_rule_fwd`` (internal, below the assert; Triton's
float32 products are TF32 on NVIDIA unless TRITON_F32_DEFAULT=ieee: the ``fla_ieee`` part) and
``fused_recurrent_delta_rule`` (public, float32, one sequential kernel). Every output is compared
with ours in float64 (the truth) and in float32. Inputs are converted before timing; ours
``predict`` is the whole public call (checks and the pairs included), ``chunked`` its core
(``ckd.linear_time.delta_rule_chunked`` on prepared pairs)."""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from gpu_parts import Part, sizes
from perf_common import data, interleaved, rel_diff, sync

import ckd
from ckd.linear_time import delta_rule_chunked, deltanet_inputs, deltanet_rows, fla_reference, pairs

D = 8  # token size of the shapes


def lengths(part: Part) -> list[int]:
    return sizes(part, [2**16, 2**20], [2**16], [2**12])


def ours(x64: torch.Tensor) -> dict:
    """Our candidates on x (float64 in): the public call in float64 / float32, the float32 core per chunk."""
    x32 = x64.float()
    k, _, q, y = pairs(x32)
    fns = {"ckd predict float64": lambda: ckd.predict(x64, "linear", depth="inf"),
           "ckd predict float32": lambda: ckd.predict(x32, "linear", depth="inf", dtype=torch.float32)}
    for chunk in (32, 64, 128):
        fns[f"ckd chunked float32 C={chunk}"] = lambda c=chunk: rows(delta_rule_chunked(k, k, q, y, chunk=c)[0])
    return fns


def rows(p: torch.Tensor) -> torch.Tensor:
    """Predictions of the pairs (B, T-1, d) -> rows (B, T, d), row 0 = 0."""
    return deltanet_rows(p[:, :, None])


def once(fn, device: str) -> tuple[torch.Tensor, float]:
    sync(device)
    start = time.perf_counter()
    out = fn()
    sync(device)
    return out, time.perf_counter() - start


def compare(fns: dict, outputs: dict, part: Part, T: int) -> tuple[int, dict]:
    """Interleaved medians (every candidate has run once already: ``outputs``) and the rel diffs of
    every output against ours in float64 and float32. Returns (repeats, {name: ...})."""
    reps = 3 if part.quick or T > 2**16 or not part.cuda else 10
    res = interleaved(fns, reps, part.device, warmup=0)
    base = res["ckd predict float32"]["median"]
    ref, ref32 = outputs["ckd predict float64"], outputs["ckd predict float32"]
    return reps, {name: {"median_s": res[name]["median"], "min_s": res[name]["min"],
                         "vs_ckd_f32": res[name]["median"] / base, "rel_diff_f64": rel_diff(outputs[name], ref),
                         "rel_diff_f32": rel_diff(outputs[name], ref32)} for name in fns}


def each_length(part: Part, result: dict, need: float):
    """For each T while ``need`` seconds are left: (T, x, our candidates, their first outputs)."""
    for T in lengths(part):
        if part.left() < need:
            result["stopped"] = f"T = {T} and later: no time left"
            return
        x = data(1, T, D, part.device)
        fns = ours(x)
        yield T, x, fns, {name: once(fn, part.device)[0] for name, fn in fns.items()}


def part_delta(part: Part) -> None:
    """Ours alone (no Triton), and fla's plain references where fla is installed (the mapping's check)."""
    fla = fla_reference()
    result = {"B": 1, "d": D, "sizes": []}
    for T, x, fns, outputs in each_length(part, result, 15):
        reps, candidates = compare(fns, outputs, part, T)
        row = {"T": T, "reps": reps, "candidates": candidates}
        row["references"] = fla_references(fla, x) if fla is not None else "fla not installed"
        result["sizes"].append(row)
        part.save(result)
    part.save(result)


def chunkwise(fla, a: dict, chunk: int) -> torch.Tensor:
    """fla's plain chunked reference called like its kernels: sequence-first args (``deltanet_inputs``)
    in, o (B, n, 1, K) out. It takes head-first tensors, n a multiple of the chunk (zero pairs appended:
    they come after every real pair) and a fixed scale K^-1/2 (q times K^1/2)."""
    n, K = a["k"].shape[1], a["k"].shape[-1]
    pad = -n % chunk
    q, k, v = (F.pad(a[name].transpose(1, 2), (0, 0, 0, pad)) for name in "qkv")
    beta = F.pad(a["beta"].transpose(1, 2), (0, pad))
    o, _ = fla.delta_rule_chunkwise(q * (K**0.5 * a["scale"]), k, v, beta, chunk_size=chunk)
    return o[:, :, :n].transpose(1, 2)


def recurrence(fla, a: dict) -> torch.Tensor:
    """fla's plain sequential reference (float32 inside), called as ``chunkwise``."""
    K = a["k"].shape[-1]
    q, k, v, beta = (a[name].transpose(1, 2) for name in ("q", "k", "v", "beta"))
    return fla.delta_rule_recurrence(q * (K**0.5 * a["scale"]), k, v, beta)[0].transpose(1, 2)


def fla_references(fla, x: torch.Tensor) -> dict:
    """fla's plain references on our inputs: chunkwise in float64 (up to T = 2^16), recurrence (a Python
    loop over T: up to T = 2^13). One call each: rel diff against ckd float64, seconds."""
    truth = ckd.predict(x, "linear", depth="inf")
    args = deltanet_inputs(x)
    out = {}
    if x.shape[1] <= 2**16 + 1:
        o, sec = once(lambda: chunkwise(fla, args, 64), x.device.type)
        out["delta_rule_chunkwise float64 C=64"] = {"seconds": sec, "rel_diff_f64": rel_diff(deltanet_rows(o), truth)}
    if x.shape[1] <= 2**13:
        o, sec = once(lambda: recurrence(fla, args), x.device.type)
        out["delta_rule_recurrence (float32 inside)"] = {"seconds": sec,
                                                         "rel_diff_f64": rel_diff(deltanet_rows(o), truth)}
    return out


def stand_ins(fla, ieee: bool) -> dict:
    """The CPU trial's stand-ins for fla's kernels, in the same call form, built on fla's plain chunked
    reference: their numbers are not fla's kernels'. One refuses K < 16, as Triton's products may, so
    that the trial also runs the part's zero-channel fallback."""
    def picky(a):
        if a["k"].shape[-1] < 16:
            raise ValueError(f"stand-in refuses K = {a['k'].shape[-1]} < 16")
        return chunkwise(fla, a, 64)

    fns = {"stand-in chunkwise float32 C=64 (K >= 16)": (torch.float32, picky)}
    if not ieee:
        fns["stand-in chunkwise float64 C=32"] = (torch.float64, lambda a: chunkwise(fla, a, 32))
    return fns


GOAL = ("fla chunk_delta_rule bfloat16 C=64", "fla chunk_delta_rule_fwd float32 C=64",
        "stand-in chunkwise float32 C=64 (K >= 16)")


def fla_kernels(ieee: bool) -> dict:
    """name -> fn(args) -> o, fla's Triton candidates (``ieee``: the float32 forward only)."""
    from fla.ops.delta_rule import chunk_delta_rule, fused_recurrent_delta_rule
    from fla.ops.delta_rule.chunk import chunk_delta_rule_fwd

    def fwd(chunk):
        return lambda a: chunk_delta_rule_fwd(a["q"], a["k"], a["v"], a["beta"], 1.0, None, False, chunk_size=chunk)[0]

    if ieee:
        return {"fla chunk_delta_rule_fwd float32 C=64": (torch.float32, fwd(64)),
                "fla chunk_delta_rule_fwd float32 C=32": (torch.float32, fwd(32))}
    return {  # in order of importance: a part short of time skips the last ones
        "fla chunk_delta_rule bfloat16 C=64": (torch.bfloat16, lambda a: chunk_delta_rule(**a, chunk_size=64)[0]),
        "fla chunk_delta_rule_fwd float32 C=64": (torch.float32, fwd(64)),
        "fla fused_recurrent float32": (torch.float32, lambda a: fused_recurrent_delta_rule(**a)[0]),
        "fla chunk_delta_rule bfloat16 C=32": (torch.bfloat16, lambda a: chunk_delta_rule(**a, chunk_size=32)[0]),
        "fla chunk_delta_rule_fwd float32 C=32": (torch.float32, fwd(32)),
        "fla chunk_delta_rule float16 C=64": (torch.float16, lambda a: chunk_delta_rule(**a, chunk_size=64)[0]),
    }


def part_fla(part: Part, ieee: bool = False) -> None:
    """ckd against fla's kernels on CUDA; on CPU (the trial) against ``stand_ins``, the kernels skipped."""
    result = {"B": 1, "d": D, "ieee": ieee, "sizes": []}
    if part.cuda:
        try:
            kernels = fla_kernels(ieee)
        except Exception as exc:  # not installed, or Triton / fla incompatible with this torch
            part.skip(f"flash-linear-attention not importable: {type(exc).__name__}: {exc}"[:300])
            return
    else:
        fla = fla_reference()
        if fla is None:
            part.skip("fla's kernels are Triton GPU kernels (need --device cuda); fla is not installed for the "
                      "CPU stand-ins either")
            return
        kernels = stand_ins(fla, ieee)
        part.record["reason"] = "fla's Triton kernels skipped (need CUDA); the part ran with CPU stand-ins"
        result["trial"] = ("CPU trial: fla's Triton kernels need CUDA and were skipped; the part's code ran "
                           "with stand-ins built on fla's plain chunked reference (same call form), so the "
                           "stand-in rows are not fla's kernels' numbers")
    for T, x, fns, outputs in each_length(part, result, 30):
        row = {"T": T, "first_call_s": {}, "first_rel_diff_f64": {}, "notes": {}}
        for name, (dtype, kernel) in kernels.items():
            if part.left() < (60 if part.cuda else 20):  # a first call compiles and autotunes; keep time to compare
                row["notes"][name] = "not run: no time left"
                continue
            errors = []
            for channels in (None, 16):  # Triton's products may need 16 channels: zero channels change nothing
                args = {k: v.to(dtype) if torch.is_tensor(v) else v
                        for k, v in deltanet_inputs(x, 0.0, channels).items()}
                try:
                    o, sec = once(lambda a=args, f=kernel: f(a), part.device)
                except Exception as exc:
                    errors.append(f"{channels or D} channels: {type(exc).__name__}: {str(exc)[:150]}")
                    row["notes"][name] = "; ".join(errors)
                    continue
                if channels:
                    row["notes"][name] = f"{errors[0]}; ran with {channels} channels (zero channels appended)"
                fns[name] = lambda a=args, f=kernel: deltanet_rows(f(a), D)
                outputs[name] = deltanet_rows(o, D)
                row["first_call_s"][name] = sec  # compilation and autotuning included
                row["first_rel_diff_f64"][name] = rel_diff(outputs[name], outputs["ckd predict float64"])
                break
            part.save({**result, "sizes": result["sizes"] + [row]})
        row["reps"], row["candidates"] = compare(fns, outputs, part, T)
        result["sizes"].append(row)
        part.save(result)
    part.save(result)


def part_fla_ieee(part: Part) -> None:
    part_fla(part, ieee=True)


def table(r: dict) -> str:
    if isinstance(r.get("skipped"), str):
        return f"Skipped: {r['skipped']}"
    lines = [f"**{r['trial']}**", ""] if "trial" in r else []
    lines += [f"Depth inf, linear kernel, B = {r['B']}, d = {r['d']}, wall-clock medians (synchronised). "
             "\"vs ckd f32\": time / `ckd.predict` float32's; rel diff: max |a - b| / max |b| against ckd's float64 "
             "and float32 outputs."]
    for row in r["sizes"]:
        if "candidates" not in row:
            continue
        lines += ["", f"T = {row['T']} (median of {row['reps']}):", "",
                  "| candidate | ms | vs ckd f32 | rel diff vs ckd f64 | rel diff vs ckd f32 | first call s |",
                  "|---|---|---|---|---|---|"]
        for name, c in row["candidates"].items():
            first = row.get("first_call_s", {}).get(name)
            lines.append(f"| {name} | {1e3 * c['median_s']:.2f} | {c['vs_ckd_f32']:.2f} | {c['rel_diff_f64']:.1e} | "
                         f"{c['rel_diff_f32']:.1e} | {'' if first is None else f'{first:.1f}'} |")
        lines += [f"- {name}: {note}" for name, note in row.get("notes", {}).items()]
        refs = row.get("references")
        if isinstance(refs, dict):
            lines += [f"- fla reference {name}: rel diff vs ckd f64 {v['rel_diff_f64']:.1e} ({v['seconds']:.2f} s)"
                      for name, v in refs.items()]
        elif refs:
            lines.append(f"- fla references: {refs}")
        lines += goal(row)
    return "\n".join(lines + ([f"\n{r['stopped']}"] if "stopped" in r else []))


def goal(row: dict) -> list[str]:
    """The issue's goal at this T: ckd within 3x of chunk_delta_rule, outputs equal to 1e-4 relative."""
    c = row["candidates"]
    fla = [n for n in GOAL if n in c]
    if not fla:
        return []
    ours_best = min((n for n in c if n.startswith("ckd") and "float32" in n), key=lambda n: c[n]["median_s"])
    out = []
    for name in fla:
        ratio = c["ckd predict float32"]["median_s"] / c[name]["median_s"]
        best = c[ours_best]["median_s"] / c[name]["median_s"]
        out.append(f"- goal: ckd predict float32 / {name} = {ratio:.2f} (best ckd float32, {ours_best}: {best:.2f}; "
                   f"goal <= 3); rel diff vs ckd float64 {c[name]['rel_diff_f64']:.1e} (goal <= 1e-4)")
    return out


PARTS = {"delta": (part_delta, table), "fla": (part_fla, table), "fla_ieee": (part_fla_ieee, table)}
