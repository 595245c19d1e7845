"""The markdown tables of a benchmark run (``results.md``), from its ``results.json``."""

from __future__ import annotations

import math


def _ms(v: float) -> str:
    return f"{v * 1e3:.1f}"


def report(r: dict) -> str:
    """Markdown tables of the medians and ratios."""
    m = r["machine"]
    lines = [f"Command: `{r['command']}`", "",
             f"Machine: {m['device']}, {m['cpu_count']} CPUs, torch {m['torch']} ({m['torch_threads']} threads), "
             f"load average {m['loadavg_start'][0]:.1f} at start, {m.get('loadavg_end', [math.nan])[0]:.1f} at end.",
             f"Times are medians of {r['config']['reps']} interleaved repeats (fewer for the scaling sweeps), "
             f"clock: {r['config']['clock']} (see `benchmarks/perf.py`).", ""]
    if "floor" in r:
        f = r["floor"]
        lines += [f"### Descent vs its floor (B={f['B']}, T={f['T']}, d={f['d']}, N={f['depth']}, float64)", "",
                  "| kernel | build P,R (ms) | one bmm (ms) | floor (ms) | predict (ms) | ratio (medians) "
                  "| ratio (minima) |", "|---|---|---|---|---|---|---|"]
        for k, v in f["kernels"].items():
            lines.append(f"| {k} | {_ms(v['build']['median'])} | {_ms(v['bmm']['median'])} | "
                         f"{_ms(v['floor']['median'])} | {_ms(v['predict']['median'])} | "
                         f"{v['ratio_median']:.2f} | {v['ratio_min']:.2f} |")
        lines.append("")
    if "return_all" in r:
        a = r["return_all"]
        lines += [f"`return_all=True` vs the last layer only (exp, B={a['B']}, T={a['T']}, N=16): "
                  f"{_ms(a['return_all']['median'])} ms vs {_ms(a['last']['median'])} ms, "
                  f"ratio {a['ratio_median']:.2f}.", ""]
    if "length" in r:
        s = r["length"]
        lines += [f"### Time vs T (exp, B={s['B']}, N={s['depth']}; blocked = row blocks of T/8)", "",
                  "| T | whole (ms) | blocked (ms) | depth inf (ms) |", "|---|---|---|---|"]
        for i, T in enumerate(s["T"]):
            lines.append(f"| {T} | {_ms(s['whole'][i])} | {_ms(s['blocked'][i])} | {_ms(s['infinite'][i])} |")
        lines += ["", f"log-log slope for T >= 512: whole {s['slope_whole']:.2f}, blocked {s['slope_blocked']:.2f}, "
                  f"depth inf {s['slope_infinite']:.2f} (quadratic = 2).", ""]
    for key, label in (("depth", "N"), ("batch", "B")):
        if key in r:
            s = r[key]
            xs = s[key]
            lines += [f"### Time vs {label} (exp)", "", f"| {label} | " + " | ".join(map(str, xs)) + " |",
                      "|---|" + "---|" * len(xs), "| ms | " + " | ".join(_ms(t) for t in s["time"]) + " |", "",
                      f"log-log slope (from the third point): {s['slope']:.2f} (linear = 1).", ""]
    if "streaming" in r:
        s = r["streaming"]
        ts = next(iter(s["kernels"].values()))["t"]
        lines += [f"### Streaming: one push vs recomputing the prefix (depth inf, d={s['d']})", "",
                  "| kernel | " + " | ".join(f"t={t}: push (us) / recompute (ms) / ratio" for t in ts) + " |",
                  "|---|" + "---|" * len(ts)]
        for k, v in s["kernels"].items():
            cells = [f"{p * 1e6:.0f} / {_ms(q)} / {q / p:.0f}x" for p, q in zip(v["push"], v["recompute"])]
            lines.append(f"| {k} | " + " | ".join(cells) + " |")
        lines.append("")
    if "backends" in r:
        b = r["backends"]
        lines += [f"### Transformer vs descent backend (B={b['B']}, T={b['T']}, d={b['d']}, N={b['depth']}, "
                  "float64)", "", "| kernel | descent (ms) | transformer (ms) | ratio |", "|---|---|---|---|"]
        for k, v in b["kernels"].items():
            lines.append(f"| {k} | {_ms(v['descent']['median'])} | {_ms(v['transformer']['median'])} | "
                         f"{v['ratio_median']:.2f} |")
        if "one_layer" in b:
            lines += ["", "One layer (exp kernel, same sizes): " + ", ".join(
                f"{name} {_ms(t)} ms" for name, t in b["one_layer"].items()) + "."]
        lines.append("")
    if "dtypes" in r:
        dt = r["dtypes"]
        lines += [f"### float64 vs float32 (descent, B={dt['B']}, T={dt['T']}, N={dt['depth']})", "",
                  "| kernel | float64 (ms) | float32 (ms) | float64 / float32 |", "|---|---|---|---|"]
        for k, v in dt["kernels"].items():
            lines.append(f"| {k} | {_ms(v['float64']['median'])} | {_ms(v['float32']['median'])} | "
                         f"{v['ratio_median']:.2f} |")
        lines.append("")
    if "long" in r:
        lo = r["long"]
        lines += [f"### Long sequences (T={lo['T']}, d=8, B=1, float64, default memory budget)", "",
                  "| kernel | depth | wall (s) | CPU (s) | peak RSS (GiB) | median error, last 1000 tokens |",
                  "|---|---|---|---|---|---|"]
        for run in lo["runs"]:
            lines.append(f"| {run['kernel']} | {run['depth']} | {run['time_s']:.1f} | {run['cpu_s']:.1f} | "
                         f"{run['peak_rss_gib']:.2f} | {run['median_err_last_1000']:.2e} |")
        lines.append("")
    if "linear_time" in r:
        lt = r["linear_time"]
        L = lt["lengths"]
        lines += [f"### Linear kernel in linear time: time vs T (B={L['B']}, d={lt['d']}, float64)", "",
                  "| T | depth inf wall (s) | depth inf CPU (s) | depth 16 wall (s) | depth 16 CPU (s) |",
                  "|---|---|---|---|---|"]
        for i, T in enumerate(L["T"]):
            lines.append(f"| {T} | {L['inf_wall'][i]:.4f} | {L['inf'][i]:.4f} | {L['depth16_wall'][i]:.4f} | "
                         f"{L['depth16'][i]:.4f} |")
        lines += ["", f"log-log slope over all T: depth inf {L['slope_inf_wall']:.2f} (wall) / "
                  f"{L['slope_inf']:.2f} (CPU), depth 16 {L['slope_depth16_wall']:.2f} (wall) / "
                  f"{L['slope_depth16']:.2f} (CPU); linear = 1.", ""]
        ra = lt["ratio"]
        lines += [f"Dense / linear-time at B={ra['B']}, T={ra['T']}, d={lt['d']}:", "",
                  "| depth | dense wall (s) | linear wall (s) | ratio (wall) | ratio (CPU) |", "|---|---|---|---|---|"]
        for depth in ("inf", "16"):
            v = ra[depth]
            lines.append(f"| {depth} | {v['dense']['wall_median']:.2f} | {v['linear']['wall_median']:.3f} | "
                         f"{v['ratio_wall']:.0f}x | {v['ratio']:.0f}x |")
        st = lt["streaming"]
        lines += ["", "`ckd.Streaming(\"linear\")` push (median of 400 pushes around t, d=8): " + ", ".join(
            f"t={t}: {w * 1e6:.1f} us wall ({c * 1e6:.1f} us CPU)" for t, w, c in
            zip(st["t"], st["push_wall"], st["push"])) + f"; last / first {st['ratio_last_first']:.2f}.", ""]
    if "linear_memory" in r:
        lines += ["Memory, one linear-kernel call in a fresh process (B=1, d=8, float64):", "",
                  "| depth | T | wall (s) | CPU (s) | peak RSS (GiB) | RSS before (torch, x) (GiB) | x (GiB) |",
                  "|---|---|---|---|---|---|---|"]
        for m_ in r["linear_memory"]["runs"]:
            lines.append(f"| {m_['depth']} | {m_['T']} | {m_['time_s']:.2f} | {m_['cpu_s']:.2f} | "
                         f"{m_['peak_rss_gib']:.2f} | {m_['rss_before_gib']:.2f} | {m_['x_gib']:.3f} |")
        lines.append("")
    if "features" in r:
        f = r["features"]
        lines += [f"### Random features vs the exact kernel (B={f['B']}, T={f['T']}, d={f['d']}, "
                  f"period {f['period']} for the periodic task)", "",
                  "| task: kernel | depth | exact: error (time s) | " + " | ".join(
                      f"D={D}: rel. diff / error / time s" for D in f["cases"][0]["D"]) + " |",
                  "|---|---|---|" + "---|" * len(f["cases"][0]["D"])]
        for c in f["cases"]:
            opts = ", ".join(f"{k}={v:g}" for k, v in c["opts"].items())
            cells = [f"{a:.2g} / {e:.2g} / {t:.2f}" for a, e, t in zip(c["rel_diff"], c["err"], c["time"])]
            lines.append(f"| {c.get('task', 'periodic')}: {c['kernel']} ({opts}) | {c['depth']} | "
                         f"{c['exact_err']:.2g} ({c['exact_time']:.2f}) | "
                         + " | ".join(cells) + " |")
        lines += ["", "rel. diff = |p_features - p_exact| / |p_exact| over all rows; error = median next-token "
                  "error over the last quarter of the rows (the exact kernel's in the third column).", ""]
    return "\n".join(lines)
