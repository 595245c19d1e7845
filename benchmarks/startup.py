"""Wall time of the ``ckd`` command end to end, start-up and exit included (issue 17).

    python benchmarks/startup.py                  # 9 fresh processes per case, interleaved
    python benchmarks/startup.py --reps 15 --json out.json

Cases: ``ckd --help``; ``ckd forecast ctx.npy -o out.npy --horizon 300`` on a (400, 3) Lorenz-63
context with the default method and with ``--method parrot``; the default forecast with the
object freeze at exit switched off (``gc.freeze`` made a no-op: what ``ckd`` did before); and
``python -c "import torch"`` alone, the floor of any command that needs torch. Each case runs in a
fresh process per repeat, the cases interleaved so that a change of the machine's load touches them
alike; reported: the median and the range of the wall times, and the load average before and after.
Bytecode is written (``PYTHONDONTWRITEBYTECODE`` is removed from the environment), as on a user's
machine, and one warm-up round runs first.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from thread_determinism import lorenz  # the same Lorenz-63 context (RK4, step 0.01)

ROOT = Path(__file__).resolve().parent.parent
FORECAST = ["forecast", "ctx.npy", "-o", "out.npy", "--horizon", "300"]
RUN_CKD = "import sys, ckd.cli; sys.argv[0] = 'ckd'; sys.exit(ckd.cli.main())"  # what the ckd script does
NO_FREEZE = "import gc; gc.freeze = lambda: None; " + RUN_CKD


def cases() -> dict[str, list[str]]:
    py = sys.executable
    return {"ckd --help": [py, "-c", RUN_CKD, "--help"],
            "ckd forecast (default method)": [py, "-c", RUN_CKD, *FORECAST],
            "ckd forecast --method parrot": [py, "-c", RUN_CKD, *FORECAST, "--method", "parrot"],
            "ckd forecast, no freeze at exit": [py, "-c", NO_FREEZE, *FORECAST],
            "import torch": [py, "-c", "import torch"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=9)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    times: dict[str, list[float]] = {name: [] for name in cases()}
    load0 = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="ckd-startup-") as tmp:
        np.save(Path(tmp) / "ctx.npy", lorenz(400, burn=2600))
        for rep in range(args.reps + 1):  # round 0: warm-up (bytecode, page cache)
            for name, cmd in cases().items():
                (Path(tmp) / "out.npy").unlink(missing_ok=True)
                start = time.perf_counter()
                subprocess.run(cmd, cwd=tmp, env=env, check=True, capture_output=True, timeout=300)
                if rep:
                    times[name].append(time.perf_counter() - start)
    load1 = os.getloadavg()[0]
    print(f"load average {load0:.1f} before, {load1:.1f} after; {args.reps} fresh processes per case\n")
    print("| command | median s | min - max s |\n|---|---|---|")
    for name, v in times.items():
        print(f"| {name} | {statistics.median(v):.3g} | {min(v):.3g} - {max(v):.3g} |")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"load": [load0, load1], "times": times}, fh, indent=1)


if __name__ == "__main__":
    main()
