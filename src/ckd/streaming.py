"""Streaming next-token prediction with infinite-depth CKD, O(t d) per token (SPEC §2);
O(d^2) per token for the linear kernel (SPEC §9).

Depth inf solves (R + lambda I) alpha = y on rows 1..T-1 and predicts p = P alpha. R is lower
triangular and row t of R and P only involve x_0..x_t, so the solve is forward substitution:
token t adds one coefficient and one prediction,

    alpha_t = (x_t - sum_{s<t} R[t, s] alpha_s) / (R[t, t] + lambda),  R[t, s] = k(x_{t-1}, x_{s-1})
    p_t     = sum_{s<=t} P[t, s] alpha_s,                               P[t, s] = k(x_t, x_{s-1})

(for lambda = 0: one more step of the forward Kaczmarz sweep). Row t+1 of R is row t of P plus
k(x_t, x_t), so each token needs one kernel row k(x_t, x_0..x_t): O(t d) time, and the state is
the keys and the alphas (amortised doubling buffers). The result equals the rows of
``ckd.predict(x, kernel, depth="inf", ...)`` (``tests/test_streaming.py``).

``linear``: the same solve is the normalised delta rule (``ckd.linear_time``), with a d x d state
W_t = sum_{s<=t} alpha_s x_{s-1}^T instead of the keys and alphas:

    alpha_t = (x_t - W_{t-1} x_{t-1}) / (|x_{t-1}|^2 + lambda),  W_t = W_{t-1} + alpha_t x_{t-1}^T,
    p_t = W_t x_t

so a push costs O(d^2) whatever t is (``docs/performance.md``). Complex tokens (SPEC §10): with
``dtype=torch.complex128`` (or complex64), k(a, b) = b^H a and W_t = sum_{s<=t} alpha_s x_{s-1}^H;
a complex dtype needs the linear kernel. A complex token pushed into a real linear Streaming turns it
complex in its precision (float64 -> complex128, as ``ckd.predict`` computes a complex x), exactly;
into another kernel's Streaming it is refused (``TypeError``). Its imaginary part is never dropped.

Per-row steps (SPEC §10): ``push(x_t, step=eta_t)`` gives row t the step eta_t. Depth inf is then
p = D P (R + lambda I)^{-1} D^{-1} y, D = diag(eta): the solve above with right-hand side
x_t / eta_t and the prediction p_t scaled by eta_t. A push without ``step`` uses eta_t = 1; since a
constant step cancels at depth inf, a stream that never passes one is plain depth-inf CKD, and
one that always passes the same number gives the same predictions (up to rounding). Only the
ratios between rows matter. eta_t must be > 0 for t >= 1 (as on the batch paths); eta_0 is unused.
No convergence warning here (the batch paths warn when eta_t (R[t,t] + lambda) leaves (0, 2)).
The rows equal ``ckd.predict(x, depth="inf", step=eta)``.

``softmax`` normalises each row of R and P over s = 1..t, as the batch does. ``exp`` weights can
overflow: as in ``ckd.kernels``, once the largest log-weight seen exceeds half the log of the
largest float, weights are stored divided by exp(M), M the largest log-weight so far, and the
alphas multiplied by exp(M) (p = P alpha is unchanged); when M grows the alphas are rescaled.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .descent.steps import zero_step_error
from .kernels import check_kernel, gaussian_scores_
from .threads import threads_for
from .validation import (
    as_dtype,
    check_complex,
    check_dense,
    check_fits,
    check_number,
    check_size,
    check_squares,
    complex_of,
)


class Streaming:
    """Infinite-depth CKD fed one token at a time.

    >>> s = Streaming("exp", beta=1.0, dim=3)
    >>> p = s.push(x0)   # zeros: nothing to predict from yet
    >>> p = s.push(x1)   # prediction of x_2 = row 1 of ckd.predict(x, depth="inf")

    ``push`` takes a (d,) array or tensor and returns the prediction of the next token in
    the same kind (numpy or tensor, in ``dtype``); ``push(x_t, step=eta_t)`` for per-row steps
    (module doc). ``reset`` forgets the sequence.
    """

    def __init__(self, kernel: str = "exp", *, beta: float = 1.0, sigma: float = 1.0, ridge: float = 0.0,
                 dim: int, dtype: Any = torch.float64, device: Any = None, capacity: int = 256):
        self.kernel = check_kernel(kernel)
        self.beta = check_number(beta, "beta")
        self.sigma = check_number(sigma, "sigma", minimum=0.0, strict=True)
        self.ridge = check_number(ridge, "ridge", minimum=0.0)
        self.dim = check_size(dim, "dim")
        self.dtype = as_dtype(dtype, complex_ok=True)
        check_complex(torch.empty(0, dtype=self.dtype), self.kernel)
        self.device = torch.device("cpu") if device is None else torch.device(device)
        self._capacity0 = check_size(capacity, "capacity")
        self._check_fits(self._capacity0)
        self._threshold = math.log(torch.finfo(self.dtype).max) / 2
        self.reset()

    def _check_fits(self, capacity: int) -> None:
        """Refuse (one line, before allocating) a state that cannot fit: the linear kernel's d x d W (and two
        tokens), or the keys and alphas of ``capacity`` tokens (``capacity`` x d each) of the other kernels."""
        item = torch.empty(0, dtype=complex_of(self.dtype) if self.kernel == "linear" else self.dtype).element_size()
        need = item * (self.dim * self.dim + 4 * self.dim if self.kernel == "linear" else (2 * self.dim + 1) * capacity)
        if need > 2**26:  # (reading the free memory costs more than a small state)
            check_fits(need, f"Streaming({self.kernel!r}, dim={self.dim}) holding {capacity} tokens",
                       "use a smaller dim" + ("" if self.kernel == "linear" else " or fewer tokens (reset)"),
                       self.device)

    def reset(self) -> None:
        """Forget every token pushed so far."""
        self.t = 0  # number of tokens pushed
        cap = 0 if self.kernel == "linear" else self._capacity0  # the linear kernel keeps W only (module doc)
        self._keys = torch.zeros(cap, self.dim, dtype=self.dtype, device=self.device)
        self._alpha = torch.zeros(cap, self.dim, dtype=self.dtype, device=self.device)
        self._sqnorm = torch.zeros(cap, dtype=self.dtype, device=self.device)  # |x_s|^2 (gaussian)
        self._prev = None  # scores of x_{t-1} against x_0..x_{t-1}: row t of R, in log space
        self._prev_w = None  # its weights (normalised for softmax), computed when it was the P row
        self._shift = 0.0  # exp kernel: weights stored divided by exp(shift), alphas times exp(shift)
        d = self.dim if self.kernel == "linear" else 0
        self._W = torch.zeros(d, d, dtype=self.dtype, device=self.device)  # linear: the state
        self._last = None  # linear: x_{t-1}

    def __len__(self) -> int:
        return self.t

    def push(self, x_t: Any, step: float | None = None) -> Any:
        """Add token x_t (d,); return the prediction of x_{t+1} (zeros for the first token).
        ``step``: this row's eta_t (SPEC §10, module doc): a number > 0 (any finite number for the
        first token, whose step is unused); None: 1."""
        x = self._as_token(x_t)
        t = self.t
        eta = self._check_step(step, t)
        with threads_for(4 * (t + 1) * x.numel()):  # ckd.threads: a few products of length t per push
            if self.kernel == "linear":
                pred = self._push_linear(x, eta)
            else:
                if t + 1 > self._keys.shape[0]:
                    self._grow()
                self._keys[t] = x  # overwritten by the next push if this one raises
                row = self._scores(x, t)  # scores of x_t vs x_0..x_t: one matrix-vector product
                pred = torch.zeros_like(x) if t == 0 else self._advance(x, row, t, eta)
                self._prev = row
        self.t = t + 1
        return pred if isinstance(x_t, Tensor) else pred.cpu().numpy()

    def _check_step(self, step: Any, t: int) -> float:
        """eta_t of a push: 1 when None; a finite number, > 0 from the second token on."""
        if step is None:
            return 1.0
        eta = check_number(step, "step")
        if t > 0 and eta == 0:
            raise zero_step_error(t)  # as the batch paths
        if t > 0 and eta < 0:
            raise ValueError(f"step must be >= 0 on every row t >= 1, got eta_{t} = {eta:g}")
        return eta

    def _push_linear(self, x: Tensor, eta: float = 1.0) -> Tensor:
        """One step of the delta rule (module doc): O(d^2); the state is unchanged if it raises.
        With a per-row step eta_t the right-hand side is x_t / eta_t and the prediction eta_t W_t x_t."""
        rhs = x if eta == 1.0 else x / eta
        self._check_finite_rhs(rhs)
        prev, self._last = self._last, x.clone()
        if prev is None:
            return torch.zeros_like(x)
        if not bool(prev.any()) and self.ridge == 0:  # a zero token x_{t-1}: coefficient 0 (as the batch paths)
            return self._W @ x if eta == 1.0 else (self._W @ x).mul_(eta)
        m = float(prev.abs().amax()) or 1.0  # |x_{t-1}|^2 + lambda as m (m |s|^2 + lambda / m), s = x_{t-1} / m:
        s = prev / m  # no underflow for tiny tokens, no overflow for huge ones
        if self.dtype.is_complex:  # |s|^2 = s^H s, and W += alpha_t x_{t-1}^H (SPEC §10)
            sq, key = float(torch.vdot(s, s).real), prev.conj()
        else:  # (no extra op on the real hot path)
            sq, key = float(s @ s), prev
        alpha = torch.addmv(rhs, self._W, prev, alpha=-1.0).div_(m).div_(m * sq + self.ridge / m)
        self._W.addr_(alpha, key)
        return self._W @ x if eta == 1.0 else (self._W @ x).mul_(eta)

    @staticmethod
    def _check_finite_rhs(rhs: Tensor) -> None:
        if not bool(torch.isfinite(rhs).all()):
            raise ValueError("a per-row step this small overflows y_t / eta_t at depth inf; use larger steps")

    def _scores(self, x: Tensor, t: int) -> Tensor:
        """``ckd.kernels.scores`` of x_t against the keys x_0..x_t, with the keys' squared norms
        cached (gaussian): the same formula as the batch, O(t d)."""
        keys = self._keys[:t + 1]
        if self.kernel == "linear":
            return keys @ x
        if self.kernel != "gaussian":
            return torch.mv(keys, x).mul_(self.beta)
        sq = x.square().sum()
        self._sqnorm[t] = sq
        # |x_t - x_s|^2 = (|x_s|^2 + |x_t|^2) - 2 x_s.x_t, clamped at 0: the batch's formula
        row = torch.addmv(self._sqnorm[:t + 1] + sq, keys, x, alpha=-2.0).clamp_min_(0.0)
        gaussian_scores_(row, self.sigma)
        row[t] = 0.0  # k(x_t, x_t) = 1 exactly, as in the batch
        return row

    def _advance(self, x: Tensor, row: Tensor, t: int, eta: float = 1.0) -> Tensor:
        """Solve for alpha_t (row t of R is ``self._prev``) and return p_t (row t of P is row[:t]);
        a per-row step eta_t: right-hand side x_t / eta_t, prediction times eta_t."""
        rhs = x if eta == 1.0 else x / eta
        self._check_finite_rhs(rhs)
        alpha = self._alpha[1:t]  # alpha_1..alpha_{t-1}
        shift = self._shift
        if self.kernel == "exp":
            top = max(float(self._prev.max()), float(row[:t].max()))
            if top > self._threshold and top > shift:
                shift = top
        # the weights of this row serve as P row t now and as R row t+1 next (one exp per token;
        # softmax normalises the two rows over different keys, so it needs both)
        weights = self._weights(row, shift)  # (t+1,)
        reuse = self._prev_w is not None and shift == self._shift  # (none after the first token)
        r_w = self._prev_w if reuse else self._weights(self._prev, shift)
        p_w = self._weights(row[:t], shift) if self.kernel == "softmax" else weights[:t]
        diag = float(r_w[t - 1]) + self.ridge * math.exp(-shift)
        if diag == 0 and self.kernel == "linear":  # x_{t-1} = 0: its columns are 0, alpha_t = 0 (as the batch)
            diag = math.inf
        if not diag != 0:
            raise ValueError(
                "infinite depth needs R[t,t] + ridge > 0 for every t (a zero token with the linear "
                "kernel, or an exp weight lost to underflow); use ridge > 0"
            )
        if shift != self._shift:  # alphas are kept times exp(shift): rescale them (in steps: e^700 max)
            alpha = alpha.clone()
            steps = math.ceil((shift - self._shift) / 700.0)
            for _ in range(steps):
                alpha.mul_(math.exp((shift - self._shift) / steps))
            if not bool(torch.isfinite(alpha).all()):
                raise ValueError("exp weights span more than the float range; lower beta or rescale x")
            self._alpha[1:t] = alpha
            self._shift = shift
        self._alpha[t] = torch.addmv(rhs, alpha.T, r_w[:t - 1], alpha=-1.0).div_(diag)
        self._prev_w = weights
        pred = p_w @ self._alpha[1:t + 1]
        return pred if eta == 1.0 else pred.mul_(eta)

    def _weights(self, s: Tensor, shift: float) -> Tensor:
        """Kernel weights from scores s (one row): k = s (linear), exp(s - shift) (exp),
        exp(s) (gaussian), or the softmax of s (softmax)."""
        if self.kernel == "linear":
            return s
        if self.kernel == "softmax":
            return torch.softmax(s, 0)
        return torch.exp(s - shift) if shift else torch.exp(s)

    def _grow(self) -> None:
        """Double the key and alpha buffers (amortised O(1) per token); refused (one line) if that cannot fit."""
        cap = 2 * self._keys.shape[0]
        self._check_fits(cap + self._keys.shape[0])  # the old buffers live until the copy is done
        for name in ("_keys", "_alpha", "_sqnorm"):
            old = getattr(self, name)
            new = old.new_zeros(cap, *old.shape[1:])
            new[:old.shape[0]] = old
            setattr(self, name, new)

    def _token_dtype(self, is_complex: bool, dtype: Any) -> torch.dtype:
        """The dtype a token is computed in. A complex token into a real Streaming: with the linear kernel
        (SPEC §10) the stream turns complex in its precision (as ``ckd.predict`` computes a complex x:
        float64 -> complex128), exactly (its real state is the same numbers); any other kernel is defined
        for real x only (``TypeError``, the state kept). Its imaginary part is never dropped."""
        if not is_complex or self.dtype.is_complex:
            return self.dtype
        if self.kernel != "linear":
            dtype = str(dtype).replace("torch.", "")
            raise TypeError(f"x_t is complex ({dtype}) but the {self.kernel} kernel is defined for real x only; "
                            "complex tokens need the linear kernel (k(a, b) = b^H a)")
        return complex_of(self.dtype)

    def _as_token(self, x_t: Any) -> Tensor:
        if isinstance(x_t, Tensor):
            check_dense(x_t, "x_t")
            dtype = self._token_dtype(x_t.is_complex(), x_t.dtype)
            x = x_t.detach().to(device=self.device, dtype=dtype)
        else:
            try:
                a = np.asarray(x_t)
                a = a.astype(np.complex128 if np.iscomplexobj(a) else np.float64, copy=False)
            except (TypeError, ValueError) as err:
                raise TypeError(f"x_t must be a numeric array: {str(err).splitlines()[0]}") from None
            dtype = self._token_dtype(np.iscomplexobj(a), a.dtype)
            x = torch.as_tensor(a, dtype=dtype, device=self.device)
        if x.shape != (self.dim,):
            raise ValueError(f"x_t must have shape ({self.dim},), got {tuple(x.shape)}")
        # numpy's check on a CPU token costs ~1 us, torch's ~25 us (op dispatch): this is the hot path
        if x.device.type == "cpu":
            a = x.numpy()
            finite, big = np.isfinite(a).all(), float(np.abs(a).max())
        else:
            finite, big = torch.isfinite(x).all(), float(x.abs().max())
        if not bool(finite):
            raise ValueError("x_t contains NaN or inf")
        if big * big * self.dim >= torch.finfo(dtype).max / 4:  # rare: the batch's rule, ckd.validation
            check_squares(x[None], "x_t")
        if dtype != self.dtype:  # a valid complex token: the linear state turns complex (exact)
            self.dtype = dtype
            self._W = self._W.to(dtype)
            self._last = None if self._last is None else self._last.to(dtype)
        return x
