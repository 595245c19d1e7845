"""Chunked (parallel-within-chunk) forms of the recurrences of ``naive`` (SPEC §9).

Same notation as ``ckd.linear_time.naive``: pairs i = 0..n-1 with keys k_i, residual queries u_i,
prediction queries q_i (all (B, n, D)) and values y_i (B, n, dv). Tokens are cut into chunks of C
consecutive pairs; within a chunk everything is a C x C matrix product, across chunks only a
D x dv state is carried (layout of Yang et al. 2024, flash-linear-attention's ``fla/ops/delta_rule``).

Causal linear attention (``causal_linear_attention``; Katharopoulos et al. 2020). For a chunk c
with state S_c = sum_{j before c} k_j r_j^T (D x dv), queries Q_c, keys K_c, values V_c (C rows):

    O_c = tril(Q_c K_c^T) V_c + Q_c S_c,        S_{c+1} = S_c + K_c^T V_c

The chunk states are an exclusive prefix sum over chunks, so a whole group of chunks is a few
batched products and one cumsum: O(n C (D + dv) + n D dv) time, no sequential loop. A CKD layer
needs P r and R r: both use the same keys, values and prefix sum, with queries q and u.

Delta rule (``delta_rule_chunked``; the WY / UT transform of Yang et al., *Parallelizing Linear
Transformers with the Delta Rule over Sequence Length*, NeurIPS 2024). Within chunk c, with
state S_c = sum_{j before c} k_j a_j^T, the equations a_i (u_i.k_i + lambda) = y_i - S_c^T u_i -
sum_{j<i in c} (u_i.k_j) a_j read

    A_c a_c = Y_c - U_c S_c,       A_c = tril(U_c K_c^T, -1) + diag(u_i.k_i + lambda)   (C x C)

so with one batched triangular solve for all chunks, [Ytil_c, Wtil_c] = A_c^{-1} [Y_c, U_c],

    a_c = Ytil_c - Wtil_c S_c,      S_{c+1} = S_c + K_c^T a_c,      P_c = tril(Q_c K_c^T) a_c + Q_c S_c

and only the two small products of the middle line run sequentially over chunks. Time
O(n C (D + dv) + n D dv), memory O(B n (D + dv)) plus one group of chunks' C x C blocks: chunks
are processed in groups of about ``GROUP_TOKENS`` tokens (B times the group's length), the states
carried from group to group.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..progress import progress_bar
from ..threads import threads_for

DELTA_CHUNK = 32  # pairs per chunk of the delta rule (the C x C triangular solve)
ATTENTION_CHUNK = 16  # pairs per chunk of linear attention (per layer: n C dv + n D dv products)
GROUP_TOKENS = 2**16  # B * (tokens per group of chunks): bounds the C x C blocks held at once


def _group_len(B: int, n: int, chunk: int) -> int:
    """Pairs per group: a multiple of ``chunk``, about GROUP_TOKENS / B, at least one chunk."""
    per = max(chunk, (GROUP_TOKENS // max(B, 1)) // chunk * chunk)
    return min(per, -(-n // chunk) * chunk)


def group_flops(B: int, group: int, chunk: int, D: int, dv: int) -> int:
    """An upper bound on the floating-point operations of the largest product of one group of chunks
    (the C x C blocks of 2 query sets against keys and values): what ``ckd.threads`` decides on."""
    return 4 * B * group * chunk * (D + dv)


def _chunks(t: Tensor, start: int, stop: int, chunk: int) -> Tensor:
    """t[:, start:stop] (B, L, ...) zero-padded to a multiple of ``chunk`` and viewed (B, G, chunk, ...)."""
    part = t[:, start:stop]
    pad = -part.shape[1] % chunk
    if pad:
        part = F.pad(part, (0, 0) * (part.ndim - 2) + (0, pad))
    return part.reshape(part.shape[0], -1, chunk, *part.shape[2:])


def chunk_scores(queries: Tensor, keys: Tensor) -> Tensor:
    """tril(Q_c K_c^T) for every chunk and query set: queries (B, G, H, C, D) (H query sets, e.g.
    q and u), keys (B, G, C, D) -> (B, G, H C, C), the H sets stacked along the rows."""
    B, G, H, C, D = queries.shape
    return (queries.reshape(B, G, H * C, D) @ keys.transpose(-1, -2)).view(B, G, H, C, C).tril_().view(B, G, H * C, C)


def attention_chunks(scores: Tensor, queries: Tensor, keys: Tensor, values: Tensor, state: Tensor
                     ) -> tuple[Tensor, Tensor]:
    """One group of chunks of causal linear attention (module doc), all H query sets at once.

    scores: (B, G, H C, C) from ``chunk_scores``; queries (B, G, H C, D) (the sets stacked along the
    rows); keys (B, G, C, D); values (B, G, C, dv); state (B, D, dv) = sum of k_j v_j^T over the
    pairs before the group. Returns (out (B, G, H C, dv), the state after the group)."""
    sums = (keys.transpose(-1, -2) @ values).cumsum(1)  # (B, G, D, dv): inclusive prefix over chunks
    prefix = torch.cat([state[:, None], state[:, None] + sums[:, :-1]], 1)  # exclusive, plus the carry
    return torch.baddbmm(_flat(scores @ values), _flat(queries), _flat(prefix)).view(*scores.shape[:-1], -1), \
        state + sums[:, -1]


def _flat(t: Tensor) -> Tensor:
    """(B, G, m, n) -> (B G, m, n)."""
    return t.reshape(-1, *t.shape[-2:])


def causal_linear_attention(q: Tensor, k: Tensor, v: Tensor, chunk: int = ATTENTION_CHUNK) -> Tensor:
    """o_i = sum_{j <= i} (q_i.k_j) v_j for q, k (..., n, E), v (..., n, F): returns (..., n, F).

    Chunked prefix sums (module doc): O(n chunk (E + F) + n E F) time, O(n (E + F)) memory."""
    lead, n, E = q.shape[:-2], q.shape[-2], q.shape[-1]
    Fv = v.shape[-1]
    q, k, v = q.reshape(-1, n, E), k.reshape(-1, n, E), v.reshape(-1, n, Fv)
    B = q.shape[0]
    out = v.new_empty(B, n, Fv)
    state = v.new_zeros(B, E, Fv)
    group = _group_len(B, n, chunk) if n else 1
    with threads_for(group_flops(B, group, chunk, E, Fv)):  # ckd.threads
        for start in range(0, n, group):
            stop = min(n, start + group)
            qc, kc, vc = (_chunks(t, start, stop, chunk) for t in (q, k, v))
            o, state = attention_chunks(chunk_scores(qc[:, :, None], kc), qc, kc, vc, state)
            out[:, start:stop] = o.flatten(1, 2)[:, :stop - start]
    return out.reshape(*lead, n, Fv)


def descend_chunked(k: Tensor, u: Tensor, q: Tensor, y: Tensor, depth: int, step: float | Tensor,
                    ridge: float = 0.0, *, return_all: bool = False, chunk: int = ATTENTION_CHUNK
                    ) -> tuple[Tensor, Tensor]:
    """Depth-N CKD on pairs, each layer p <- p + eta P r, r <- (1 - eta lambda) r - eta R r with P r and
    R r from one chunked linear attention (queries q and u, one shared prefix sum). ``step``: eta, or
    a per-pair step (n,) (SPEC §10: pair i is row i + 1): pair i's updates are then scaled by eta_i.

    Causality lets each group of chunks run all N layers before the next group (layer l there
    needs only the state of r_l over the earlier groups, carried: N states of D x dv).
    Returns (p (B, n, dv), or (N+1, B, n, dv) with ``return_all``; max_l |r_l|, a 0-d tensor)."""
    B, n, D = k.shape
    dv = y.shape[-1]
    history = y.new_zeros(depth + 1, B, n, dv) if return_all else None
    out = y.new_zeros(B, n, dv)
    states = y.new_zeros(depth, B, D, dv)
    per_row = isinstance(step, Tensor)
    if per_row:  # (1, n, 1), cut into chunks with the values below (padding: eta 0, decay 1)
        step = step.to(y)[None, :, None]
    decay = 1.0 - step * ridge
    r_max = y.abs().amax() if y.numel() else y.new_zeros(())  # a running max: nothing kept per layer
    group = _group_len(B, n, chunk) if n else 1
    bar = progress_bar(depth * -(-n // group), "causal kernel descent (linear time)", "layer",
                    work=4.0 * depth * B * n * D * dv)
    with threads_for(group_flops(B, group, chunk, D, dv)):  # ckd.threads
        for start in range(0, n, group):
            stop = min(n, start + group)
            kc = _chunks(k, start, stop, chunk)
            queries = torch.stack([_chunks(q, start, stop, chunk), _chunks(u, start, stop, chunk)], 2)
            scores = chunk_scores(queries, kc)
            queries = queries.flatten(2, 3)  # (B, G, 2 C, D): the rows of P, then those of R
            r = _chunks(y, start, stop, chunk)
            p = torch.zeros_like(r)
            if per_row:
                eta, dec = _chunks(step, start, stop, chunk), _chunks(decay, start, stop, chunk)
            for layer in range(depth):
                both, states[layer] = attention_chunks(scores, queries, kc, r, states[layer])
                Pr, Rr = both[:, :, :chunk], both[:, :, chunk:]
                if per_row:
                    p = p.addcmul_(eta, Pr)
                    r = (r * dec).addcmul_(eta, Rr, value=-1.0)
                else:
                    p = p.add_(Pr, alpha=step)
                    r = (r * decay).sub_(Rr, alpha=step)
                r_max = torch.maximum(r_max, r.abs().amax())
                if history is not None:
                    history[layer + 1, :, start:stop] = p.flatten(1, 2)[:, :stop - start]
                if bar is not None:
                    bar.update()
            out[:, start:stop] = p.flatten(1, 2)[:, :stop - start]
    if bar is not None:
        bar.close()
    return (history if history is not None else out), r_max


def delta_rule_chunked(k: Tensor, u: Tensor, q: Tensor, y: Tensor, ridge: float = 0.0, *,
                       chunk: int = DELTA_CHUNK, diag: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Chunked normalised delta rule (module doc): returns (p, a), (B, n, dv), equal to
    ``naive.delta_rule_naive``. The diagonal u_i.k_i + lambda (or ``diag`` (B, n) when given)
    must be non-zero (checked by the caller)."""
    B, n, D = k.shape
    dv = y.shape[-1]
    p, a = y.new_empty(B, n, dv), y.new_empty(B, n, dv)
    S = y.new_zeros(B, D, dv)
    diag = (u * k).sum(-1) + ridge if diag is None else diag
    group = _group_len(B, n, chunk) if n else 1
    with threads_for(group_flops(B, group, chunk, D, dv)):  # ckd.threads: small products, a sequential loop
        for start in range(0, n, group):
            stop = min(n, start + group)
            kc, uc, qc, yc = (_chunks(t, start, stop, chunk) for t in (k, u, q, y))
            dc = F.pad(diag[:, start:stop], (0, kc.shape[1] * chunk - (stop - start)), value=1.0)  # padding: a = 0
            A = (uc @ kc.transpose(-1, -2)).tril_(-1)
            A.diagonal(dim1=-2, dim2=-1).copy_(dc.view(B, -1, chunk))
            sol = torch.linalg.solve_triangular(A, torch.cat([yc, uc], -1), upper=False)
            # chunk-major layouts, so that each sequential step reads and writes contiguous blocks
            ytil = sol[..., :dv].transpose(0, 1).contiguous()  # (G, B, C, dv)
            wtil = sol[..., dv:].transpose(0, 1).contiguous()  # (G, B, C, D)
            kT = kc.transpose(-1, -2).transpose(0, 1).contiguous()  # (G, B, D, C)
            G = ytil.shape[0]
            ac = torch.empty_like(ytil)
            states = y.new_empty(G + 1, B, D, dv)
            states[0] = S
            _sequential(ytil, wtil, kT, ac, states)
            S = states[G]
            ac = ac.transpose(0, 1)  # (B, G, C, dv)
            pc = (qc @ kc.transpose(-1, -2)).tril_() @ ac + qc @ states[:G].transpose(0, 1)
            a[:, start:stop] = ac.flatten(1, 2)[:, :stop - start]
            p[:, start:stop] = pc.flatten(1, 2)[:, :stop - start]
    return p, a


def _sequential(ytil: Tensor, wtil: Tensor, kT: Tensor, a: Tensor, states: Tensor) -> None:
    """The sequential part of the chunked delta rule, chunk by chunk (chunk-major (G, B, ...) inputs):
    a_c = Ytil_c - Wtil_c S_c, S_{c+1} = S_c + K_c^T a_c, written into ``a`` and ``states[1:]``.
    Views are split once (``unbind``); one sequence uses 2-d ``addmm`` (cheaper per call)."""
    if ytil.shape[1] == 1:
        mm, ytil, wtil, kT, a, states = torch.addmm, ytil[:, 0], wtil[:, 0], kT[:, 0], a[:, 0], states[:, 0]
    else:
        mm = torch.baddbmm
    Y, W, K, A, S = ytil.unbind(0), wtil.unbind(0), kT.unbind(0), a.unbind(0), states.unbind(0)
    for c in range(len(Y)):
        mm(Y[c], W[c], S[c], alpha=-1.0, out=A[c])
        mm(S[c], K[c], A[c], out=S[c + 1])
