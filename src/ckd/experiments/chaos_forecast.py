"""``ckd reproduce chaos-forecast``: multi-step forecasting of every continuous dysts system (SPEC §8).

Protocol (Zhang & Gilpin, ICLR 2025, arXiv 2409.15771; *Context parroting*, arXiv 2505.11349):
the continuous systems of ``dysts.systems.get_attractor_list()`` (135 in dysts 0.96); per system,
20 initial conditions drawn with ``np.random.seed(0); np.random.choice(1000, 20, replace=False)``
from a 1000-point trajectory made with ``pts_per_period=10``; from each,
``make_trajectory(812, timescale="Lyapunov", pts_per_period=30)``; context = the first 512
points, test = the last 300 (10 Lyapunov times of 30 points). No standardisation.

Integrator: the papers use Radau at rtol = atol = 1e-12 (20-40 s per trajectory here without
numba); we use ``INTEGRATOR`` (LSODA, rtol = atol = 1e-10), recorded in every output. The six
delay equations are integrated by dysts' own ``ddeint`` (scipy's odeint at its default
tolerances), which ignores the method and tolerances, in the papers' runs too. The
1000-point trajectory the initial conditions are drawn from is integrated without dysts'
post-processing (``postprocess=False``: a few systems map an unbounded variable to a bounded
one after integration; an initial condition must be a state of the raw equations); the 812-point
trajectories are post-processed as dysts does by default.

Metrics (``ckd.metrics``): sMAPE on the 0-200 scale, rolling sMAPE over steps 1..h, VPT = the
first h with rolling sMAPE > 30, in Lyapunov times (h / 30; 10 when never). Per system: the
median over its initial conditions; overall: the median over systems, and on how many systems a
method beats context parroting (strictly larger VPT).

Attractor test: from initial condition 0 of each system, a long trajectory of 512 + ``LONG``
points; each method rolls out ``LONG`` steps after the 512-point context; we compare the state
distribution of the rollout with the truth's by the k-NN estimate of KL(truth || rollout)
(``knn_kl``) and the correlation dimension (``dysts.analysis.gp_dim``) of each.

Data are cached (``cache_dir``): one folder per system holding plain ``.npy`` files and a
``meta.json``, plus an ``index.json``; generate them ahead with
``python -m ckd.experiments.chaos_forecast generate [--workers N]``. Worker processes over
systems: the environment variable ``CKD_WORKERS`` (default: every CPU) for ``ckd reproduce``, or
``python -m ckd.experiments.chaos_forecast run --workers N [--systems ...] [--out DIR]``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import pathlib
import signal
import sys
import tempfile
import threading
import time
import warnings

import numpy as np

from . import plotting as pl
from .chaos import import_dysts

# ----------------------------------------------------------------------------- protocol

PROTOCOL = {
    "ic_length": 1000,          # trajectory the initial conditions are drawn from
    "ic_pts_per_period": 10,
    "n_ics": 20,
    "ic_seed": 0,
    "length": 812,              # context + test
    "pts_per_period": 30,       # points per Lyapunov time
    "timescale": "Lyapunov",
    "context": 512,
    "horizon": 300,
}
INTEGRATOR = {"method": "LSODA", "rtol": 1e-10, "atol": 1e-10}
LONG = 5000                     # attractor test: steps of the long rollout (full run)
TIMEOUT = 300                   # CPU seconds one integration may take before it is recorded as failed
VERSION = 1                     # bump when the generated data change meaning


def dysts_version() -> str:
    from importlib.metadata import version

    return version("dysts")


def protocol_key() -> str:
    """The cache sub-folder: dysts version, integrator and a hash of the protocol."""
    blob = json.dumps({"protocol": PROTOCOL, "integrator": INTEGRATOR, "version": VERSION}, sort_keys=True)
    digest = hashlib.sha256(blob.encode()).hexdigest()[:10]
    return f"dysts-{dysts_version()}_{INTEGRATOR['method']}-{INTEGRATOR['rtol']:g}_{digest}"


def cache_dir() -> pathlib.Path:
    """``$CKD_CACHE_DIR`` if set, else ``$XDG_CACHE_HOME/ckd`` (default ``~/.cache/ckd``), then
    ``chaos-forecast/<protocol_key()>``: self-contained (copy the folder to another machine)."""
    root = os.environ.get("CKD_CACHE_DIR")
    if root:
        base = pathlib.Path(root)
    else:
        base = pathlib.Path(os.environ.get("XDG_CACHE_HOME") or pathlib.Path.home() / ".cache") / "ckd"
    return base / "chaos-forecast" / protocol_key()


def all_systems() -> list[str]:
    """The continuous systems of dysts (flows and delay equations), sorted."""
    import_dysts()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from dysts.systems import get_attractor_list
    return list(get_attractor_list("continuous"))


def ic_indices() -> np.ndarray:
    """The protocol's initial-condition indices: ``np.random.seed(0)``,
    ``np.random.choice(1000, 20, replace=False)`` (the global NumPy state is restored)."""
    state = np.random.get_state()
    try:
        np.random.seed(PROTOCOL["ic_seed"])
        return np.random.choice(PROTOCOL["ic_length"], PROTOCOL["n_ics"], replace=False)
    finally:
        np.random.set_state(state)


def _atomic_save(path: pathlib.Path, write) -> None:
    """Write through a temporary file in the same folder, then rename (atomic on POSIX)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        pathlib.Path(tmp).unlink(missing_ok=True)
        raise


def _save_npy(path: pathlib.Path, a: np.ndarray) -> None:
    _atomic_save(path, lambda f: np.save(f, a, allow_pickle=False))


def _save_json(path: pathlib.Path, obj: dict) -> None:
    _atomic_save(path, lambda f: f.write((json.dumps(obj, indent=1) + "\n").encode()))


def _model(name: str):
    import_dysts()
    import dysts.flows as flows

    return getattr(flows, name)()


class IntegrationTimeout(Exception):
    pass


def _alarm(signum, frame):
    raise IntegrationTimeout(f"timed out after {TIMEOUT} s of CPU")


def _integrate(model, n: int, init_cond=None, **kw) -> np.ndarray | None:
    """``model.make_trajectory(n, ...)`` with ``INTEGRATOR``; None when dysts gives up; raises
    ``IntegrationTimeout`` after ``TIMEOUT`` seconds of CPU time (user time of the process, so
    that the limit does not depend on the load of the machine; SIGVTALRM, POSIX main thread)."""
    use_alarm = hasattr(signal, "SIGVTALRM") and threading.current_thread() is threading.main_thread()
    if use_alarm:
        previous = signal.signal(signal.SIGVTALRM, _alarm)
        signal.setitimer(signal.ITIMER_VIRTUAL, TIMEOUT)
    try:
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            x = model.make_trajectory(n, init_cond=init_cond, **INTEGRATOR, **kw)
    finally:
        if use_alarm:
            signal.setitimer(signal.ITIMER_VIRTUAL, 0)
            signal.signal(signal.SIGVTALRM, previous)
    if x is None:
        return None
    return np.asarray(x, dtype=np.float64).reshape(n, -1)


def check_trajectory(x: np.ndarray | None, n: int) -> str | None:
    """Why a generated trajectory is unusable (None when it is fine)."""
    if x is None or x.shape[0] != n:
        return "integration did not complete"
    if not np.isfinite(x).all():
        return "non-finite values"
    if np.ptp(x[-PROTOCOL["horizon"]:], axis=0).max() == 0:
        return "degenerate: constant over the test window"
    return None


def _checksum(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a, dtype=np.float64).tobytes()).hexdigest()[:16]


class SystemData:
    """The cached data of one system: ``ics`` (20, d), ``trajectory(i)`` (812, d),
    ``long(L)`` (512 + L, d). Missing pieces are integrated on first use and saved;
    ``meta.json`` records per piece its status, failure reason, seconds and checksum."""

    def __init__(self, name: str, root: pathlib.Path | None = None):
        self.name = name
        self.dir = (root or cache_dir()) / name
        self.meta_path = self.dir / "meta.json"
        try:
            self.meta = json.loads(self.meta_path.read_text())
        except (OSError, ValueError):
            self.meta = {"system": name, "protocol": PROTOCOL, "integrator": INTEGRATOR,
                         "dysts": dysts_version(), "pieces": {}}
        self.integrations = 0  # integrations done by this object (0 when all came from the cache)

    def _save_meta(self) -> None:
        _save_json(self.meta_path, self.meta)

    def _piece(self, key: str, n: int, make) -> np.ndarray | None:
        info = self.meta["pieces"].get(key)
        path = self.dir / f"{key}.npy"
        if info is not None:
            if info["status"] != "ok":
                return None
            if path.exists():
                return np.load(path)
        timed_out = [k for k, v in self.meta["pieces"].items() if "timed out" in v.get("reason", "")]
        if timed_out:  # one timeout: the system is too stiff for the integrator; do not spend hours on it
            self.meta["pieces"][key] = {"status": "failed", "reason": f"skipped: {timed_out[0]} timed out"}
            self._save_meta()
            return None
        t0, c0 = time.perf_counter(), time.process_time()
        try:
            x = make()
            reason = check_trajectory(x, n)
        except Exception as err:  # dysts raises many kinds of errors on hard systems
            x, reason = None, f"{type(err).__name__}: {err}".splitlines()[0][:200]
        self.integrations += 1
        seconds = round(time.perf_counter() - t0, 3)
        cpu = round(time.process_time() - c0, 3)
        if reason is None:
            _save_npy(path, x)
            self.meta["pieces"][key] = {"status": "ok", "seconds": seconds, "cpu_seconds": cpu, "shape": list(x.shape),
                                        "sha256": _checksum(x)}
        else:
            x = None
            self.meta["pieces"][key] = {"status": "failed", "reason": reason, "seconds": seconds, "cpu_seconds": cpu}
        self._save_meta()
        return x

    def ics(self) -> np.ndarray | None:
        """The 20 initial conditions (points ``ic_indices()`` of the 1000-point trajectory)."""
        model = _model(self.name)
        kw = {"postprocess": False} if hasattr(model, "_postprocessing") else {}

        def make():
            x = _integrate(model, PROTOCOL["ic_length"], pts_per_period=PROTOCOL["ic_pts_per_period"], **kw)
            return None if x is None else x[ic_indices()]

        return self._piece("ics", PROTOCOL["n_ics"], make)

    def _from_ic(self, key: str, i: int, n: int) -> np.ndarray | None:
        ics = self.ics()
        if ics is None:
            return None
        return self._piece(key, n, lambda: _integrate(_model(self.name), n, init_cond=ics[i],
                                                       timescale=PROTOCOL["timescale"],
                                                       pts_per_period=PROTOCOL["pts_per_period"]))

    def trajectory(self, i: int) -> np.ndarray | None:
        """Initial condition i: the (812, d) protocol trajectory (None if it failed: ``reason``)."""
        return self._from_ic(f"ic{i:02d}", i, PROTOCOL["length"])

    def long(self, steps: int) -> np.ndarray | None:
        """Initial condition 0 integrated for context + ``steps`` points (attractor test)."""
        return self._from_ic(f"long{steps}", 0, PROTOCOL["context"] + steps)

    def reason(self, key: str) -> str | None:
        info = self.meta["pieces"].get(key)
        return None if info is None or info["status"] == "ok" else info["reason"]


def generate(name: str, n_ics: int, long_steps: int | None, root: pathlib.Path | None = None) -> dict:
    """Integrate (or load) everything one system needs; returns its meta."""
    data = SystemData(name, root)
    for i in range(n_ics):
        data.trajectory(i)
    if long_steps:
        data.long(long_steps)
    return data.meta


def write_index(root: pathlib.Path | None = None) -> dict:
    """``index.json``: per system, its pieces' status (rebuilt from the ``meta.json`` files)."""
    root = root or cache_dir()
    index = {"protocol": PROTOCOL, "integrator": INTEGRATOR, "dysts": dysts_version(), "systems": {}}
    for meta in sorted(root.glob("*/meta.json")):
        m = json.loads(meta.read_text())
        index["systems"][m["system"]] = m["pieces"]
    _save_json(root / "index.json", index)
    return index


def workers() -> int:
    """Worker processes over systems: ``$CKD_WORKERS`` (default: the CPUs this process may use,
    so that the full benchmark uses the whole machine; each worker runs torch on one thread)."""
    default = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        n = int(os.environ.get("CKD_WORKERS", str(default)))
    except ValueError:
        raise ValueError(f"CKD_WORKERS must be an integer, got {os.environ['CKD_WORKERS']!r}") from None
    if n < 1:
        raise ValueError(f"CKD_WORKERS must be >= 1, got {n}")
    return n


def _generate_one(args) -> tuple[str, float]:
    name, n_ics, long_steps = args
    t0 = time.perf_counter()
    generate(name, n_ics, long_steps)
    return name, time.perf_counter() - t0


# ----------------------------------------------------------------------------- the benchmark

# (label, method, univariate): what runs, and in which setting. Parroting is per coordinate by
# construction (univariate); last and mean are the same in both settings (listed once, full).
RUNS = [
    ("ckd", "ckd", False), ("krr", "krr", False), ("analogues", "analogues", False),
    ("last", "last", False), ("mean", "mean", False),
    ("ckd-uni", "ckd", True), ("krr-uni", "krr", True), ("analogues-uni", "analogues", True),
    ("parrot", "parrot", True),
]
REFERENCE = "parrot"
LONG_RUNS = ("ckd", "krr", "parrot")          # attractor test
HORIZONS = {"1": 30, "2": 60, "5": 150, "10": 300}   # Lyapunov times -> steps (30 per Lyapunov time)
EMBED = 5                                     # univariate delay embedding and parroting window (SPEC §8)
KNN_K = 5
GP_POINTS = 2000                              # gp_dim on at most this many points (strided)
EXAMPLES = ("Lorenz", "Rossler", "Chua", "MackeyGlass", "Aizawa", "Thomas")
EXAMPLE_RUNS = ("ckd", "krr", "ckd-uni", "parrot")   # drawn against the truth
QUICK = {"systems": ("Lorenz", "Rossler"), "n_ics": 1, "horizon": 60, "long": 200}


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

    from ..forecast import forecast_details

    x = torch.tensor(ctx, dtype=torch.float64, device=device)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = forecast_details(x, method, horizon=horizon, univariate=univariate, embed=EMBED)
    stopped = 0 if r.stopped is None else int(r.stopped.sum())
    return r.pred.cpu().numpy(), stopped


def run_system(name: str, n_ics: int = PROTOCOL["n_ics"], horizon: int = PROTOCOL["horizon"],
               long_steps: int = LONG, device: str = "cpu", root: pathlib.Path | None = None) -> dict:
    """Every run of ``RUNS`` on one system: per initial condition VPT and rolling sMAPE, the
    attractor test on the long trajectory, timings; excluded initial conditions with reasons."""
    import torch

    torch.set_num_threads(1)
    from ..metrics import rolling_smape, vpt

    data = SystemData(name, root)
    t0 = time.perf_counter()
    trajs, failed = {}, {}
    for i in range(n_ics):
        x = data.trajectory(i)
        if x is None:
            failed[i] = data.reason(f"ic{i:02d}") or data.reason("ics")
        else:
            trajs[i] = x
    res = {"system": name, "ics_failed": failed, "ics_used": sorted(trajs), "seconds_data": 0.0,
           "integrations": 0}
    if not trajs:
        res["status"], res["reason"] = "excluded", "no usable trajectory: " + "; ".join(sorted(set(failed.values())))
        res["seconds_data"] = time.perf_counter() - t0
        res["integrations"] = data.integrations
        return res
    T = PROTOCOL["context"]
    X = np.stack([trajs[i] for i in sorted(trajs)])
    ctx, truth = X[:, :T], X[:, T:T + horizon]
    long = data.long(long_steps) if long_steps else None
    res["seconds_data"] = time.perf_counter() - t0
    res["integrations"] = data.integrations
    res.update(status="ok", dim=int(X.shape[-1]), vpt={}, rolling={}, smape={}, stopped={}, seconds={})
    examples = {}
    for label, method, uni in RUNS:
        t1 = time.perf_counter()
        pred, stopped = _rollouts(ctx, horizon, method, uni, device)
        res["seconds"][label] = time.perf_counter() - t1
        r = rolling_smape(truth, pred)  # (n, H)
        res["vpt"][label] = vpt(truth, pred, pts_per_lyapunov=PROTOCOL["pts_per_period"]).tolist()
        res["rolling"][label] = np.median(r, 0).tolist()
        res["smape"][label] = {k: float(np.median(r[:, h - 1])) for k, h in HORIZONS.items() if h <= horizon}
        res["stopped"][label] = stopped
        if name in EXAMPLES and label in EXAMPLE_RUNS:
            examples[label] = pred[0]
    if examples:
        res["example"] = {"context": ctx[0, -100:], "truth": truth[0], "pred": examples}
    res["attractor"] = _attractor(data, long, long_steps, device) if long_steps else {}
    return res


def _attractor(data: SystemData, long: np.ndarray | None, steps: int, device: str) -> dict:
    """KL(truth || rollout) (``knn_kl``) and correlation dimensions for a ``steps``-step rollout."""
    if long is None:
        return {"reason": data.reason(f"long{steps}") or data.reason("ics")}
    T = PROTOCOL["context"]
    ctx, truth = long[None, :T], long[T:]
    out = {"truth_gp_dim": corr_dim(truth), "kl": {}, "gp_dim": {}, "seconds": {}}
    for label in LONG_RUNS:
        _, method, uni = next(r for r in RUNS if r[0] == label)
        t1 = time.perf_counter()
        pred = _rollouts(ctx, steps, method, uni, device)[0][0]
        out["seconds"][label] = time.perf_counter() - t1
        out["kl"][label] = knn_kl(truth, pred)
        out["gp_dim"][label] = corr_dim(pred)
    return out


def _run_one(args) -> dict:
    name, n_ics, horizon, long_steps, device = args
    try:
        return run_system(name, n_ics, horizon, long_steps, device)
    except Exception as err:  # one broken system must not lose the others
        return {"system": name, "status": "excluded", "reason": f"{type(err).__name__}: {err}".splitlines()[0]}


def run(out: pathlib.Path, *, quick: bool, seed: int, device: str, systems: list[str] | None = None,
        n_workers: int | None = None) -> dict:
    """The benchmark (module doc) on ``systems`` (default: all, or ``QUICK``'s) with ``n_workers``
    processes (default ``workers()``; 1 when quick). ``seed`` has no effect: the protocol fixes
    its own seed."""
    from . import progress

    names = list(systems or (QUICK["systems"] if quick else all_systems()))
    n_ics, horizon, long_steps = ((QUICK["n_ics"], QUICK["horizon"], QUICK["long"]) if quick
                                  else (PROTOCOL["n_ics"], PROTOCOL["horizon"], LONG))
    n_workers = n_workers or (1 if quick else workers())
    jobs = [(s, n_ics, horizon, long_steps, device) for s in names]
    start = time.perf_counter()
    partial = os.environ.get("CKD_PARTIAL")  # optional: pickle the systems done so far (long runs elsewhere)
    results = []
    if n_workers > 1:
        import multiprocessing as mp

        with mp.get_context("spawn").Pool(n_workers) as pool:
            for r in progress(pool.imap_unordered(_run_one, jobs), "chaos-forecast systems", total=len(jobs)):
                results.append(r)
                if partial:
                    _save_partial(pathlib.Path(partial), results, time.perf_counter() - start)
    else:
        results = [_run_one(j) for j in progress(jobs, "chaos-forecast systems", quick=quick)]
    seconds = time.perf_counter() - start
    if not quick:
        write_index()
    return report(out, results, seconds, quick=quick, device=device, n_workers=n_workers, n_ics=n_ics,
                  horizon=horizon, long_steps=long_steps)


def _save_partial(path: pathlib.Path, results: list[dict], seconds: float) -> None:
    import pickle

    _atomic_save(path, lambda f: pickle.dump({"results": results, "seconds": seconds}, f))


def report(out: pathlib.Path, results: list[dict], seconds: float, *, quick: bool, device: str, n_workers: int,
           n_ics: int, horizon: int, long_steps: int) -> dict:
    """Write the outputs (JSON, CSV, tables, figures) of the per-system ``results`` of ``run``."""
    names = [r["system"] for r in results]
    results = {r["system"]: r for r in sorted(results, key=lambda r: r["system"])}
    config = {"protocol": PROTOCOL, "integrator": INTEGRATOR, "dysts": dysts_version(), "quick": quick,
              "n_ics": n_ics, "horizon": horizon, "long": long_steps, "runs": RUNS, "reference": REFERENCE,
              "delay_equations": "integrated by dysts' ddeint (scipy odeint, default tolerances): "
                                 "the integrator setting does not apply to them",
              "embed": EMBED, "knn_k": KNN_K, "gp_points": GP_POINTS, "device": device, "workers": n_workers,
              "seed": "unused: the protocol fixes np.random.seed(0)", "cache": str(cache_dir()),
              "vpt": "first h with rolling sMAPE (0-200) > 30, / 30; horizon / 30 when never",
              "smape": "200 |x - x^| / (|x| + |x^|), 0/0 = 0, non-finite x^ = 200"}
    summary = summarise(results, horizon)
    saved = {s: {k: v for k, v in r.items() if k != "rolling"} for s, r in results.items()}  # curves: summary
    data = {"config": config, "summary": summary, "systems": saved, "seconds": seconds}
    pl.save_json(out, "chaos-forecast", data)
    _write_csv(out / "chaos-forecast.csv", results)
    (out / "chaos-forecast.md").write_text(tables(json.loads((out / "chaos-forecast.json").read_text())))
    figures(out, results, summary, horizon)
    head = {"systems used": float(summary["n_systems"]), "systems excluded": float(len(summary["excluded"]))}
    for label in ("ckd", "krr", "analogues", "last", "ckd-uni", "krr-uni", "analogues-uni", REFERENCE):
        if label in summary["runs"]:
            head[f"{label} ({setting(label)}) median VPT"] = summary["runs"][label]["median_vpt"]
    for label in ("ckd", "ckd-uni"):
        if label in summary["runs"]:
            w = summary["runs"][label]["vs_reference"]
            head[f"{label}: systems beating parrot"] = f"{w['wins']}/{summary['n_systems']}"
    if "ckd" in summary["attractor"]:
        head["ckd KL below parrot's"] = summary["attractor"]["ckd"]["kl_below_reference"]
    head["worker-seconds per system (wall x workers / systems)"] = seconds * n_workers / max(1, len(names))
    return head


def summarise(results: dict, horizon: int) -> dict:
    """Per run: median over systems of the per-system median VPT and sMAPE, win counts vs
    ``REFERENCE``, the median rolling-sMAPE curve; the attractor test; excluded systems."""
    ok = {s: r for s, r in results.items() if r["status"] == "ok"}
    excluded = {s: r["reason"] for s, r in results.items() if r["status"] != "ok"}
    ics_failed = {s: r["ics_failed"] for s, r in ok.items() if r["ics_failed"]}
    runs = {}
    ref = {s: float(np.median(r["vpt"][REFERENCE])) for s, r in ok.items()}
    for label, _, _ in RUNS:
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
    att = {s: r["attractor"] for s, r in ok.items() if r.get("attractor", {}).get("kl")}
    attractor = {}
    for label in LONG_RUNS:
        kl = {s: a["kl"][label] for s, a in att.items()}
        gp = {s: abs(a["gp_dim"][label] - a["truth_gp_dim"]) for s, a in att.items()}
        attractor[label] = {
            "median_kl": float(np.median(list(kl.values()))) if kl else math.nan,
            "kl_below_reference": f"{sum(kl[s] < att[s]['kl'][REFERENCE] for s in kl)}/{len(kl)}",
            "median_abs_gp_dim_error": float(np.nanmedian(list(gp.values()))) if gp else math.nan,
            "gp_dim_nan": sum(math.isnan(v) for v in gp.values()),
        }
    return {"n_systems": len(ok), "excluded": excluded, "ics_failed": ics_failed, "runs": runs,
            "attractor": attractor, "attractor_systems": len(att)}


def _write_csv(path: pathlib.Path, results: dict) -> None:
    """One row per (system, run): median VPT and sMAPE at 1/2/5/10 Lyapunov times over the
    initial conditions, and the attractor test where it ran."""
    import csv

    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["system", "run", "setting", "status", "n_ics", "vpt_median",
                    *[f"smape_{k}" for k in HORIZONS], "kl", "gp_dim_rollout", "gp_dim_truth", "reason"])
        for s, r in results.items():
            if r["status"] != "ok":
                w.writerow([s, "", "", r["status"], 0, "", *[""] * len(HORIZONS), "", "", "", r["reason"]])
                continue
            a = r.get("attractor", {})
            for label, _, _ in RUNS:
                sm = r["smape"][label]
                w.writerow([s, label, setting(label), "ok", len(r["ics_used"]), f"{np.median(r['vpt'][label]):.6g}",
                            *[f"{sm[k]:.6g}" if k in sm else "" for k in HORIZONS],
                            f"{a['kl'][label]:.6g}" if label in a.get("kl", {}) else "",
                            f"{a['gp_dim'][label]:.6g}" if label in a.get("gp_dim", {}) else "",
                            f"{a['truth_gp_dim']:.6g}" if label in a.get("kl", {}) else "", ""])


def _g(v) -> str:
    return "—" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3g}"


def tables(data: dict) -> str:
    """chaos-forecast.md: the summary table per setting, the attractor test, the excluded
    systems and the per-system median VPTs, from ``chaos-forecast.json`` (for the docs)."""
    cfg, summ = data["config"], data["summary"]
    n = summ["n_systems"]
    integ = cfg["integrator"]
    lines = [f"Our runs: {n} systems, {cfg['n_ics']} initial conditions each, context "
             f"{cfg['protocol']['context']}, horizon {cfg['horizon']}, dysts {cfg['dysts']}, "
             f"{integ['method']} at rtol = atol = {integ['rtol']:g}"
             f"{' (quick run)' if cfg['quick'] else ''}; per system the median over its initial conditions, "
             f"then the median over systems. Wins: systems where the run's median VPT is larger than "
             f"parroting's (ties: equal).", ""]
    hs = [k for k in HORIZONS if HORIZONS[k] <= cfg["horizon"]]
    for st in ("full state", "univariate"):
        lines += [f"**{st.capitalize()}**" + (" (parrot, the reference, is univariate by construction)"
                                                if st == "full state" else ""), "",
                  "| method | median VPT (Lyapunov times) | mean VPT | " + " | ".join(f"sMAPE @{k}" for k in hs)
                  + " | wins / ties / losses vs parrot | seconds |", "|---|" + "---|" * (len(hs) + 4)]
        for label, r in summ["runs"].items():
            if r["setting"] != st and label != cfg["reference"]:
                continue
            w = r["vs_reference"]
            wins = "—" if label == cfg["reference"] else f"{w['wins']} / {w['ties']} / {w['losses']}"
            lines.append(f"| {label} | {_g(r['median_vpt'])} | {_g(r['mean_vpt'])} | "
                         + " | ".join(_g(r["median_smape"].get(k)) for k in hs) + f" | {wins} | {r['seconds']:.0f} |")
        lines.append("")
    if summ["attractor"]:
        lines += [f"**Attractor test** ({summ['attractor_systems']} systems; initial condition 0, a "
                  f"{cfg['long']}-step rollout after the {cfg['protocol']['context']}-point context against the "
                  f"true continuation; KL(truth ‖ rollout) by the k-NN estimator, k = {cfg['knn_k']}; correlation "
                  f"dimension by dysts' gp_dim on ≤ {cfg['gp_points']} points)", "",
                  "| method | median KL | systems with KL below parrot's | median abs(gp_dim − truth's) "
                  "| gp_dim not estimable |", "|---|---|---|---|---|"]
        for label, a in summ["attractor"].items():
            below = "—" if label == cfg["reference"] else a["kl_below_reference"]
            lines.append(f"| {label} | {_g(a['median_kl'])} | {below} | {_g(a['median_abs_gp_dim_error'])} "
                         f"| {a['gp_dim_nan']} |")
        lines.append("")
    lines += goals(summ) + [""]
    if summ["excluded"] or summ["ics_failed"]:
        lines += ["Excluded:", ""]
        lines += [f"- {s}: {reason}" for s, reason in summ["excluded"].items()]
        lines += [f"- {s}, initial conditions {', '.join(map(str, f))}: {'; '.join(sorted(set(f.values())))}"
                  for s, f in summ["ics_failed"].items()]
        lines.append("")
    labels = [lab for lab, _, _ in RUNS if lab in summ["runs"]]
    lines += ["<details><summary>Median VPT per system</summary>", "",
              "| system | " + " | ".join(labels) + " |", "|---|" + "---|" * len(labels)]
    for s, r in data["systems"].items():
        if r["status"] == "ok":
            lines.append(f"| {s} | " + " | ".join(_g(float(np.median(r["vpt"][lab]))) for lab in labels) + " |")
    lines += ["", "</details>"]
    return "\n".join(lines) + "\n"


def goals(summ: dict) -> list[str]:
    """The goals of issue 10, checked on these numbers (met / missed)."""
    runs, n = summ["runs"], summ["n_systems"]
    if not n or any(k not in runs for k in ("ckd", "ckd-uni", REFERENCE)):
        return []
    ckd, uni, ref = runs["ckd"]["median_vpt"], runs["ckd-uni"]["median_vpt"], runs[REFERENCE]["median_vpt"]
    wins = runs["ckd"]["vs_reference"]["wins"]
    ok = {True: "met", False: "**missed**"}
    out = ["Goals (issue 10) on these systems:", "",
           f"- full state, median VPT of ckd >= 5: {ckd:.3g} ({ok[ckd >= 5]})",
           f"- full state, >= 3x parroting's median VPT: {ckd:.3g} vs 3 x {ref:.3g} ({ok[ckd >= 3 * ref]})",
           f"- full state, better than parroting on >= 80% of systems: {wins}/{n} ({ok[wins >= 0.8 * n]})",
           f"- univariate, ckd-uni median VPT above parroting's: {uni:.3g} vs {ref:.3g} ({ok[uni > ref]})"]
    att = summ["attractor"].get("ckd")
    if att:
        below, total = map(int, att["kl_below_reference"].split("/"))
        out.append(f"- attractor test, ckd's KL below parroting's on most systems: {below}/{total} "
                   f"({ok[below > total / 2]})")
    return out


COLORS = {"ckd": "C0", "krr": "C3", "analogues": "C2", "last": "C8", "mean": "C5", "ckd-uni": "C9",
          "krr-uni": "C1", "analogues-uni": "C4", "parrot": "C6"}


def figures(out: pathlib.Path, results: dict, summary: dict, horizon: int) -> None:
    """chaos-forecast.png: rolling sMAPE (median over systems), VPT distributions, VPT per
    system ckd vs parrot, attractor KL ckd vs parrot; chaos-forecast_examples.png: example
    rollouts against the truth; chaos-forecast_attractor.png: correlation dimensions."""
    ok = {s: r for s, r in results.items() if r["status"] == "ok"}
    labels = [lab for lab, _, _ in RUNS]
    lyap = np.arange(1, horizon + 1) / PROTOCOL["pts_per_period"]
    fig, axes = pl.figure(2, 2, width=5.0, height=3.8)
    ax = axes[0, 0]
    for lab in labels:
        r = summary["runs"][lab]
        if r["rolling_median"]:
            ax.plot(lyap, r["rolling_median"], color=COLORS[lab], ls="--" if "uni" in lab else "-", label=lab)
    ax.axhline(30, color="grey", lw=0.8, ls=":")
    ax.set_xlabel("horizon h (Lyapunov times)")
    ax.set_ylabel("rolling sMAPE over steps 1..h (0-200)")
    ax.set_title(f"median over {len(ok)} systems (dashed: univariate)")
    ax.legend(ncol=2, fontsize=6.5)
    ax = axes[0, 1]
    vp = [[float(np.median(r["vpt"][lab])) for r in ok.values()] for lab in labels]
    if ok:
        ax.boxplot(vp, showfliers=True, flierprops={"markersize": 2})
        for i, v in enumerate(vp):
            ax.scatter(np.full(len(v), i + 1) + np.random.default_rng(i).uniform(-0.2, 0.2, len(v)), v, s=3,
                       color=COLORS[labels[i]], alpha=0.5, zorder=3)
    ax.set_xticks(range(1, len(labels) + 1), labels, rotation=45, ha="right")
    ax.set_ylabel("VPT per system (Lyapunov times)")
    ax.set_title("VPT distribution (per-system medians)")
    ax = axes[1, 0]
    for lab, mk in [(lab, mk) for lab, mk in (("ckd", "o"), ("ckd-uni", "^")) if lab in labels]:
        x = [float(np.median(r["vpt"][REFERENCE])) for r in ok.values()]
        y = [float(np.median(r["vpt"][lab])) for r in ok.values()]
        ax.scatter(x, y, s=10, marker=mk, color=COLORS[lab], label=lab, alpha=0.7)
    top = horizon / PROTOCOL["pts_per_period"]
    ax.plot([0, top], [0, top], color="grey", lw=0.8)
    ax.set_xlabel("parrot VPT (Lyapunov times)")
    ax.set_ylabel("ckd VPT")
    ax.set_title("VPT per system (above the line: ckd better)")
    ax.legend()
    ax = axes[1, 1]
    att = {s: r["attractor"] for s, r in ok.items() if r.get("attractor", {}).get("kl")}
    for lab in [lab for lab in LONG_RUNS if lab != REFERENCE]:
        x = [a["kl"][REFERENCE] for a in att.values()]
        y = [a["kl"][lab] for a in att.values()]
        ax.scatter(x, y, s=10, color=COLORS[lab], label=lab, alpha=0.7)
    if att:
        vals = [v for a in att.values() for v in a["kl"].values() if math.isfinite(v)]
        lo, hi = min(vals + [0.0]), max(vals + [1.0])
        ax.plot([lo, hi], [lo, hi], color="grey", lw=0.8)
        ax.legend()
    ax.set_xlabel("parrot KL(truth ‖ rollout)")
    ax.set_ylabel("KL(truth ‖ rollout)")
    ax.set_title("attractor test (below the line: closer than parrot)")
    pl.save_figure(fig, out, "chaos-forecast")

    ex = [s for s in EXAMPLES if s in ok and "example" in ok[s]]
    if ex:
        fig, axes = pl.figure(len(ex), 1, width=8.0, height=2.0, squeeze=False)
        for ax, s in zip(axes[:, 0], ex):
            e = ok[s]["example"]
            c, t = np.asarray(e["context"]), np.asarray(e["truth"])
            tc = np.arange(-len(c), 0) / PROTOCOL["pts_per_period"]
            tt = np.arange(len(t)) / PROTOCOL["pts_per_period"]
            ax.plot(tc, c[:, 0], color="grey", lw=1.0, label="context")
            ax.plot(tt, t[:, 0], color="k", lw=2.4, alpha=0.45, label="truth")
            for lab in [lab for lab in EXAMPLE_RUNS if lab in e["pred"]]:
                ax.plot(tt, np.asarray(e["pred"][lab])[:, 0], color=COLORS[lab], lw=1.0,
                        ls="--" if "uni" in lab else "-", label=lab)
            ax.set_title(f"{s}, initial condition 0, coordinate 0", fontsize=8)
            ax.set_ylabel("x_0")
        axes[0, 0].legend(ncol=6, fontsize=6.5)
        axes[-1, 0].set_xlabel("time after the context (Lyapunov times)")
        pl.save_figure(fig, out, "chaos-forecast_examples")

    fig, axes = pl.figure(1, 2, width=4.5, height=3.6)
    ax = axes[0]
    for lab in LONG_RUNS:
        x = [a["truth_gp_dim"] for a in att.values()]
        y = [a["gp_dim"][lab] for a in att.values()]
        ax.scatter(x, y, s=10, color=COLORS[lab], label=lab, alpha=0.7)
    dims = [v for a in att.values() for v in (a["truth_gp_dim"], *a["gp_dim"].values()) if math.isfinite(v)]
    top = max([4.0] + dims)
    ax.plot([0, top], [0, top], color="grey", lw=0.8)
    ax.set_xlabel("correlation dimension of the truth")
    ax.set_ylabel("correlation dimension of the rollout")
    ax.set_title("attractor test: gp_dim")
    ax.legend()
    ax = axes[1]
    kls = [[a["kl"][lab] for a in att.values() if math.isfinite(a["kl"][lab])] for lab in LONG_RUNS]
    if att:
        ax.boxplot(kls, showfliers=True, flierprops={"markersize": 2})
    ax.set_xticks(range(1, len(LONG_RUNS) + 1), LONG_RUNS)
    ax.set_ylabel("KL(truth ‖ rollout), k-NN estimate")
    ax.set_title(f"attractor test, {len(att)} systems")
    pl.save_figure(fig, out, "chaos-forecast_attractor")


def main(argv: list[str] | None = None) -> int:
    """``python -m ckd.experiments.chaos_forecast generate|run``: fill the cache ahead of a run, or
    run the benchmark (optionally on some systems) with worker processes."""
    p = argparse.ArgumentParser(prog="python -m ckd.experiments.chaos_forecast",
                                description="The chaos-forecast benchmark: generate its data, or run it.")
    p.add_argument("action", choices=["generate", "run"])
    p.add_argument("--workers", type=int, default=None, help="worker processes over systems "
                   "(default: $CKD_WORKERS or 1)")
    p.add_argument("--systems", nargs="*", help="default: all continuous dysts systems")
    p.add_argument("--long", type=int, default=LONG, help=f"generate: long-trajectory steps (default {LONG}; 0: none)")
    p.add_argument("--out", default="ckd-results", help="run: output folder (default ckd-results/)")
    p.add_argument("--quick", action="store_true", help="run: the quick configuration")
    args = p.parse_args(argv)
    n_workers = workers() if args.workers is None else args.workers
    if n_workers < 1:
        p.error(f"--workers must be >= 1, got {n_workers}")
    names = args.systems or all_systems()
    print(f"cache: {cache_dir()}", file=sys.stderr)
    t0 = time.perf_counter()
    if args.action == "run":
        out = pathlib.Path(args.out)
        head = run(out, quick=args.quick, seed=0, device="cpu", systems=args.systems, n_workers=n_workers)
        print(json.dumps(head, indent=1))
        print(f"done in {time.perf_counter() - t0:.0f} s; results in {out}/", file=sys.stderr)
        return 0
    jobs = [(s, PROTOCOL["n_ics"], args.long) for s in names]
    from tqdm.auto import tqdm

    if n_workers > 1:
        import multiprocessing as mp

        with mp.get_context("spawn").Pool(n_workers) as pool:
            done = list(tqdm(pool.imap_unordered(_generate_one, jobs), total=len(jobs), desc="systems"))
    else:
        done = [_generate_one(j) for j in tqdm(jobs, desc="systems")]
    index = write_index()
    failed = {s: {k: v["reason"] for k, v in p.items() if v["status"] != "ok"}
              for s, p in index["systems"].items()}
    failed = {s: f for s, f in failed.items() if f}
    print(f"{len(done)} systems in {time.perf_counter() - t0:.0f} s; {len(failed)} with failed pieces: "
          f"{json.dumps(failed)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
