"""Data of the chaos-forecast benchmark: the protocol, integration with dysts (with a CPU time
limit), the per-system cache (plain ``.npy`` files, ``meta.json`` with checksums, ``index.json``).

The protocol, the integrator and the cache are described in the package doc
(``ckd.experiments.chaos_forecast``).
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import signal
import tempfile
import threading
import time
import warnings

import numpy as np

from ..chaos import import_dysts

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


def atomic_save(path: pathlib.Path, write) -> None:
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
    atomic_save(path, lambda f: np.save(f, a, allow_pickle=False))


def _save_json(path: pathlib.Path, obj: dict) -> None:
    atomic_save(path, lambda f: f.write((json.dumps(obj, indent=1) + "\n").encode()))


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
