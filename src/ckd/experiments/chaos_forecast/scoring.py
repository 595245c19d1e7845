"""Scoring of the chaos-forecast benchmark: what runs (``RUNS``), the rollouts of each method on
one system's cached data, VPT and sMAPE per initial condition, the attractor test (k-NN KL,
correlation dimension), and the summary over systems.
"""

from __future__ import annotations

import math
import os
import pathlib
import time
import warnings

import numpy as np

from .data import LONG, PROTOCOL, SystemData

# ----------------------------------------------------------------------------- the benchmark

# (label, method, univariate): what runs, and in which setting. Parroting is per coordinate by
# construction (univariate); last and mean are the same in both settings (listed once, full).
# krr is the default of ckd forecast; nvar and esn are reservoirpy's (run when it is installed).
RUNS = [
    ("ckd", "ckd", False), ("krr", "krr", False), ("krr-or-parrot", "krr-or-parrot", False),
    ("analogues", "analogues", False),
    ("nvar", "nvar", False), ("esn", "esn", False),
    ("last", "last", False), ("mean", "mean", False),
    ("ckd-uni", "ckd", True), ("krr-uni", "krr", True), ("krr-or-parrot-uni", "krr-or-parrot", True),
    ("analogues-uni", "analogues", True),
    ("parrot", "parrot", True),
]
REFERENCE = "parrot"
DEFAULT = "krr"                               # the default method of ckd forecast
LONG_RUNS = ("ckd", "krr", "nvar", "esn", "parrot")   # attractor test
HORIZONS = {"1": 30, "2": 60, "5": 150, "10": 300}   # Lyapunov times -> steps (30 per Lyapunov time)
EMBED = 5                                     # univariate delay embedding and parroting window (SPEC §8)
KNN_K = 5
GP_POINTS = 2000                              # gp_dim on at most this many points (strided)
EXAMPLES = ("Lorenz", "Rossler", "Chua", "MackeyGlass", "Aizawa", "Thomas")
EXAMPLE_RUNS = ("ckd", "krr", "ckd-uni", "parrot")   # drawn against the truth


def active_runs() -> list[tuple[str, str, bool]]:
    """``RUNS`` less nvar and esn when reservoirpy is not installed (the optional extra), and only
    the labels listed in ``$CKD_CHAOS_RUNS`` (comma-separated) when it is set: the environment
    reaches worker processes and Ray tasks alike."""
    runs = list(RUNS)
    chosen = os.environ.get("CKD_CHAOS_RUNS")
    if chosen:
        labels = [lab.strip() for lab in chosen.split(",") if lab.strip()]
        unknown = sorted(set(labels) - {lab for lab, _, _ in RUNS})
        if unknown or REFERENCE not in labels:
            raise ValueError(f"CKD_CHAOS_RUNS must list runs of {', '.join(lab for lab, _, _ in RUNS)} including "
                             f"{REFERENCE} (the reference); got {chosen!r}")
        runs = [r for r in runs if r[0] in labels]
    try:
        import reservoirpy  # noqa: F401
    except ImportError:
        return [r for r in runs if r[1] not in ("nvar", "esn")]
    return runs


def run_labels(results: dict) -> list[str]:
    """The labels of ``RUNS`` present in every usable system's results (in ``RUNS`` order)."""
    ok = [r for r in results.values() if r["status"] == "ok"]
    return [lab for lab, _, _ in RUNS if all(lab in r["vpt"] for r in ok)]


def setting(label: str) -> str:
    return next("univariate" if uni else "full state" for lab, _, uni in RUNS if lab == label)


def knn_kl(p: np.ndarray, q: np.ndarray, k: int = KNN_K) -> float:
    """k-NN estimate of KL(P || Q) from samples p (n, d) ~ P and q (m, d) ~ Q (Wang, Kulkarni
    and Verdu, IEEE Trans. Inf. Theory 2009):

        D^ = d/n sum_i log(nu_k(i) / rho_k(i)) + log(m / (n - 1)),

    rho_k(i): distance from p_i to its k-th nearest neighbour among the other p's; nu_k(i):
    to its k-th nearest among the q's. Both sets are first standardised by p's mean and
    standard deviation per coordinate (a zero one becomes 1); distances are floored at 1e-12.
    Consistent as n, m -> inf; on finite samples it can be slightly negative."""
    from scipy.spatial import cKDTree

    mu, sd = p.mean(0), p.std(0)
    sd = np.where(sd > 0, sd, 1.0)
    p, q = (p - mu) / sd, (q - mu) / sd
    if not np.isfinite(q).all():
        return math.inf
    n, d = p.shape
    rho = cKDTree(p).query(p, k + 1)[0][:, -1]
    nu = cKDTree(q).query(p, k)[0]
    nu = nu[:, -1] if nu.ndim == 2 else nu
    floor = 1e-12
    return float(d * np.mean(np.log(np.maximum(nu, floor) / np.maximum(rho, floor))) + math.log(len(q) / (n - 1)))


def corr_dim(x: np.ndarray) -> float:
    """Correlation dimension (``dysts.analysis.gp_dim``) on at most ``GP_POINTS`` points
    (every s-th point); NaN when it cannot be estimated (e.g. a rollout collapsed to a point)."""
    from dysts.analysis import gp_dim

    x = x[:: max(1, -(-len(x) // GP_POINTS))]
    try:
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            v = float(gp_dim(x))
    except Exception:
        return math.nan
    return v if math.isfinite(v) else math.nan


def _rollouts(ctx: np.ndarray, horizon: int, method: str, univariate: bool, device: str) -> tuple[np.ndarray, int]:
    """ckd.forecast's rollout of each context (B, T, d) -> (B, H, d), and the number of steps
    filled after a rollout left the finite numbers."""
    import torch

    from ...forecast import forecast_details

    x = torch.tensor(ctx, dtype=torch.float64, device=device)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = forecast_details(x, method, horizon=horizon, univariate=univariate, embed=EMBED)
    stopped = 0 if r.stopped is None else int(r.stopped.sum())
    return r.pred.cpu().numpy(), stopped


def run_system(name: str, n_ics: int = PROTOCOL["n_ics"], horizon: int = PROTOCOL["horizon"],
               long_steps: int = LONG, device: str = "cpu", root: pathlib.Path | None = None) -> dict:
    """Every run of ``RUNS`` on one system: per initial condition VPT and rolling sMAPE, the
    attractor test on the long trajectory, timings; excluded initial conditions with reasons.
    The parts (``run_part``) run here one after the other and are merged by ``merge_parts``, as
    every executor does (``executors``)."""
    ics = list(range(n_ics)) + (["attractor"] if long_steps else [])
    return merge_parts(name, [run_part(name, p, horizon, long_steps, device, root) for p in ics], n_ics)


def run_part(name: str, part, horizon: int = PROTOCOL["horizon"], long_steps: int = LONG, device: str = "cpu",
             root: pathlib.Path | None = None) -> dict:
    """One part of a system's run: ``part`` = i (every run of ``active_runs`` on initial condition i:
    its VPT, rolling-sMAPE curve, filled steps, seconds, and the example rollouts) or "attractor"
    (the attractor test, ``_attractor``). Reads (or integrates) the cached data."""
    import torch

    torch.set_num_threads(1)
    from ...metrics import rolling_smape, vpt

    data = SystemData(name, root)
    t0 = time.perf_counter()
    if part == "attractor":
        long = data.long(long_steps)
        seconds = time.perf_counter() - t0
        return {"part": part, "attractor": _attractor(data, long, long_steps, device), "seconds_data": seconds,
                "integrations": data.integrations}
    x = data.trajectory(part)
    out = {"part": part, "seconds_data": time.perf_counter() - t0, "integrations": data.integrations}
    if x is None:
        return {**out, "failed": data.reason(f"ic{part:02d}") or data.reason("ics")}
    T = PROTOCOL["context"]
    ctx, truth = x[None, :T], x[None, T:T + horizon]
    out.update(dim=int(x.shape[-1]), vpt={}, curve={}, stopped={}, seconds={}, example={})
    for label, method, uni in active_runs():
        t1 = time.perf_counter()
        pred, stopped = _rollouts(ctx, horizon, method, uni, device)
        out["seconds"][label] = time.perf_counter() - t1
        out["curve"][label] = rolling_smape(truth, pred)[0]  # (H,)
        out["vpt"][label] = float(vpt(truth, pred, pts_per_lyapunov=PROTOCOL["pts_per_period"])[0])
        out["stopped"][label] = stopped
        if name in EXAMPLES and label in EXAMPLE_RUNS:
            out["example"][label] = pred[0]
    if out["example"]:
        out["example"] = {"context": ctx[0, -100:], "truth": truth[0], "pred": out["example"]}
    return out


def merge_parts(name: str, parts: list[dict], n_ics: int) -> dict:
    """A system's result from its parts (in any order): VPTs per initial condition, the median
    rolling-sMAPE curve and sMAPE at 1/2/5/10 Lyapunov times over them, summed filled steps and
    seconds, the example of the first usable one, the attractor test; a part that raised
    (``"error"``) excludes the system with its reason."""
    by = {p["part"]: p for p in parts}
    res = {"system": name, "seconds_data": sum(p.get("seconds_data", 0.0) for p in parts),
           "integrations": sum(p.get("integrations", 0) for p in parts)}
    errors = sorted({p["error"] for p in parts if "error" in p})
    if errors:
        return {**res, "status": "excluded", "reason": "; ".join(errors)}
    failed = {i: by[i]["failed"] for i in range(n_ics) if "failed" in by[i]}
    used = [i for i in range(n_ics) if i not in failed]
    res.update(ics_failed=failed, ics_used=used)
    if not used:
        why = "; ".join(sorted(set(failed.values())))
        return {**res, "status": "excluded", "reason": f"no usable trajectory: {why}"}
    ok = [by[i] for i in used]
    labels = list(ok[0]["vpt"])
    curves = {lab: np.stack([np.asarray(p["curve"][lab]) for p in ok]) for lab in labels}  # (n, H)
    H = curves[labels[0]].shape[1]
    res.update(status="ok", dim=ok[0]["dim"], vpt={lab: [p["vpt"][lab] for p in ok] for lab in labels},
               rolling={lab: np.median(c, 0).tolist() for lab, c in curves.items()},
               smape={lab: {k: float(np.median(c[:, h - 1])) for k, h in HORIZONS.items() if h <= H}
                      for lab, c in curves.items()},
               stopped={lab: sum(p["stopped"][lab] for p in ok) for lab in labels},
               seconds={lab: sum(p["seconds"][lab] for p in ok) for lab in labels})
    if ok[0]["example"]:
        res["example"] = ok[0]["example"]
    res["attractor"] = by["attractor"]["attractor"] if "attractor" in by else {}
    return res


def _attractor(data: SystemData, long: np.ndarray | None, steps: int, device: str) -> dict:
    """Long-term statistics of a ``steps``-step rollout against the true continuation: the
    state-space divergence KL(truth || rollout) (``knn_kl``), the Hellinger distance between power
    spectra (``ckd.metrics.spectral_hellinger``) and correlation dimensions. ``hellinger_floor``:
    the distance between the two halves of the truth (what sampling alone gives, at half length)."""
    from ...metrics import spectral_hellinger

    if long is None:
        return {"reason": data.reason(f"long{steps}") or data.reason("ics")}
    T = PROTOCOL["context"]
    ctx, truth = long[None, :T], long[T:]
    half = len(truth) // 2
    out = {"truth_gp_dim": corr_dim(truth), "kl": {}, "hellinger": {}, "gp_dim": {}, "seconds": {},
           "hellinger_floor": spectral_hellinger(truth[:half], truth[half:2 * half])}
    for label, method, uni in [r for r in active_runs() if r[0] in LONG_RUNS]:
        t1 = time.perf_counter()
        pred = _rollouts(ctx, steps, method, uni, device)[0][0]
        out["seconds"][label] = time.perf_counter() - t1
        out["kl"][label] = knn_kl(truth, pred)
        out["hellinger"][label] = spectral_hellinger(truth, pred)
        out["gp_dim"][label] = corr_dim(pred)
    return out


def summarise(results: dict, horizon: int) -> dict:
    """Per run: median over systems of the per-system median VPT and sMAPE, win counts vs
    ``REFERENCE``, the median rolling-sMAPE curve; the attractor test; excluded systems."""
    ok = {s: r for s, r in results.items() if r["status"] == "ok"}
    excluded = {s: r["reason"] for s, r in results.items() if r["status"] != "ok"}
    ics_failed = {s: r["ics_failed"] for s, r in ok.items() if r["ics_failed"]}
    runs = {}
    ref = {s: float(np.median(r["vpt"][REFERENCE])) for s, r in ok.items()}
    for label in run_labels(ok):
        v = {s: float(np.median(r["vpt"][label])) for s, r in ok.items()}
        curves = np.array([r["rolling"][label] for r in ok.values()]) if ok else np.zeros((0, horizon))
        runs[label] = {
            "setting": setting(label),
            "median_vpt": float(np.median(list(v.values()))) if v else math.nan,
            "mean_vpt": float(np.mean(list(v.values()))) if v else math.nan,
            "median_smape": {k: float(np.median([r["smape"][label][k] for r in ok.values()]))
                             for k in HORIZONS if HORIZONS[k] <= horizon} if ok else {},
            "vs_reference": {"wins": sum(v[s] > ref[s] for s in v), "ties": sum(v[s] == ref[s] for s in v),
                             "losses": sum(v[s] < ref[s] for s in v)},
            "rolling_median": np.median(curves, 0).tolist() if len(curves) else [],
            "rolling_q25": np.quantile(curves, 0.25, 0).tolist() if len(curves) else [],
            "rolling_q75": np.quantile(curves, 0.75, 0).tolist() if len(curves) else [],
            "stopped_steps": sum(r["stopped"][label] for r in ok.values()),
            "seconds": sum(r["seconds"][label] for r in ok.values()),
        }
    # systems where the default's median VPT is strictly larger than another method's
    pairs = {f"{DEFAULT}>{lab}": sum(float(np.median(r["vpt"][DEFAULT])) > float(np.median(r["vpt"][lab]))
                                     for r in ok.values())
             for lab in runs if lab != DEFAULT and DEFAULT in runs}
    att = {s: r["attractor"] for s, r in ok.items() if r.get("attractor", {}).get("kl")}
    attractor = {}
    for label in [lab for lab in LONG_RUNS if all(lab in a["kl"] for a in att.values())]:
        kl = {s: a["kl"][label] for s, a in att.items()}
        gp = {s: abs(a["gp_dim"][label] - a["truth_gp_dim"]) for s, a in att.items()}
        dh = {s: a["hellinger"][label] for s, a in att.items() if "hellinger" in a}
        attractor[label] = {
            "median_kl": float(np.median(list(kl.values()))) if kl else math.nan,
            "kl_below_reference": f"{sum(kl[s] < att[s]['kl'][REFERENCE] for s in kl)}/{len(kl)}",
            "median_hellinger": float(np.median(list(dh.values()))) if dh else math.nan,
            "hellinger_below_reference": f"{sum(dh[s] < att[s]['hellinger'][REFERENCE] for s in dh)}/{len(dh)}",
            "median_abs_gp_dim_error": float(np.nanmedian(list(gp.values()))) if gp else math.nan,
            "gp_dim_nan": sum(math.isnan(v) for v in gp.values()),
        }
    floor = [a["hellinger_floor"] for a in att.values() if "hellinger_floor" in a]
    return {"n_systems": len(ok), "excluded": excluded, "ics_failed": ics_failed, "runs": runs, "pairs": pairs,
            "attractor": attractor, "attractor_systems": len(att),
            "hellinger_floor_median": float(np.median(floor)) if floor else math.nan}
