"""Sketch mode: a CountSketch of each task gradient instead of the gradient itself.

For models too large to hold K full task gradients, each task gradient restricted to group k,
x = g_i|_k in R^{P_k}, is replaced by its CountSketch y = S_k x in R^d:

    y[b] = sum_{j : h_k(j) = b} s_k(j) x_j        (h_k : columns -> [d], s_k : columns -> +-1)

with (h_k, s_k) read off one degree-3 polynomial hash modulo the Mersenne prime p = 2^31 - 1
(a 4-wise independent family; bucket = value mod d, sign = a bit of value div d), seeded per
group. The hashes are computed on the gradient's device from Python-int coefficients, once,
and cached as one int32 code per column (``bucket + d * [sign < 0]``: P int32 = P floats of
memory); sketching a vector is then one ``index_add_`` into 2d cells, y = cells[:d] - cells[d:],
about 25x faster than re-hashing (measured: 4M columns, 127 ms -> 5 ms on one CPU thread).
``cache=False`` hashes chunk by chunk on the fly instead, storing nothing of size P.

Estimator. The Gram estimate is G~_k = Y_k Y_k^T with Y_k = [y_1 .. y_K] ([K, d] per group),
so memory is G x K x d floats. For any x, z:

    E[<Sx, Sz>] = <x, z>                                   (unbiased)
    Var[<Sx, Sz>] = (|x|^2 |z|^2 + <x, z>^2 - 2 sum_j x_j^2 z_j^2) / d  <=  2 |x|^2 |z|^2 / d

The cosine estimate cos~ = G~_ij / sqrt(G~_ii G~_jj) (a ratio of such estimates) has, for
gradients whose mass is spread over many coordinates, standard deviation about
(1 - cos^2) / sqrt(d) <= 1 / sqrt(d) (the delta method, as for a Gaussian JL projection);
we document and test the bound |cos~ - cos| <= 3 / sqrt(d) for at least 99% of pairs, and that
the error shrinks as 1/sqrt(d). Norms are estimated with relative standard deviation
<= sqrt(2 / d). Gradients concentrated on a few coordinates can do worse (the sum_j x_j^2 z_j^2
term then matters); increase d or use exact mode for such groups.

Aggregation (PCGrad, GradVac) needs the full task gradients for its combination sum_i w_i g_i:
a sketch cannot be un-projected, so :class:`TaskSketches` is for tracing only (``combine``
raises). The weights, though, need only the Gram matrix: :class:`SketchedGram`
(``MultiTask(..., gram="sketch", sketch=d)``) keeps the exact local gradients for the
combination and uses sketches only to estimate the Gram, which under torch.distributed cuts the
traffic of an aggregated step to one plain all-reduce plus G K d floats.

In the Tracer, a sketched step keeps plain ``loss.backward()`` into ``.grad`` and sketches the
*change* of ``.grad`` caused by each task's backward (S is linear: S(grad_after) - S(grad_before)
= S g_i), so the step needs no gradient copy of size P at all: extra memory is G K d floats plus
the hash-code cache (P int32) or, with ``cache=False``, one bounded chunk of hashing scratch.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import torch

from geomtrace import _distributed
from geomtrace._capture import (
    Capture,
    TaskGradients,
    _split_like,
    accumulate_grads,
    check_reaches_params,
)
from geomtrace._errors import InvalidInputError
from geomtrace._groups import ParameterGroup

MERSENNE = (1 << 31) - 1


def check_sketch_dim(sketch: Any) -> int:
    if isinstance(sketch, bool) or not isinstance(sketch, int) or sketch < 1:
        raise InvalidInputError(f"sketch={sketch!r}: give a positive int d (sketch dimension)")
    return sketch


class CountSketch:
    """Seeded CountSketch transforms, one per group, over a [P] column layout.

    ``offsets[k] = (a, b)``: group k covers columns [a, b); its hash takes the column index
    relative to a. ``chunk``: columns hashed at once (bounds the scratch memory to ~10 x chunk
    floats; default scales with P between 2^12 and 2^22 to keep kernel launches few).
    """

    def __init__(
        self,
        offsets: Sequence[tuple[int, int]],
        dim: int,
        seed: int = 0,
        chunk: int | None = None,
        cache: bool = True,
    ) -> None:
        self.dim = check_sketch_dim(dim)
        self.offsets = list(offsets)
        self.cache = cache
        self._codes: dict[tuple[int, torch.device], torch.Tensor] = {}
        numel = self.offsets[-1][1] if self.offsets else 0
        self.chunk = chunk or min(max(numel // 64, 1 << 12), 1 << 22)
        rng = random.Random(seed)
        # Per group, one degree-3 polynomial (4 coefficients) whose value in [0, p) gives both
        # the bucket (h mod d) and the sign (bit of h div d): one 4-wise independent hash into
        # 2d cells, the usual CountSketch construction at half the cost of two hashes. A fifth
        # coefficient folds in the column index's part above p (groups over 2^31 columns).
        self.coeffs = [tuple(rng.randrange(1, MERSENNE) for _ in range(5)) for _ in self.offsets]

    def hashes(
        self, group: int, start: int, stop: int, device
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Buckets (int64 in [0, d)) and signs (float32 +-1) of group-relative columns
        [start, stop) of ``group``."""
        a3, a2, a1, a0, fold = self.coeffs[group]
        x = torch.arange(start, stop, dtype=torch.int64, device=device)
        if stop > MERSENNE:  # host-side ints: no sync
            x = (x % MERSENNE + (x // MERSENNE) * fold) % MERSENNE
        # Horner's rule modulo p; every product is < 2^62, exact in int64.
        h = (x * a3 + a2).remainder_(MERSENNE)
        h = h.mul_(x).add_(a1).remainder_(MERSENNE)
        h = h.mul_(x).add_(a0).remainder_(MERSENNE)
        buckets = h % self.dim
        signs = h.div_(self.dim, rounding_mode="floor").bitwise_and_(1).to(torch.float32)
        return buckets, signs.mul_(-2.0).add_(1.0)

    def accumulate(
        self,
        out: torch.Tensor,
        group: int,
        column: int,
        values: torch.Tensor,
        alpha: float = 1.0,
    ) -> None:
        """``out += alpha * S_group x`` where x is ``values`` (flattened) placed at
        group-relative columns [column, column + values.numel())."""
        flat = values.reshape(-1)
        if self.cache:
            codes = self._group_codes(group, out.device)[column : column + flat.numel()]
            cells = torch.zeros(2 * self.dim, dtype=out.dtype, device=out.device)
            cells.index_add_(0, codes, flat.to(out.dtype), alpha=alpha)
            out.add_(cells[: self.dim]).sub_(cells[self.dim :])
            return
        for lo in range(0, flat.numel(), self.chunk):
            part = flat[lo : lo + self.chunk]
            buckets, signs = self.hashes(group, column + lo, column + lo + part.numel(), out.device)
            signs.mul_(part)
            if alpha != 1.0:
                signs.mul_(alpha)
            out.index_add_(0, buckets, signs)

    def sketch_rows(self, group: int, rows: torch.Tensor) -> torch.Tensor:
        """[K, d]: ``S_group`` applied to every row of ``rows`` ([K, P_group], float32)."""
        out = torch.zeros(rows.shape[0], self.dim, dtype=torch.float32, device=rows.device)
        if self.cache:
            codes = self._group_codes(group, rows.device)
            cells = torch.zeros(rows.shape[0], 2 * self.dim, dtype=out.dtype, device=out.device)
            cells.index_add_(1, codes, rows.to(out.dtype))
            return out.add_(cells[:, : self.dim]).sub_(cells[:, self.dim :])
        for t in range(rows.shape[0]):
            self.accumulate(out[t], group, 0, rows[t])
        return out

    def _group_codes(self, group: int, device: torch.device) -> torch.Tensor:
        """Cached int32 code per column of ``group``: bucket + d * (sign is -1)."""
        key = (group, torch.device(device))
        if key not in self._codes:
            a, b = self.offsets[group]
            codes = torch.empty(b - a, dtype=torch.int32, device=device)
            # Small chunks: the int64 hashing scratch stays negligible next to the codes.
            step = min(self.chunk, 1 << 16)
            for lo in range(0, b - a, step):
                hi = min(lo + step, b - a)
                buckets, signs = self.hashes(group, lo, hi, device)
                codes[lo:hi] = (buckets + self.dim * (signs < 0)).to(torch.int32)
            self._codes[key] = codes
        return self._codes[key]


class TaskSketches(Capture):
    """CountSketches of K task gradients per group: the sketch-mode implementation of the
    capture protocol (:class:`~geomtrace._capture.Capture`).

    ``backward(..., into_grad=True)`` is the Tracer's copy-free path (plain ``loss.backward()``
    and the sketch of the change of ``.grad``); ``add`` sketches given gradients (probe mode).
    Memory: a [G, K, d] float32 tensor. ``combine`` raises: aggregation needs full gradients
    (see the module docstring); split halves are not supported (``halves=True`` raises).
    """

    can_combine = False

    def __init__(
        self,
        groups: Sequence[ParameterGroup],
        num_tasks: int,
        dim: int,
        seed: int = 0,
        device: torch.device | str | None = None,
        process_group: Any = _distributed.AUTO,
        chunk: int | None = None,
        halves: bool = False,
    ) -> None:
        if halves:
            raise InvalidInputError(
                "halves=True is not supported with sketch=: split halves need exact gradients "
                "(use sketch=None)"
            )
        super().__init__(groups, num_tasks, device, process_group)
        self.dim = check_sketch_dim(dim)
        # Per parameter: (group index, column offset inside its group).
        self._places: list[tuple[int, int]] = []
        for k, group in enumerate(self.groups):
            column = 0
            for p in group.params:
                self._places.append((k, column))
                column += p.numel()
        self.sketch = CountSketch(self.offsets, dim, seed, chunk)
        self._sketches: torch.Tensor | None = None  # [G, K, d]
        self._present_mask: torch.Tensor | None = None
        self._half_mask: torch.Tensor | None = None
        self._grad_sketch: torch.Tensor | None = None  # [G, d] sketch of .grad so far
        self._reduced = False

    @property
    def sketches(self) -> torch.Tensor:
        """The [G, K, d] sketches of this rank's task gradients."""
        if self._sketches is None:
            self.reset()
        return self._sketches

    @property
    def present_mask(self) -> torch.Tensor:
        if self._present_mask is None:
            self.reset()
        return self._present_mask

    def reset(self) -> None:
        G, K = len(self.groups), self.num_tasks
        if self._sketches is None:
            self._sketches = torch.zeros(G, K, self.dim, dtype=torch.float32, device=self.device)
            self._present_mask = torch.zeros(K, dtype=torch.bool, device=self.device)
            self._half_mask = torch.zeros(2, K, dtype=torch.bool, device=self.device)
        else:
            self._sketches.zero_()
            self._present_mask.zero_()
        self._grad_sketch = None
        self._reduced = False
        self._nonfinite = None
        self.present = [False] * K
        self.touched = [False] * len(self.params)

    def release(self) -> None:
        self._sketches = None
        self._present_mask = None
        self._half_mask = None
        self._grad_sketch = None

    def _mark(self, task_index: int) -> None:
        if self._reduced:
            raise RuntimeError("TaskSketches.add after gram in the same step: reset first")
        self._mark_present(task_index, None)

    def add(
        self, task_index: int, grads: Sequence[torch.Tensor | None], half: int | None = None
    ) -> None:
        """Add the sketch of one backward's gradients (aligned with ``params``) to a task."""
        if half is not None:
            raise InvalidInputError("sketch capture has no split halves (half= must be None)")
        if self._sketches is None:
            self.reset()
        self._mark(task_index)
        for n, g in enumerate(grads):
            if g is not None:
                k, column = self._places[n]
                self.sketch.accumulate(self._sketches[k, task_index], k, column, g.float())
                self.touched[n] = True

    def backward(
        self,
        task_index: int,
        loss: torch.Tensor,
        retain_graph: bool = False,
        into_grad: bool = True,
        half: int | None = None,
    ) -> None:
        if not into_grad:
            grads = torch.autograd.grad(
                loss, self.params, retain_graph=retain_graph, allow_unused=True
            )
            check_reaches_params(grads)
            self.add(task_index, grads, half)
            return
        if half is not None:
            raise InvalidInputError("sketch capture has no split halves (half= must be None)")
        # Copy-free: plain backward into .grad, sketch the change it made.
        if self._grad_sketch is None:
            self.begin()  # the sketch of .grad before the step's first backward
        loss.backward(retain_graph=retain_graph)
        self.add_grad_change(task_index)

    def grad_sketch(self) -> torch.Tensor:
        """[G, d]: the sketch of the parameters' current ``.grad`` (None = 0)."""
        out = torch.zeros(len(self.groups), self.dim, dtype=torch.float32, device=self.device)
        for n, p in enumerate(self.params):
            if p.grad is not None:
                k, column = self._places[n]
                self.sketch.accumulate(out[k], k, column, p.grad)
        return out

    def begin(self) -> None:
        """Remember the sketch of ``.grad`` before the step's first backward."""
        if self._sketches is None:
            self.reset()
        self._grad_sketch = self.grad_sketch()

    def add_grad_change(self, task_index: int) -> None:
        """Credit the change of ``.grad`` since the last call (one task's ``loss.backward()``)
        to ``task_index``: S(grad_now) - S(grad_before) = S(g_task), by linearity."""
        if self._grad_sketch is None:
            self.begin()
        self._mark(task_index)
        now = self.grad_sketch()
        self._sketches[:, task_index] += now - self._grad_sketch
        self._grad_sketch = now
        for n, p in enumerate(self.params):
            if p.grad is not None:
                self.touched[n] = True

    def gram(self) -> torch.Tensor:
        """Estimated Gram matrices [G, K, K] = Y Y^T per group; absent tasks NaN.

        Distributed: the sketches are averaged over ranks first (one all-reduce of G K d + K
        floats; collective call).
        """
        sketches, present = self.sketches, self._present_mask
        if self.process_group is not None:
            if not self._reduced:
                packed = torch.cat([sketches.reshape(-1), present.float()])
                _distributed.all_reduce_sum(packed, self.process_group)
                w = _distributed.world_size(self.process_group)
                self._sketches = packed[: sketches.numel()].view_as(sketches).div_(w)
                self._present_mask = packed[sketches.numel() :] > 0
                self._reduced = True
            sketches, present = self._sketches, self._present_mask
        return self._mask_grams(sketches @ sketches.transpose(1, 2), present)

    def combine(self, weights: torch.Tensor) -> list[torch.Tensor]:
        raise InvalidInputError(
            "sketch mode keeps only random projections of the task gradients: it can trace "
            "but not combine them (aggregators need full gradients); use exact mode "
            "(sketch=None) for MultiTask"
        )

    def sum_into_grad(self) -> None:
        # The copy-free path left the plain summed backward in .grad; average it like DDP.
        if self.process_group is not None:
            _distributed.all_reduce_grads(self.params, self.process_group)


#: dtypes the sketches may travel in between ranks (``MultiTask(..., sketch_dtype=...)``)
SKETCH_DTYPES = ("float32", "float16")


def check_sketch_dtype(dtype: Any, dim: Any) -> str:
    if dtype not in SKETCH_DTYPES:
        raise InvalidInputError(f"sketch_dtype={dtype!r}: use one of {', '.join(SKETCH_DTYPES)}")
    if dtype != "float32" and dim == IDENTITY:
        raise InvalidInputError(
            f"sketch_dtype={dtype!r} with sketch='identity': the identity is the exact check "
            "of the sketched path and travels in float32"
        )
    return dtype


def all_reduce_sketch_mean(
    values: torch.Tensor, present: torch.Tensor, group: Any, dtype: str = "float32"
) -> tuple[torch.Tensor, torch.Tensor]:
    """The rank mean of float32 sketches ``values`` ([..., d]) and the presence flags ``present``
    ([K] bool, True where any rank saw the task); collective.

    ``"float32"``: one all-reduce of values + K flags. ``"float16"`` halves the bytes of the
    sketches: per row (every index but the last) a common scale c = max_r max_b |y^(r)[b]| is
    all-reduced first (MAX, with the flags: rows + K floats), each rank sends fp16(y^(r) / c)
    (entries in [-1, 1], so a sum over up to 65,504 ranks cannot overflow) and the mean is
    c / W times the fp16 all-reduced sum. Rounding: each rank's entry is within 2^-11 c, and the
    sum's partial sums add at most ~W 2^-11 c in the worst case (~sqrt(W) 2^-11 c typically),
    small next to the sketch's own error |g_i| |g_j| sqrt(2 / d) unless the rank gradients
    cancel almost exactly; NaN/inf entries stay non-finite (the task is then flagged).
    """
    w = _distributed.world_size(group)
    if dtype == "float32" or group is None:
        packed = torch.cat([values.reshape(-1), present.float()])
        if group is not None:
            _distributed.all_reduce_sum(packed, group)
        n = values.numel()
        return packed[:n].view_as(values).div_(w), packed[n:] > 0
    dist = torch.distributed
    rows = values.reshape(-1, values.shape[-1])
    scales = torch.cat([rows.abs().amax(dim=1), present.float()])
    dist.all_reduce(scales, op=dist.ReduceOp.MAX, group=group)
    n = rows.shape[0]
    scale = scales[:n]
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))  # all-zero rows stay zero
    half = (rows / safe[:, None]).to(torch.float16)
    _distributed.all_reduce_sum(half, group)
    mean = half.float().mul_(safe[:, None] / w)
    return mean.view_as(values), scales[n:] > 0


#: ``SketchedGram(..., dim=IDENTITY)``: the identity "sketch" (exact Gram, 2 K P traffic): a
#: test oracle for the sketched path, not a mode to train with
IDENTITY = "identity"


class SketchedGram(TaskGradients):
    """Aggregation at the communication cost of plain data parallelism (``MultiTask(...,
    gram="sketch", sketch=d)``).

    Rank r keeps its *local* task gradients g_i^(r) (a [K, P] buffer, as in one process) and
    nothing is reduced until the step closes. CountSketch is linear and seeded identically on
    every rank, so the mean of the ranks' sketches is the sketch of the averaged gradients:

        Y_k = (1/W) sum_r S_k B_k^(r) = S_k B_k          (one all-reduce of [G, K, d] + K flags)
        G~_k = Y_k Y_k^T                                 (the estimator of ``geomtrace._sketch``)

    Every rank then holds the same G~, hence the same weights w = aggregator(G~), and the
    combination is linear too:

        sum_i w_ki g_i = (1/W) sum_r sum_i w_ki g_i^(r)  (each rank combines its own rows;
                                                          one all-reduce of P floats)

    Communication per step: P + G K d + K floats in two all-reduces, against 2 P for a plain
    data-parallel step (all-reduce of P) and (K + 1) P' + G K^2 + K for the exact path. The
    update is exactly the combination of the averaged task gradients with the weights computed
    from the sketched Gram, so the only error is in the weights: the Gram entries have the
    sketch's variance (<= 2 |g_i|^2 |g_j|^2 / d) and cosines are within 3 / sqrt(d) for >= 99% of
    pairs (``tests/geomtrace/test_sketch.py``). With ``dim="identity"`` the local [K, P] buffer
    itself is all-reduced and the Gram is exact (a check of the path: it equals the exact mode).

    One process (no process group): the Gram of the full gradients is estimated the same way.
    """

    def __init__(
        self,
        groups: Sequence[ParameterGroup],
        num_tasks: int,
        dim: int | str,
        seed: int = 0,
        device: torch.device | str | None = None,
        process_group: Any = _distributed.AUTO,
        dtype: str = "float32",
    ) -> None:
        # The buffer holds this rank's own gradients: built as a one-process capture (no
        # padding, no reduce-scatter); the reduction happens in gram() and combine().
        super().__init__(groups, num_tasks, device, process_group=None)
        self.process_group = _distributed.resolve_group(process_group)
        self.identity = dim == IDENTITY
        self.dim = None if self.identity else check_sketch_dim(dim)
        self.sketch = None if self.identity else CountSketch(self.offsets, self.dim, seed)
        #: the dtype the sketches travel in (``all_reduce_sketch_mean``)
        self.dtype = check_sketch_dtype(dtype, dim)

    def backward(
        self,
        task_index: int,
        loss: torch.Tensor,
        retain_graph: bool = False,
        into_grad: bool = True,
        half: int | None = None,
    ) -> None:
        grads = torch.autograd.grad(loss, self.params, retain_graph=retain_graph, allow_unused=True)
        check_reaches_params(grads)
        self.add(task_index, grads, half)
        if into_grad and self.process_group is None:
            accumulate_grads(self.params, grads)

    def gram(self) -> torch.Tensor:
        """[G, K, K] Gram matrices estimated from the (rank-averaged) sketches; absent and
        non-finite tasks NaN. Distributed: a collective call (one all-reduce; float16: two)."""
        rows = self.buffer[: self.num_tasks]
        group = self.process_group
        if self.identity:
            local = rows
        else:
            local = torch.stack(
                [self.sketch.sketch_rows(k, rows[:, a:b]) for k, (a, b) in enumerate(self.offsets)]
            )  # [G, K, d]
        values, present = all_reduce_sketch_mean(local, self._present_mask, group, self.dtype)
        if self.identity:
            grams = torch.stack([values[:, a:b] @ values[:, a:b].T for a, b in self.offsets])
        else:
            grams = values @ values.transpose(1, 2)
        return self._mask_grams(grams, present)

    def combine(self, weights: torch.Tensor, exclude_nonfinite: bool = True) -> list[torch.Tensor]:
        """Per parameter, sum_i w_ki g_i of the rank-averaged gradients: each rank combines its
        own rows, then one all-reduce of P floats (collective call when distributed)."""
        weights = weights.to(device=self.device, dtype=torch.float32)
        flat = self._combine_local(weights, exclude_nonfinite)
        group = self.process_group
        if group is not None:
            _distributed.all_reduce_sum(flat, group)
            flat.div_(_distributed.world_size(group))
        return _split_like(flat, self.params)
