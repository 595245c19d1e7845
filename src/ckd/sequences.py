"""Seeded, batched task families x_{t+1} = f(x_t) with a new f per sequence (SPEC §1, §5).

Every family returns a ``Task``: the sequences x (B, T, d) and, where it exists, the
map f (applied per sequence to (B, n, d) points), so that oracles and baselines can
use it. Optional ``noise`` is process noise: x_{t+1} = f(x_t) + noise * eps_t.

Optional ``x0`` ((d,), shared, or (B, d)) fixes the start x_0 of every sequence instead of
drawing it: for the map families (linear, rotation, gaussian-linear, nonlinear, rotation-tanh)
x_0 = x0 and x_{t+1} = f(x_t); for the periodic families x0 is the first point c_0 of the
cycle (x_t = c_{t mod P}, the other P - 1 points drawn). The random draws are the same with
and without x0 (the default start is drawn and discarded), so a seed gives the same maps f
(the same c_1..c_{P-1}) and the same noise either way.

Families (``TASKS``):

    linear             f(x) = A x, A Haar-orthogonal, x_0 on the unit sphere
    rotation           f(x) = A x, A = Q diag(rot(theta_i)) Q^T (real form of unitary)
    gaussian-linear    f(x) = A x, A = scale * G / sqrt(d), G standard Gaussian
    periodic           x_{t+P} = x_t, P points on the unit sphere
    periodic-gaussian  x_{t+P} = x_t, P points drawn N(0, I/d)
    nonlinear          f(x) = tanh(gain * W x), W ~ N(0, 1/d) (random tanh network)
    rotation-tanh      f(x) = u / |u|, u = tanh(gain * A x), A Haar-orthogonal
    unitary            f(x) = W x, W Haar-unitary, x_0 on the complex unit sphere (complex128;
                       ``COMPLEX_TASKS``: the linear kernel of ``ckd.predict`` only, SPEC §10)
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from .validation import MAX_INT, check_choice, check_dense, check_fits, check_int, check_number, check_size, complex_of

Map = Callable[[Tensor], Tensor]


@dataclass
class Task:
    """Sequences x (B, T, d) and their maps: ``f(z)`` maps (B, n, d) -> (B, n, d)."""

    name: str
    x: Tensor
    f: Map | None = None
    params: dict = field(default_factory=dict)


def _generator(seed: int | None) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(0 if seed is None else int(seed))
    return g


def sphere(batch: int, n: int, dim: int, g: torch.Generator, dtype=torch.float64) -> Tensor:
    """Uniform points on the unit sphere, (batch, n, dim)."""
    z = torch.randn(batch, n, dim, generator=g, dtype=dtype)
    return z / z.norm(dim=-1, keepdim=True)


def haar_orthogonal(batch: int, dim: int, g: torch.Generator, dtype=torch.float64) -> Tensor:
    """Haar-distributed orthogonal matrices (batch, dim, dim) (QR with sign fix)."""
    q, r = torch.linalg.qr(torch.randn(batch, dim, dim, generator=g, dtype=dtype))
    return q * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1))[:, None, :]


def complex_sphere(batch: int, n: int, dim: int, g: torch.Generator, dtype=torch.complex128) -> Tensor:
    """Uniform points on the complex unit sphere {z in C^dim : |z| = 1}, (batch, n, dim)."""
    z = torch.randn(batch, n, dim, generator=g, dtype=dtype)  # standard complex Gaussian: rotation invariant
    return z / z.norm(dim=-1, keepdim=True)


def haar_unitary(batch: int, dim: int, g: torch.Generator, dtype=torch.complex128) -> Tensor:
    """Haar-distributed unitary matrices (batch, dim, dim): QR of a complex Gaussian matrix, each
    column of Q multiplied by the phase r_ii / |r_ii| (without it Q is not Haar; Mezzadri 2007)."""
    q, r = torch.linalg.qr(torch.randn(batch, dim, dim, generator=g, dtype=dtype))
    d = torch.diagonal(r, dim1=-2, dim2=-1)
    return q * (d / d.abs())[:, None, :]


def rotation_blocks(batch: int, dim: int, g: torch.Generator, dtype=torch.float64) -> Tensor:
    """A = Q diag(rot(theta_1), ..., rot(theta_k), [1]) Q^T, theta uniform, Q Haar."""
    blocks = torch.zeros(batch, dim, dim, dtype=dtype)
    theta = 2 * math.pi * torch.rand(batch, dim // 2, generator=g, dtype=dtype)
    for i in range(dim // 2):
        c, s = torch.cos(theta[:, i]), torch.sin(theta[:, i])
        blocks[:, 2 * i, 2 * i], blocks[:, 2 * i, 2 * i + 1] = c, -s
        blocks[:, 2 * i + 1, 2 * i], blocks[:, 2 * i + 1, 2 * i + 1] = s, c
    if dim % 2:
        blocks[:, -1, -1] = 1.0
    q = haar_orthogonal(batch, dim, g, dtype)
    return q @ blocks @ q.transpose(-1, -2)


def start(x0, drawn: Tensor) -> Tensor:
    """The start x_0 (B, d) of a family: ``drawn`` (B, d), or ``x0`` when given, checked (one-line
    ``TypeError`` / ``ValueError``): a numeric array of shape (d,) (shared by every sequence) or
    (B, d), finite, real unless ``drawn`` is complex (the unitary family); returned in ``drawn``'s
    dtype (float64 or complex128), (B, d)."""
    if x0 is None:
        return drawn
    batch, dim = drawn.shape
    if isinstance(x0, Tensor):
        check_dense(x0, "x0")
    try:
        arr = torch.as_tensor(x0.detach().cpu() if isinstance(x0, Tensor) else np.asarray(x0))
    except Exception:  # ragged lists, strings and the like
        raise TypeError(f"x0 must be a numeric array, got {type(x0).__name__}") from None
    if arr.is_complex() and not drawn.is_complex():
        raise TypeError(f"x0 must be real, got dtype {str(arr.dtype).replace('torch.', '')}")
    if tuple(arr.shape) not in ((dim,), (batch, dim)):
        raise ValueError(f"x0 must have shape (d,) = ({dim},) or (batch, d) = ({batch}, {dim}), "
                         f"got {tuple(arr.shape)}")
    arr = arr.to(drawn.dtype)
    if not torch.isfinite(arr).all():
        raise ValueError("x0 contains NaN or inf")
    return arr.expand(batch, dim).clone()


def linear_map(A: Tensor) -> Map:
    """f(z) = A z per sequence, z (B, n, d)."""
    return lambda z: z @ A.transpose(-1, -2).to(z.dtype)


def iterate(f: Map, x0: Tensor, length: int, noise: float = 0.0, g: torch.Generator | None = None) -> Tensor:
    """x_{t+1} = f(x_t) + noise * eps_t from x0 (B, d); returns (B, length, d)."""
    xs = [x0]
    for _ in range(length - 1):
        nxt = f(xs[-1][:, None])[:, 0]
        if noise:
            nxt = nxt + noise * torch.randn(nxt.shape, generator=g, dtype=nxt.dtype)
        xs.append(nxt)
    return torch.stack(xs, dim=1)


def linear(batch: int, length: int, dim: int, *, kind: str = "orthogonal", scale: float = 1.0,
           noise: float = 0.0, seed: int | None = 0, dtype: torch.dtype = torch.float64, x0=None) -> Task:
    """x_{t+1} = A x_t with A ``orthogonal`` (Haar), ``rotation`` blocks, or ``gaussian``
    (scale * G / sqrt(d)); x_0 uniform on the unit sphere, or ``x0`` ((d,) or (B, d))."""
    g = _generator(seed)
    if kind == "orthogonal":
        A = haar_orthogonal(batch, dim, g)
    elif kind == "rotation":
        A = rotation_blocks(batch, dim, g)
    elif kind == "gaussian":
        A = scale * torch.randn(batch, dim, dim, generator=g, dtype=torch.float64) / math.sqrt(dim)
    else:
        raise ValueError(f"unknown linear kind {kind!r}; choose orthogonal, rotation or gaussian")
    f = linear_map(A)
    x = iterate(f, start(x0, sphere(batch, 1, dim, g)[:, 0]), length, noise, g)
    name = {"orthogonal": "linear", "rotation": "rotation", "gaussian": "gaussian-linear"}[kind]
    return Task(name, x.to(dtype), linear_map(A), {"A": A.to(dtype)})


def unitary(batch: int, length: int, dim: int, *, noise: float = 0.0, seed: int | None = 0,
            dtype: torch.dtype = torch.complex128, x0=None) -> Task:
    """x_{t+1} = W x_t, W Haar-unitary (``haar_unitary``), x_0 uniform on the complex unit sphere or
    ``x0`` ((d,) or (B, d), real or complex): the linear class of SPEC §1 in complex form (SPEC §10).
    Complex: ``dtype`` complex128 or complex64 (float64 / float32 name the precision); ``noise`` is
    complex Gaussian."""
    g = _generator(seed)
    W = haar_unitary(batch, dim, g)
    x = iterate(linear_map(W), start(x0, complex_sphere(batch, 1, dim, g)[:, 0]), length, noise, g)
    dtype = complex_of(dtype)
    return Task("unitary", x.to(dtype), linear_map(W), {"W": W.to(dtype)})


def cycle_map(points: Tensor) -> Map:
    """The cyclic map on P points (B, P, d): a query goes to the successor of its
    nearest cycle point (so f is defined everywhere and exact on the cycle)."""
    succ = torch.roll(points, -1, dims=1)

    def f(z: Tensor) -> Tensor:
        idx = torch.cdist(z, points.to(z.dtype)).argmin(-1)
        return torch.gather(succ.to(z.dtype), 1, idx[..., None].expand(*idx.shape, z.shape[-1]))

    return f


def periodic(batch: int, length: int, dim: int, *, period: int = 5, on: str = "sphere",
             noise: float = 0.0, seed: int | None = 0, dtype: torch.dtype = torch.float64, x0=None) -> Task:
    """x_t = c_{t mod P}: P points on the unit ``sphere`` or ``gaussian`` N(0, I/d); ``x0`` ((d,) or
    (B, d)), when given, is the first point c_0 (the other points are drawn as without it)."""
    if period < 1:
        raise ValueError(f"period must be >= 1, got {period}")
    g = _generator(seed)
    if on == "sphere":
        points = sphere(batch, period, dim, g)
    elif on == "gaussian":
        points = torch.randn(batch, period, dim, generator=g, dtype=torch.float64) / math.sqrt(dim)
    else:
        raise ValueError(f"unknown periodic support {on!r}; choose sphere or gaussian")
    points = torch.cat([start(x0, points[:, 0])[:, None], points[:, 1:]], dim=1)
    f = cycle_map(points)
    x = iterate(f, points[:, 0], length, noise, g)
    name = "periodic" if on == "sphere" else "periodic-gaussian"
    return Task(name, x.to(dtype), f, {"points": points.to(dtype), "period": period})


def nonlinear(batch: int, length: int, dim: int, *, kind: str = "tanh", gain: float = 2.0,
              noise: float = 0.0, seed: int | None = 0, dtype: torch.dtype = torch.float64, x0=None) -> Task:
    """``tanh``: f(x) = tanh(gain W x), W ~ N(0, 1/d) (a random tanh network, chaotic
    for gain > 1 and large d); ``rotation-tanh``: f(x) = u/|u|, u = tanh(gain A x),
    A Haar-orthogonal (a rotation followed by a pointwise nonlinearity, on the sphere).
    x_0 uniform on the unit sphere, or ``x0`` ((d,) or (B, d))."""
    g = _generator(seed)
    if kind == "tanh":
        W = torch.randn(batch, dim, dim, generator=g, dtype=torch.float64) / math.sqrt(dim)

        def f(z: Tensor) -> Tensor:
            return torch.tanh(gain * z @ W.transpose(-1, -2).to(z.dtype))

        name, params = "nonlinear", {"W": W.to(dtype), "gain": gain}
    elif kind == "rotation-tanh":
        A = haar_orthogonal(batch, dim, g)

        def f(z: Tensor) -> Tensor:
            u = torch.tanh(gain * z @ A.transpose(-1, -2).to(z.dtype))
            return u / u.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(z.dtype).tiny)

        name, params = "rotation-tanh", {"A": A.to(dtype), "gain": gain}
    else:
        raise ValueError(f"unknown nonlinear kind {kind!r}; choose tanh or rotation-tanh")
    x = iterate(f, start(x0, sphere(batch, 1, dim, g)[:, 0]), length, noise, g)
    return Task(name, x.to(dtype), f, params)


TASKS: dict[str, Callable[..., Task]] = {
    "linear": lambda *a, **k: linear(*a, kind="orthogonal", **k),
    "rotation": lambda *a, **k: linear(*a, kind="rotation", **k),
    "gaussian-linear": lambda *a, **k: linear(*a, kind="gaussian", **k),
    "periodic": lambda *a, **k: periodic(*a, on="sphere", **k),
    "periodic-gaussian": lambda *a, **k: periodic(*a, on="gaussian", **k),
    "nonlinear": lambda *a, **k: nonlinear(*a, kind="tanh", **k),
    "rotation-tanh": lambda *a, **k: nonlinear(*a, kind="rotation-tanh", **k),
    "unitary": unitary,
}
COMPLEX_TASKS = ("unitary",)  # complex sequences: the linear kernel of ckd.predict / descend / Streaming only


def task_bytes(name: str, batch: int, length: int, dim: int, period: int = 5) -> int:
    """Peak bytes of ``make_task`` (before it allocates): the sequences three times (the steps, their stack,
    the cast to ``dtype``) and the maps f, four (B, d, d) matrices (Gaussian draw, QR's two factors, the
    product) or the periodic families' P points and their distances; doubled for complex (``unitary``)."""
    item = 16 if name in COMPLEX_TASKS else 8
    maps = 2 * batch * period * dim if name.startswith("periodic") else 4 * batch * dim * dim
    return item * (3 * batch * length * dim + maps + batch * period)


def make_task(name: str, batch: int, length: int, dim: int, **options) -> Task:
    """Build a task family by name (see ``TASKS``); options go to the family.

    Sizes (batch, length, dim, period) must be integers >= 1, noise a finite number >= 0, the
    seed None or an integer in [-2^63, 2^63) (``ckd.validation``), ``x0`` (the start: module doc)
    None or a finite real (d,) or (batch, d) array: one clear error otherwise."""
    check_choice(name, "task", TASKS)
    batch, length, dim = (check_size(v, n) for v, n in ((batch, "batch"), (length, "length"), (dim, "dim")))
    if "period" in options:
        options["period"] = check_size(options["period"], "period")
    need = task_bytes(name, batch, length, dim, options.get("period", 5))
    if need > 2**28:  # (reading the free memory costs more than a small task)
        check_fits(need, f"task {name} of batch {batch}, length {length}, dim {dim}",
                   "use a smaller batch, length or dim")
    for key in ("noise", "scale", "gain"):
        if key in options:
            options[key] = check_number(options[key], key, minimum=0.0 if key == "noise" else None)
    if options.get("seed") is not None:
        options["seed"] = check_int(options["seed"], "seed", minimum=-MAX_INT - 1)
    return TASKS[name](batch, length, dim, **options)
