"""Input validation for every entry point (``ckd.predict``, ``Streaming``, ``forecast``, training,
evaluation, baselines, the CLI): one module, so that a rule is fixed once and every face of the
library rejects the same input with the same one-line message.

Every check raises ``TypeError`` (wrong kind of value) or ``ValueError`` (right kind, bad value)
with a message that names the argument and the value; the CLI prints it as
``ckd: error: <message>`` and exits 2 (``docs/guarantees.md``). This module imports nothing
from the rest of ``ckd`` but ``ckd.names`` (the torch-free names the CLI parses): it sits at the
bottom of the import graph.

Rules fixed here:

- arrays (``as_batch``): real numeric (complex only where the caller allows it: the linear
  kernel, SPEC §10), dense, with data (no meta tensor), rank 2 or 3, non-empty, finite, and
  every squared norm |x_t|^2 finite in the working dtype ("input too large; rescale it": every
  kernel needs x.x);
- numbers (``check_number``): a real finite number, not a string or a bool, with an optional bound;
- steps (``parse_step``): None, a number >= 0, or a per-row vector of length T (SPEC §10):
  real numeric, finite, >= 0 on rows t >= 1 (eta_0 is unused: any finite value);
- integers (``check_int``, ``check_integer``; ``integer_value`` tells one apart): an integer (or an
  integral float; NumPy and torch scalars too), not a bool, within bounds;
- tensors (``check_dense``): values that can be read (no meta, quantized, sparse or nested tensor);
- sizes (``check_size``): an integer >= 1 (batch, length, dim, ...);
- memory budgets (``check_memory_budget``): None or a finite number of bytes > 0;
- choices (``check_choice``, ``check_kernel``), depth (``parse_depth``), dtype (``as_dtype``);
- complex sequences (``check_complex``): the linear kernel only (k(a, b) = b^H a, SPEC §10); a
  complex x is computed in the complex dtype of the requested precision (``complex_of``:
  float64 -> complex128, float32 -> complex64), never with its imaginary part dropped.

``memory`` estimates: ``available_memory(device)`` (bytes free on that device, or None when it
cannot be told) and ``check_fits(need, what, advice)`` refuse, before allocating, work that cannot
fit, with one line that says how much it needs and what to do.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .names import (  # noqa: F401 - re-exported: other modules import these from ckd.validation
    BACKENDS,
    DTYPE_NAMES,
    KERNELS,
    MAX_INT,
    TOKENS,
    parse_float,
)

PRETRAINED = "pretrained:"  # backend "pretrained:NAME": a model of ckd.pretrained
CHECKPOINT = "checkpoint:"  # backend "checkpoint:PATH": the model of a ckd train checkpoint
DTYPES = dict(zip(DTYPE_NAMES, (torch.float64, torch.float32)))
COMPLEX_DTYPES = {"complex128": torch.complex128, "complex64": torch.complex64}  # the linear kernel only


def check_choice(value: Any, name: str, choices: Iterable[str]) -> str:
    """``value`` if it is one of ``choices`` (strings), else a one-line ``ValueError``."""
    choices = tuple(choices)
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"unknown {name} {value!r}; choose one of {', '.join(choices)}")
    return value


def check_kernel(kernel: Any) -> str:
    """``kernel`` if it is one of ``KERNELS``, else a clear ``ValueError``."""
    return check_choice(kernel, "kernel", KERNELS)


def as_dtype(dtype: Any, *, complex_ok: bool = False) -> torch.dtype:
    """torch.float64/float32 or their names; also complex128/complex64 when ``complex_ok``."""
    known = {**DTYPES, **COMPLEX_DTYPES} if complex_ok else DTYPES
    if isinstance(dtype, str) and dtype in known:
        return known[dtype]
    if isinstance(dtype, torch.dtype) and dtype in known.values():
        return dtype
    names = "float64, float32, complex128 or complex64" if complex_ok else "float64 or float32"
    raise ValueError(f"dtype must be {names}, got {dtype!r}")


def complex_of(dtype: torch.dtype) -> torch.dtype:
    """The complex dtype with the precision of ``dtype``: float64 -> complex128, float32 -> complex64."""
    return dtype if dtype.is_complex else (torch.complex128 if dtype == torch.float64 else torch.complex64)


def check_complex(x: Tensor, kernel: str) -> None:
    """Complex x runs with the linear kernel only (k(a, b) = b^H a, SPEC §10): one ``TypeError`` otherwise."""
    if x.is_complex() and kernel != "linear":
        raise TypeError(f"complex x needs the linear kernel (k(a, b) = b^H a); the {kernel} kernel is defined "
                         "for real x only")


def check_number(value: Any, name: str, *, minimum: float | None = None, strict: bool = False,
                 maximum: float | None = None) -> float:
    """A finite real number (>= minimum, or > minimum if strict; <= maximum). Strings, bools
    and complex numbers are refused (``TypeError``): ``"1e9"`` is text, not a number."""
    if isinstance(value, (str, bytes, bool, np.bool_)) or value is None:
        raise TypeError(f"{name} must be a number, got {value!r}")
    if isinstance(value, Tensor) and value.numel() != 1:
        raise TypeError(f"{name} must be a number, got a tensor of shape {tuple(value.shape)}")
    if (isinstance(value, (complex, np.complexfloating)) or (isinstance(value, Tensor) and value.is_complex())
            or (isinstance(value, np.ndarray) and value.dtype.kind == "c")):  # float() would drop the imaginary part
        raise TypeError(f"{name} must be a real number, got {value!r}")
    if isinstance(value, Tensor) and (value.dtype == torch.bool or value.is_meta or value.is_quantized):
        raise TypeError(f"{name} must be a number, got {value!r}")
    try:
        v = float(value)
    except (TypeError, ValueError, RuntimeError):
        raise TypeError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(v):
        raise ValueError(f"{name} must be finite, got {value!r}")
    if minimum is not None and (v < minimum or (strict and v == minimum)):
        raise ValueError(f"{name} must be {'>' if strict else '>='} {minimum:g}, got {value!r}")
    if maximum is not None and v > maximum:
        raise ValueError(f"{name} must be <= {maximum:g}, got {value!r}")
    return v


def torch_scalar(value: Any) -> Any:
    """A 0-d real, non-bool torch tensor as its Python number (int or float: a torch integer scalar is an
    integer); anything else unchanged (bool, complex, meta and quantized tensors are refused by the caller)."""
    if (isinstance(value, Tensor) and value.ndim == 0 and not (value.is_complex() or value.is_meta
                                                               or value.is_quantized or value.dtype == torch.bool)):
        return value.item()
    return value


def check_int(value: Any, name: str, *, minimum: int | None = None, maximum: int | None = MAX_INT) -> int:
    """An integer (an integral float such as 3.0 is accepted; NumPy and torch scalars too) within
    [minimum, maximum]."""
    value = torch_scalar(value)
    v = integer_value(value, floats=True)
    if v is None:  # a real number that is not integral is a wrong value; anything else a wrong type
        raise (ValueError if isinstance(value, (float, np.floating)) else TypeError)(
            f"{name} must be an integer, got {value!r}")
    if minimum is not None and v < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    if maximum is not None and v > maximum:
        raise ValueError(f"{name} must be <= {maximum}, got {value!r}")
    return v


def integer_value(value: Any, *, floats: bool = False) -> int | None:
    """``value`` as a Python int when it is an integer (a Python or NumPy integer, a 0-d torch integer
    tensor; with ``floats``, an integral float of those kinds too), else None; a bool is not one."""
    value = torch_scalar(value)
    if isinstance(value, (bool, np.bool_, Tensor)):
        return None
    if isinstance(value, (int, np.integer)):
        return int(value)
    if floats and isinstance(value, (float, np.floating)) and math.isfinite(value) and float(value).is_integer():
        return int(value)
    return None


def check_integer(value: Any, name: str, minimum: int, maximum: int = MAX_INT, rule: str | None = None) -> int:
    """``check_int`` with one message for every value it refuses as a ``ValueError`` (out of range, not
    integral): '<name> must be an integer <rule>, got <value>' (rule: '>= minimum' or 'in minimum .. maximum')."""
    rule = rule or (f">= {minimum}" if maximum == MAX_INT else f"in {minimum} .. {maximum}")
    try:
        return check_int(value, name, minimum=minimum, maximum=maximum)
    except ValueError:
        raise ValueError(f"{name} must be an integer {rule}, got {value!r}") from None


def check_size(value: Any, name: str, *, maximum: int | None = MAX_INT) -> int:
    """A size: an integer >= 1 (batch, length, dim, period, ...)."""
    return check_int(value, name, minimum=1, maximum=maximum)


def check_memory_budget(value: Any) -> float | None:
    """None (the default budget) or a finite number of bytes > 0."""
    if value is None:
        return None
    return check_number(value, "memory_budget", minimum=0.0, strict=True)


def parse_depth(depth: Any) -> int | str:
    """An int >= 0, or "inf" (also accepts math.inf and the string "inf")."""
    if isinstance(depth, str):
        if depth.strip().lower() in ("inf", "infinity", "+inf"):
            return "inf"
        try:
            depth = int(depth)
        except ValueError:
            raise ValueError(f"depth must be an integer >= 0 or 'inf', got {depth!r}") from None
    bad = ValueError(f"depth must be an integer >= 0 or 'inf', got {depth!r}")
    depth = torch_scalar(depth)
    if isinstance(depth, (bool, np.bool_)):
        raise bad
    if isinstance(depth, (float, np.floating)):
        if math.isinf(depth) and depth > 0:
            return "inf"
        if not math.isfinite(depth) or not float(depth).is_integer():
            raise bad
        depth = int(depth)
    if not isinstance(depth, (int, np.integer)):
        raise bad
    if depth < 0:
        raise ValueError(f"depth must be >= 0, got {depth}")
    if depth > MAX_INT:
        raise ValueError(f"depth must be <= {MAX_INT}, got {depth}")
    return int(depth)


def check_options(kernel: Any, beta: Any, sigma: Any, depth: Any, step: Any, ridge: Any,
                  backend: Any, tokens: Any, sweeps: Any = 1) -> dict:
    """Validate every option of ``ckd.predict``; return them normalised."""
    check_kernel(kernel)
    sweeps = check_int(sweeps, "sweeps", minimum=1)
    if sweeps != 1 and parse_depth(depth) != "inf":
        raise ValueError("sweeps > 1 need depth 'inf' (the descent backend)")
    if sweeps != 1 and kernel == "softmax":
        raise ValueError("sweeps > 1 need a symmetric kernel: linear, exp or gaussian, not softmax")
    if not (isinstance(backend, str) and any(backend.startswith(p) and backend[len(p):].strip()
                                             for p in (PRETRAINED, CHECKPOINT))):  # a name, not blanks
        check_choice(backend, "backend", BACKENDS)
    check_choice(tokens, "tokens", TOKENS)
    depth = parse_depth(depth)
    if backend == "descent" and tokens != "augmented":
        raise ValueError("tokens='raw' applies to the transformer backend only")
    if backend == "transformer" and depth == "inf":
        raise ValueError("depth 'inf' needs the descent backend: a transformer has finitely many layers")
    return dict(
        kernel=kernel,
        beta=check_number(beta, "beta"),
        sigma=check_number(sigma, "sigma", minimum=0.0, strict=True),
        depth=depth,
        step=parse_step(step),
        ridge=check_number(ridge, "ridge", minimum=0.0),
        sweeps=sweeps,
    )


def parse_step(step: Any, length: int | None = None) -> float | Tensor | None:
    """A step of causal kernel descent: None (the default step), a number >= 0 (the constant step), or a
    per-row vector eta_0..eta_{T-1} (SPEC §10; row t uses eta_t, eta_0 is unused) given as a list, tuple,
    NumPy array or tensor of rank 1. A vector is returned as a float64 tensor (on its device, values
    unchanged); ``length``: the number of rows T it must have. Refused with one line: text, bools,
    complex, other ranks, a wrong length, NaN / inf, a negative eta_t for t >= 1."""
    if step is None:
        return None
    if isinstance(step, Tensor):
        check_dense(step, "step")
        if step.ndim == 0:
            return check_number(step, "step", minimum=0.0)
        if step.is_complex() or step.dtype == torch.bool:
            raise TypeError(f"step must be a real numeric vector, got dtype {step.dtype}")
        v = step.detach().to(torch.float64)
    else:
        try:
            scalar = isinstance(step, (str, bytes)) or np.ndim(step) == 0
        except ValueError:  # a ragged list: reported below
            scalar = False
        if scalar:  # numbers, NumPy scalars; text and bools are refused there
            return check_number(step, "step", minimum=0.0)
        try:
            arr = np.asarray(step)
        except Exception as err:  # ragged lists and the like
            raise TypeError(f"step must be a number or a numeric vector: {str(err).splitlines()[0]}") from None
        if arr.dtype == object or arr.dtype.kind not in "iuf":
            raise TypeError(f"step must be a number or a real numeric vector, got dtype {arr.dtype}")
        v = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float64))
    if v.ndim != 1:
        raise ValueError(f"step must be a number or a vector (eta_0..eta_(T-1)), got shape {tuple(v.shape)}")
    if length is not None and v.shape[0] != length:
        raise ValueError(f"step has {v.shape[0]} values but x has T = {length} rows; a per-row step needs one "
                         "value per row (eta_0 unused)")
    bad = ~torch.isfinite(v)
    if bool(bad.any()):
        t = int(bad.nonzero()[0, 0])
        raise ValueError(f"step must be finite, got eta_{t} = {float(v[t])}")
    negative = v[1:] < 0
    if bool(negative.any()):
        t = int(negative.nonzero()[0, 0]) + 1
        raise ValueError(f"step must be >= 0 on every row t >= 1, got eta_{t} = {float(v[t]):g}")
    return v


def check_dense(t: Tensor, name: str = "x") -> None:
    """Refuse (one-line ``TypeError``) a tensor whose values cannot be read as numbers: meta (a shape, no
    values), quantized (integers with a scale: dequantize it first), sparse or other layouts, nested."""
    if t.is_meta:
        raise TypeError(f"{name} is a meta tensor (it has a shape but no values)")
    if t.is_quantized:
        raise TypeError(f"{name} is a quantized tensor ({str(t.dtype).replace('torch.', '')}); call .dequantize() "
                        "first")
    if t.layout != torch.strided:
        raise TypeError(f"{name} must be a dense tensor, got layout {t.layout}; call .to_dense() first")
    if getattr(t, "is_nested", False):
        raise TypeError(f"{name} is a nested tensor; pass a dense (B, T, d) tensor")


def as_batch(x: Any, dtype: torch.dtype, name: str = "x", *, allow_complex: bool = False,
             squares: bool = True) -> tuple[Tensor, bool]:
    """Check x is a finite, non-empty (T, d) or (B, T, d) real array; return (B, T, d) as a
    tensor of ``dtype`` (on x's device) and whether x had no batch axis.

    Refused: ragged or non-numeric data, complex (unless ``allow_complex``), sparse and meta
    tensors (no values), other ranks, empty arrays, NaN / inf, and rows whose squared norm
    |x_t|^2 overflows ``dtype`` (every kernel computes x.x; rescale such data first; ``squares=False``
    leaves that check to a caller whose method squares nothing, e.g. a rollout by the last value).
    ``allow_complex``: a complex x, or a complex ``dtype``, gives ``complex_of(dtype)`` (the
    imaginary part is kept, never dropped)."""
    if isinstance(x, Tensor):
        check_dense(x, name)
        t = x.detach()
    else:
        try:
            arr = np.asarray(x)
        except Exception as err:  # ragged lists and the like
            raise TypeError(f"{name} must be a numeric array: {str(err).splitlines()[0]}") from None
        if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
            raise TypeError(f"{name} must be a numeric array, got dtype {arr.dtype}")
        if np.iscomplexobj(arr) and not allow_complex:
            raise TypeError(f"{name} must be real, got {arr.dtype}")
        wide = (arr.dtype.kind == "f" and arr.dtype.itemsize > 8) or (arr.dtype.kind == "c" and arr.dtype.itemsize > 16)
        if not arr.dtype.isnative or wide:  # big-endian or extended precision: numpy converts, torch cannot
            arr = arr.astype(np.complex128 if arr.dtype.kind == "c" else np.float64)
        t = torch.from_numpy(np.ascontiguousarray(arr))
    if t.is_complex() and not allow_complex:
        raise TypeError(f"{name} must be real, got {t.dtype}")
    if t.is_complex() or dtype.is_complex:
        dtype = complex_of(dtype)
    if t.ndim not in (2, 3):
        raise ValueError(f"{name} must have shape (T, d) or (B, T, d), got shape {tuple(t.shape)}")
    if t.numel() == 0:
        raise ValueError(f"{name} is empty (shape {tuple(t.shape)})")
    t = t.to(dtype)
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} contains NaN or inf")
    if squares:
        check_squares(t, name)
    unbatched = t.ndim == 2
    return (t[None] if unbatched else t), unbatched


def check_squares(t: Tensor, name: str = "x") -> None:
    """Refuse (``ValueError``) a finite ``t`` (..., d) whose squared row norms |x_t|^2 overflow its dtype."""
    big = float(t.abs().amax())
    if big * big * t.shape[-1] < torch.finfo(t.dtype).max / 4:  # the common case: no row can overflow
        return
    if not bool(torch.isfinite((t.abs() if t.is_complex() else t).square().sum(-1)).all()):
        dtype = str(t.dtype).replace("torch.", "")
        raise ValueError(f"{name}: input too large (|x_t|^2 overflows {dtype}; largest |value| {big:.3g}); "
                         "rescale it")


def available_memory(device: Any = "cpu") -> int | None:
    """Bytes that can be allocated on ``device`` now (MemAvailable on Linux, free GPU memory
    on CUDA), or None when it cannot be told."""
    device = torch.device(device)
    if device.type == "cuda":
        try:
            return int(torch.cuda.mem_get_info(device)[0])
        except Exception:
            return None
    if device.type != "cpu":
        return None
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


def format_bytes(n: float) -> str:
    """1.5 GB, 320 MB, 12 kB (powers of 1000)."""
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return f"{int(n)} B"


def check_fits(need: float, what: str, advice: str, device: Any = "cpu", available: int | None = None) -> None:
    """Refuse (``MemoryError`` subclass ``ValueError``: one line) work that needs more than the
    memory available on ``device``: '<what> needs about N GB but M GB are available; <advice>'."""
    free = available_memory(device) if available is None else available
    if free is not None and need > free:
        raise NotEnoughMemory(f"{what} needs about {format_bytes(need)} but {format_bytes(free)} "
                              f"are available; {advice}")


class NotEnoughMemory(ValueError):
    """Work refused before allocating: the estimate exceeds the memory available."""
