"""Peak memory of one ``ckd train`` step against the estimate ``check_memory`` refuses by (issue 21, item 3).

    python benchmarks/train_memory.py            # 16 configurations, one fresh process each (~1 min on 2 cores)

Each configuration runs in a fresh process: a tiny warm-up run (imports, allocator, threads), then
``ckd.train.train`` for one step (eval_batch 8). "used" is the growth of the process's peak resident
memory (``resource.getrusage``, ru_maxrss) over that step; "estimate" is the bytes ``check_memory``
compares with the free memory (``ckd.transformer.memory_bytes`` with ``training=True``, plus the
prompts). The estimate must exceed "used" (ratio < 1): a run it lets through does not run out of
memory. Prints one line per configuration and the largest ratio.
"""

from __future__ import annotations

import itertools
import json
import os
import resource
import subprocess
import sys
import tempfile


def measure(kw: dict) -> dict:
    """In this process: the estimate and the peak-RSS growth of one training step of ``kw``."""
    import torch

    import ckd.train.config as config
    from ckd.train import TrainConfig, train

    torch.set_num_threads(1)
    cfg = TrainConfig(steps=1, warmup=1, log_every=1, eval_every=1000, checkpoint_every=1000, eval_batch=8, **kw)
    need = {}
    real = config.check_fits
    config.check_fits = lambda n, *a, **k: need.setdefault("bytes", n)
    config.check_memory(cfg)
    config.check_fits = real
    small = {k: v for k, v in kw.items() if k in ("attention", "mlp", "norm", "layers")}
    with tempfile.TemporaryDirectory() as d:
        train(TrainConfig(steps=1, warmup=1, batch=2, length=4, dim=2, eval_batch=2, **small), d + "/w", progress=False)
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        train(cfg, d + "/r", progress=False)
    used = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    return dict(config=kw, estimate=need["bytes"], used=used, ratio=used / need["bytes"])


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--one":
        print(json.dumps(measure(json.loads(sys.argv[2]))))
        return
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.join(os.path.dirname(__file__), "..", "src"),
                                                       os.environ.get("PYTHONPATH", "")]))
    worst = 0.0
    for attention, layers, batch in itertools.product(("softmax", "exp", "linear", "gaussian"), (1, 3), (1024, 2048)):
        kw = dict(attention=attention, layers=layers, batch=batch, length=256)
        out = subprocess.run([sys.executable, __file__, "--one", json.dumps(kw)], capture_output=True, text=True,
                             env=env, check=True).stdout.strip().splitlines()[-1]
        r = json.loads(out)
        worst = max(worst, r["ratio"])
        print(f"{attention:<9} layers {layers} batch {batch} length 256: estimate {r['estimate'] / 1e6:7.1f} MB, "
              f"used {r['used'] / 1e6:7.1f} MB, used / estimate {r['ratio']:.2f}")
    print(f"largest used / estimate: {worst:.2f}")


if __name__ == "__main__":
    main()
