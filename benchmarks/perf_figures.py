"""The figures of a benchmark run (``*.png`` next to ``results.json``), drawn with matplotlib."""

from __future__ import annotations

from pathlib import Path


def plain_ticks(ax, xs) -> None:
    """x ticks at the measured sizes, written as plain numbers (log axes' minor labels overlap)."""
    from matplotlib.ticker import NullFormatter

    ax.set_xticks(xs, [str(v) for v in xs])
    ax.xaxis.set_minor_formatter(NullFormatter())


def figures(r: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def save(fig, name):
        fig.tight_layout()
        fig.savefig(out / f"{name}.png", dpi=120)
        plt.close(fig)

    if "length" in r:
        s = r["length"]
        fig, ax = plt.subplots(figsize=(5, 4))
        for name in ("whole", "blocked", "infinite"):
            ax.loglog(s["T"], s[name], "o-", label=f"{name} (slope {s['slope_' + name]:.2f})")
        ref = [s["whole"][-1] * (T / s["T"][-1]) ** 2 for T in s["T"]]
        ax.loglog(s["T"], ref, "k:", label="T^2")
        ax.set(xlabel="T", ylabel="seconds", title=f"CKD time vs T (exp, B={s['B']}, N={s['depth']})")
        plain_ticks(ax, s["T"])
        ax.legend(fontsize=8)
        save(fig, "time_vs_T")
    for key, label in (("depth", "depth N"), ("batch", "batch B")):
        if key in r:
            s = r[key]
            fig, ax = plt.subplots(figsize=(5, 4))
            ax.loglog(s[key], s["time"], "o-", label=f"descent (slope {s['slope']:.2f})")
            ax.set(xlabel=label, ylabel="seconds", title=f"CKD time vs {label} (exp, T={s['T']})")
            plain_ticks(ax, s[key])
            ax.legend(fontsize=8)
            save(fig, f"time_vs_{key}")
    if "streaming" in r:
        s = r["streaming"]
        fig, ax = plt.subplots(figsize=(5, 4))
        for k, v in s["kernels"].items():
            line, = ax.loglog(v["t"], v["push"], "o-", label=f"{k}: one push")
            ax.loglog(v["t"], v["recompute"], "s--", color=line.get_color(), label=f"{k}: recompute prefix")
        ax.set(xlabel="tokens so far t", ylabel="seconds", title="Streaming (depth inf) vs recomputing")
        plain_ticks(ax, next(iter(s["kernels"].values()))["t"])
        ax.legend(fontsize=7)
        save(fig, "streaming")
    if "linear_time" in r:
        L = r["linear_time"]["lengths"]
        fig, ax = plt.subplots(figsize=(5, 4))
        for name, label in (("inf_wall", "depth inf (delta rule)"), ("depth16_wall", "depth 16 (linear attention)")):
            ax.loglog(L["T"], L[name], "o-", label=f"{label}, slope {L['slope_' + name]:.2f}")
        ref = [L["inf_wall"][-1] * T / L["T"][-1] for T in L["T"]]
        ax.loglog(L["T"], ref, "k:", label="T")
        ax.set(xlabel="T", ylabel="seconds (wall)", title=f"linear kernel, linear time (B={L['B']}, d=8)")
        ax.legend(fontsize=8)
        save(fig, "linear_time_vs_T")
    if "features" in r:
        f = r["features"]
        fig, ax = plt.subplots(figsize=(5, 4))
        for c in f["cases"]:
            label = f"{c.get('task', '')} {c['kernel']} depth {c['depth']} {c['opts']}"
            line, = ax.loglog(c["D"], c["err"], "o-", label=label)
            ax.axhline(c["exact_err"], color=line.get_color(), ls=":")
        ax.set(xlabel="features D", ylabel="median next-token error", title="random features (dotted: exact kernel)")
        ax.legend(fontsize=6)
        save(fig, "features_vs_D")
    if "backends" in r or "dtypes" in r or "floor" in r:
        panels = [k for k in ("floor", "backends", "dtypes") if k in r]
        fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 4), squeeze=False)
        for ax, key in zip(axes[0], panels):
            v = r[key]["kernels"]
            names = {"floor": ("floor", "predict"), "backends": ("descent", "transformer"),
                     "dtypes": ("float64", "float32")}[key]
            ks = list(v)
            for i, n in enumerate(names):
                ax.bar([j + 0.4 * i for j in range(len(ks))], [v[k][n]["median"] for k in ks], 0.4, label=n)
            ax.set_xticks([j + 0.2 for j in range(len(ks))], ks)
            ax.set(ylabel="seconds (median)", title={"floor": "descent vs floor", "backends": "transformer vs descent",
                                                     "dtypes": "float64 vs float32"}[key])
            ax.legend(fontsize=8)
        save(fig, "backends_dtypes")
