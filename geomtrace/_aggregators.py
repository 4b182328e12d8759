"""Aggregators: from a batch of Gram matrices to combination weights.

An aggregator maps the Gram matrices of one step, one per parameter group,
``gram[g] = [g_i . g_j]`` of shape ``[G, K, K]``, and its own state to weights ``w`` of shape
``[G, K]``; the update of group ``g`` is ``sum_i w[g, i] g_i``.

PCGrad and GradVac modify each task gradient ``g_i`` into ``g_i' = sum_k C_ik g_k`` by visiting
the other tasks ``j`` one at a time. Everything they need is a function of the Gram matrix G and
of the coefficient row ``C_i``::

    |g_i'|^2    = C_i G C_i^T
    g_i' . g_j  = (C_i G)_j
    g_i' <- g_i' + a g_j    <=>    C_ij <- C_ij + a

and the update ``sum_i g_i' = sum_k (1^T C)_k g_k``, so the weights are ``w = 1^T C`` (column
sums). Row ``i`` of C only depends on row ``i``'s own visits, so the visiting rounds
``r = 0 .. K-2`` advance every (group, task) pair at once: one loop of K-1 rounds of batched
tensor arithmetic (``torch.where`` instead of ``if``, no ``.item()``, no host sync), never a
Python loop over groups, tasks or parameters.

Absent tasks (NaN rows and columns of the Gram matrix, as :meth:`TaskGradients.gram` reports a
task that had no backward in the step) are treated as zero gradients: they get weight 0, they are
never used to correct another task and their GradVac targets are left untouched. A task whose
gradient in a group is exactly zero is likewise skipped as a correction direction (the correction
would add a multiple of the zero vector, and torchjd's formula would produce a huge finite
coefficient ``~|g_i| phi_hat / eps`` for it) and does not move the EMA targets, since its cosine
is undefined; its own weight stays that of Sum (1).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from ._errors import InvalidInputError

__all__ = ["Aggregator", "GradVac", "Mean", "PCGrad", "Sum"]


def _check_gram(gram: Tensor) -> tuple[int, int]:
    if not isinstance(gram, Tensor):
        raise InvalidInputError(
            f"gram must be a torch.Tensor of shape [G, K, K], got {type(gram).__name__}"
        )
    if gram.ndim != 3 or gram.shape[1] != gram.shape[2]:
        raise InvalidInputError(
            f"gram must have shape [G, K, K] (one K x K Gram matrix per group), got {tuple(gram.shape)}"
        )
    if not gram.is_floating_point():
        raise InvalidInputError(f"gram must be a floating-point tensor, got dtype {gram.dtype}")
    return gram.shape[0], gram.shape[1]


def _check_names(what: str, bound: list[str] | None, names: list[str] | None, cls: str) -> None:
    """Refuse re-binding an aggregator (or its state) to other task or group names."""
    if bound is not None and names is not None and list(bound) != list(names):
        raise InvalidInputError(
            f"{cls} serves {what} {list(bound)}, not {list(names)}: its state is per "
            f"{what[:-1]} (in this order); use a new aggregator for other {what}"
        )


def _presence(gram: Tensor) -> tuple[Tensor, Tensor]:
    """Return (clean gram with NaN -> 0, present [G, K] bool)."""
    diag = gram.diagonal(dim1=1, dim2=2)
    present = ~torch.isnan(diag)
    clean = torch.where(
        torch.isnan(gram), torch.zeros((), dtype=gram.dtype, device=gram.device), gram
    )
    return clean, present


def _others(num_tasks: int, device: torch.device | None = None) -> Tensor:
    """[K, K-1] long: row i lists the tasks other than i in increasing order."""
    idx = torch.arange(num_tasks - 1, device=device).expand(num_tasks, -1)
    own = torch.arange(num_tasks, device=device).unsqueeze(1)
    # Shifting the indices at or above i by one skips i.
    return idx + (idx >= own).long()


def random_order(num_groups: int, num_tasks: int, generator: torch.Generator) -> Tensor:
    """Independent uniformly random visiting orders, one per (group, task): long [G, K, K-1].

    ``order[g, i]`` is a permutation of the tasks other than ``i``. Drawn on the generator's
    device (CPU for the aggregators' generators) from ``generator`` only.
    """
    keys = torch.rand(num_groups, num_tasks, max(num_tasks - 1, 0), generator=generator)
    idx = keys.argsort(dim=-1)
    own = torch.arange(num_tasks).view(1, num_tasks, 1)
    return idx + (idx >= own).long()


def _check_order(order: Tensor, num_groups: int, num_tasks: int, device: torch.device) -> Tensor:
    if not isinstance(order, Tensor) or order.dtype.is_floating_point or order.dtype == torch.bool:
        raise InvalidInputError("order must be an integer torch.Tensor of shape [G, K, K-1]")
    expected = (num_groups, num_tasks, max(num_tasks - 1, 0))
    if tuple(order.shape) != expected:
        raise InvalidInputError(
            f"order must have shape [G, K, K-1] = {list(expected)} for this gram, got {list(order.shape)}"
        )
    order = order.to(device=device, dtype=torch.long)
    # One host sync, only when the caller passes an order: each row must be a permutation of
    # the other tasks, else the algorithm would silently visit a pair twice or not at all.
    if not bool((order.sort(dim=-1).values == _others(num_tasks, device)).all()):
        raise InvalidInputError(
            "order[g, i] must be a permutation of the tasks other than i (values 0..K-1 except i, each once)"
        )
    return order


def _validity(clean: Tensor, present: Tensor, order: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Per-visit quantities gathered once: validity of each visited pair, |g_j|, rows G[j, :]."""
    num_groups, num_tasks, rounds = order.shape
    diag = clean.diagonal(dim1=1, dim2=2)
    valid = present & (diag > 0)  # a usable direction: present and non-zero
    flat = order.reshape(num_groups, num_tasks * rounds)
    valid_j = valid.gather(1, flat).view(num_groups, num_tasks, rounds)
    pair_ok = valid.unsqueeze(-1) & valid_j
    diag_j = diag.gather(1, flat).view(num_groups, num_tasks, rounds)
    rows_j = clean.gather(1, flat.unsqueeze(-1).expand(-1, -1, num_tasks)).view(
        num_groups, num_tasks, rounds, num_tasks
    )
    return pair_ok, diag_j, rows_j


def pcgrad_coefficients(gram: Tensor, order: Tensor) -> Tensor:
    """PCGrad's coefficient matrices C [G, K, K] (``g_i' = sum_k C[g, i, k] g_k``).

    For every (g, i) at once, round r visits ``j = order[g, i, r]``; if ``g_i' . g_j < 0`` then
    ``C_i <- C_i - (g_i' . g_j / |g_j|^2) e_j`` (projection of g_i' onto the normal plane of g_j).
    NaN rows (absent tasks) are treated as zero gradients; ``order`` must be checked.
    """
    num_groups, num_tasks, rounds = order.shape
    clean, present = _presence(gram)
    pair_ok, diag_j, rows_j = _validity(clean, present, order)
    safe_diag_j = torch.where(pair_ok, diag_j, torch.ones_like(diag_j))
    coef = torch.eye(num_tasks, dtype=gram.dtype, device=gram.device).repeat(num_groups, 1, 1)
    coef_gram = clean.clone()  # C G, kept up to date incrementally: C = I at start
    zero = torch.zeros((), dtype=gram.dtype, device=gram.device)
    for r in range(rounds):
        j = order[:, :, r : r + 1]
        dot = coef_gram.gather(2, j).squeeze(-1)  # g_i' . g_j
        step = torch.where(pair_ok[:, :, r] & (dot < 0), -dot / safe_diag_j[:, :, r], zero)
        coef.scatter_add_(2, j, step.unsqueeze(-1))
        coef_gram.add_(step.unsqueeze(-1) * rows_j[:, :, r])
    return coef


def gradvac_coefficients(
    gram: Tensor, order: Tensor, targets: Tensor, beta: float, eps: float
) -> tuple[Tensor, Tensor]:
    """GradVac's coefficient matrices C [G, K, K] and the updated EMA targets [G, K, K].

    Round r visits ``j = order[g, i, r]`` for every (g, i) at once, with the cosine
    ``phi = (C_i G)_j / (|g_i'| |g_j| + eps)`` of the current g_i' and the original g_j. If
    ``phi < phi_hat[g, i, j]``::

        C_ij <- C_ij + |g_i'| (phi_hat sqrt(1 - phi^2) - phi sqrt(1 - phi_hat^2))
                        / (|g_j| sqrt(1 - phi_hat^2) + eps)

    which makes cos(g_i', g_j) = phi_hat (law of sines). Whether or not it corrects, the visit
    updates ``phi_hat[g, i, j] <- (1 - beta) phi_hat + beta phi`` with the cosine observed
    *before* the correction (the paper's Algorithm 1; torchjd 0.18's GradVacWeighting, whose
    eps placement this follows exactly). Each pair (i, j) is visited once per call and only
    row i reads ``phi_hat[g, i, j]``, so reading all targets up front and writing them back
    after the rounds is the same as the sequential algorithm.
    """
    num_groups, num_tasks, rounds = order.shape
    clean, present = _presence(gram)
    pair_ok, diag_j, rows_j = _validity(clean, present, order)
    norm_j = diag_j.clamp(min=0).sqrt()
    hat = targets.gather(2, order)  # phi_hat of every visit, [G, K, K-1]
    sqrt_1_hat2 = (1 - hat * hat).clamp(min=0).sqrt()
    coef = torch.eye(num_tasks, dtype=gram.dtype, device=gram.device).repeat(num_groups, 1, 1)
    coef_gram = clean.clone()
    zero = torch.zeros((), dtype=gram.dtype, device=gram.device)
    observed = torch.zeros_like(hat)
    for r in range(rounds):
        j = order[:, :, r : r + 1]
        dot = coef_gram.gather(2, j).squeeze(-1)
        norm_i = (coef_gram * coef).sum(-1).clamp(min=0).sqrt()  # sqrt(C_i G C_i^T)
        phi = dot / (norm_i * norm_j[:, :, r] + eps)
        h, s_hat = hat[:, :, r], sqrt_1_hat2[:, :, r]
        sqrt_1_phi2 = (1 - phi * phi).clamp(min=0).sqrt()
        step = norm_i * (h * sqrt_1_phi2 - phi * s_hat) / (norm_j[:, :, r] * s_hat + eps)
        step = torch.where(pair_ok[:, :, r] & (phi < h), step, zero)
        coef.scatter_add_(2, j, step.unsqueeze(-1))
        coef_gram.add_(step.unsqueeze(-1) * rows_j[:, :, r])
        observed[:, :, r] = phi
    new_hat = torch.where(pair_ok, (1 - beta) * hat + beta * observed, hat)
    return coef, targets.scatter(2, order, new_hat)


class Aggregator(ABC):
    """Maps Gram matrices ``[G, K, K]`` (one per parameter group) to weights ``[G, K]``.

    The group's update is ``sum_i w[g, i] g_i``. Weights are computed in the Gram's dtype on
    its device. Absent tasks (NaN rows of the Gram) get weight 0.
    """

    #: short name, stored as the trace's "method" meta value
    name: str = "aggregator"

    @abstractmethod
    def weights(self, gram: Tensor, order: Tensor | None = None) -> Tensor:
        """Weights ``[G, K]`` for ``gram`` ``[G, K, K]``.

        ``order`` (long ``[G, K, K-1]``): for group g and task i, the order in which the other
        tasks are visited; drawn from the aggregator's seeded generator when omitted (see
        ``PCGrad``'s docstring for exactly which orders a seed gives). Order-free aggregators
        (Sum, Mean) ignore it.
        """

    def trace_arrays(self) -> dict[str, Tensor]:
        """Extra per-step arrays worth tracing (name -> tensor); none by default."""
        return {}

    #: the task names of the Gram rows and the parameter-group names (set by :meth:`bind`,
    #: or by loading a state that carries them; None while unknown)
    tasks: list[str] | None = None
    group_names: list[str] | None = None
    #: the keys of :meth:`state_dict` beyond ``kind``, ``tasks`` and ``groups``
    _state_keys: tuple[str, ...] = ()

    def bind(self, tasks: Sequence[str], groups: Sequence[str] | None = None) -> None:
        """Name the Gram rows (tasks) and, where known, the parameter groups.

        :class:`MultiTask` calls it, so :meth:`state_dict` carries the names and
        :meth:`load_state_dict` refuses a state saved for other tasks or another order (the
        state of pair (i, j) would otherwise silently steer another pair). Binding again to
        other names is refused for the same reason.
        """
        tasks = [str(t) for t in tasks]
        groups = None if groups is None else [str(g) for g in groups]
        if self._state_keys:  # a stateless aggregator may serve any tasks, one after another
            _check_names("tasks", self.tasks, tasks, type(self).__name__)
            _check_names("groups", self.group_names, groups, type(self).__name__)
        self.tasks = tasks
        if groups is not None:
            self.group_names = groups

    def state_dict(self) -> dict[str, Any]:
        """The state needed to resume exactly: ``kind`` (the aggregator's :attr:`name`), the
        ``tasks`` and ``groups`` names (None when unbound) and the subclass's own keys."""
        return {"kind": self.name, "tasks": self.tasks, "groups": self.group_names}

    def load_state_dict(
        self,
        state: Mapping[str, Any],
        tasks: Sequence[str] | None = None,
        groups: Sequence[str] | None = None,
    ) -> None:
        """Restore what :meth:`state_dict` returned, after checking all of it.

        Refused (:class:`InvalidInputError`, the aggregator unchanged): a state of another
        aggregator kind, missing or unknown keys, or names that differ from ``tasks`` /
        ``groups`` (given here or bound before). Names are never reordered: a state saved for
        ``[es, fr]`` does not load into ``[fr, es]``. States saved before names were stored
        (no ``kind`` key) load when their keys match.
        """
        self._load(self._checked_state(state, tasks, groups))

    def _checked_state(self, state, tasks, groups) -> dict[str, Any]:
        cls = type(self).__name__
        if not isinstance(state, Mapping):
            raise InvalidInputError(
                f"{cls}.load_state_dict needs the mapping that state_dict() returns, got "
                f"{type(state).__name__}"
            )
        kind = state.get("kind")
        if kind is not None and kind != self.name:
            raise InvalidInputError(
                f"this is the state of a {kind!r} aggregator; {cls} ({self.name!r}) cannot load it"
            )
        missing = [k for k in self._state_keys if k not in state]
        if missing:
            raise InvalidInputError(
                f"{cls} state is missing key(s) {', '.join(missing)}; a {cls} state has keys "
                f"{', '.join(('kind', 'tasks', 'groups', *self._state_keys))}"
            )
        unknown = sorted(set(state) - set(self._state_keys) - {"kind", "tasks", "groups"})
        if unknown:
            raise InvalidInputError(
                f"{cls} state has unknown key(s) {', '.join(map(str, unknown))}: not a {cls} "
                "state (another aggregator's?)"
            )
        checked = dict(state)
        for key, given, bound in (
            ("tasks", tasks, self.tasks),
            ("groups", groups, self.group_names),
        ):
            saved = state.get(key)
            if saved is not None and not (
                isinstance(saved, list | tuple) and all(isinstance(n, str) for n in saved)
            ):
                raise InvalidInputError(
                    f"{cls} state: {key} must be a list of names, got {saved!r}"
                )
            expected = [str(n) for n in given] if given is not None else bound
            if given is not None and bound is not None:
                _check_names(key, bound, expected, cls)
            if saved is not None and expected is not None and list(saved) != list(expected):
                raise InvalidInputError(
                    f"{cls} state was saved for {key} {list(saved)} but is loaded for {expected}: "
                    f"the per-{key[:-1]} state would steer the wrong {key}; load it with the "
                    f"same {key} in the same order"
                )
            checked[key] = (
                list(expected) if expected is not None else (None if saved is None else list(saved))
            )
        return checked

    def _load(self, state: dict[str, Any]) -> None:
        """Apply a checked state (subclasses load their keys, then call this)."""
        self.tasks = state["tasks"]
        self.group_names = state["groups"]

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class Sum(Aggregator):
    """``w[g, i] = 1`` for present tasks: the update is the gradient of the summed losses."""

    name = "sum"

    def weights(self, gram: Tensor, order: Tensor | None = None) -> Tensor:
        _check_gram(gram)
        _, present = _presence(gram)
        return present.to(gram.dtype)


class Mean(Aggregator):
    """``w[g, i] = 1 / n_g`` for the ``n_g`` tasks present in group g: the mean gradient."""

    name = "mean"

    def weights(self, gram: Tensor, order: Tensor | None = None) -> Tensor:
        _check_gram(gram)
        _, present = _presence(gram)
        w = present.to(gram.dtype)
        return w / w.sum(dim=1, keepdim=True).clamp(min=1)


_ORDERS_DOC = """
    Visiting orders. ``weights(gram, order=None)``: ``order`` is a long tensor [G, K, K-1] whose
    row ``order[g, i]`` is a permutation of the tasks other than i (checked). When omitted, the
    n-th such call (counting only calls without ``order``) uses the n-th draw
    ``random_order(G, K, generator)`` from ``generator = torch.Generator().manual_seed(seed)``,
    a CPU generator (so CPU and GPU runs visit alike): ``torch.rand(G, K, K-1)`` keys, argsorted
    per row, indices >= i shifted by one. To reproduce the orders of a run::

        gen = torch.Generator().manual_seed(seed)
        orders = [gt.random_order(G, K, gen) for _ in range(calls)]

    A call with an explicit ``order`` does not advance the generator. ``last_order`` holds the
    order [G, K, K-1] used by the last call (on the Gram's device), None before the first.
"""


class _Shuffling(Aggregator):
    """An aggregator with a seeded generator for its visiting orders."""

    def __init__(self, seed: int = 0) -> None:
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise InvalidInputError(f"seed must be an int, got {seed!r}")
        self.seed = seed
        self.generator = torch.Generator().manual_seed(seed)
        #: the visiting order [G, K, K-1] of the last ``weights`` call (None before the first)
        self.last_order: Tensor | None = None

    def _order(self, gram: Tensor, order: Tensor | None) -> Tensor:
        num_groups, num_tasks = gram.shape[0], gram.shape[1]
        if order is None:
            order = random_order(num_groups, num_tasks, self.generator)
            if gram.device.type == "cuda":
                # Drawn on the CPU so CPU and GPU runs visit in the same order; a copy from
                # pinned memory is asynchronous (a pageable copy would block on the GPU).
                order = order.pin_memory().to(gram.device, non_blocking=True)
            else:
                order = order.to(gram.device)
        else:
            order = _check_order(order, num_groups, num_tasks, gram.device)
        self.last_order = order
        return order

    _state_keys = ("seed", "generator")

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "seed": self.seed, "generator": self.generator.get_state()}

    def _load(self, state: dict[str, Any]) -> None:
        cls = type(self).__name__
        seed = state["seed"]
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise InvalidInputError(f"{cls} state: seed must be an int, got {seed!r}")
        scratch = torch.Generator()
        try:
            scratch.set_state(state["generator"])
        except (RuntimeError, TypeError) as err:
            raise InvalidInputError(
                f"{cls} state: generator is not a torch.Generator state ({err})"
            ) from None
        self._load_own(state)  # may refuse: nothing is changed before it returns
        self.seed = seed
        self.generator.set_state(state["generator"])
        super()._load(state)

    def _load_own(self, state: dict[str, Any]) -> None:
        """Check and apply the subclass's keys beyond seed and generator."""


class PCGrad(_Shuffling):
    """PCGrad (Yu et al. 2020) on Gram matrices.

    For each group g and task i, visit the other tasks j in random order; if
    ``g_i' . g_j < 0``, project: ``g_i' <- g_i' - (g_i' . g_j / |g_j|^2) g_j``. The update is
    ``sum_i g_i'``. Visiting orders come from a ``torch.Generator`` seeded with ``seed``
    (see below).
    """

    __doc__ = (__doc__ or "") + _ORDERS_DOC
    name = "pcgrad"

    def weights(self, gram: Tensor, order: Tensor | None = None) -> Tensor:
        _check_gram(gram)
        order = self._order(gram, order)
        coef = pcgrad_coefficients(gram, order)
        _, present = _presence(gram)
        return torch.where(
            present, coef.sum(dim=1), torch.zeros((), dtype=gram.dtype, device=gram.device)
        )

    def __repr__(self) -> str:
        return f"PCGrad(seed={self.seed})"


class GradVac(_Shuffling):
    """Gradient Vaccine (Wang et al. ICLR 2021) on Gram matrices, one target per group.

    Keeps EMA targets ``phi_hat[g, i, j]`` (initialised at 0) for every group and ordered task
    pair. For each group g and task i, visit the other tasks j in random order; with ``phi``
    the cosine of the current g_i' and g_j: if ``phi < phi_hat``, add the multiple of g_j that
    makes the cosine exactly ``phi_hat``; then ``phi_hat <- (1 - beta) phi_hat + beta phi``
    (``phi`` observed before the correction). With ``beta = 0`` the targets stay 0 and this is
    PCGrad. ``eps`` is added to the denominators (as in torchjd 0.18). See
    :func:`gradvac_coefficients` for the exact formulas.

    Parameters
    ----------
    beta : EMA rate of the targets, in [0, 1] (paper: 1e-2).
    eps : non-negative constant added to denominators.
    seed : seed of the generator that draws the visiting orders (see below).
    """

    __doc__ = (__doc__ or "") + _ORDERS_DOC
    name = "gradvac"

    def __init__(self, beta: float = 1e-2, eps: float = 1e-8, seed: int = 0) -> None:
        super().__init__(seed)
        if not (isinstance(beta, (int, float)) and 0.0 <= beta <= 1.0):
            raise InvalidInputError(f"beta must be a number in [0, 1], got {beta!r}")
        if not (isinstance(eps, (int, float)) and eps >= 0.0 and math.isfinite(eps)):
            raise InvalidInputError(f"eps must be a finite number >= 0, got {eps!r}")
        self.beta = float(beta)
        self.eps = float(eps)
        self._targets: Tensor | None = None

    @property
    def targets(self) -> Tensor | None:
        """The current EMA targets ``phi_hat`` [G, K, K] (None before the first call).

        Diagonal entries are never used and stay 0. A new tensor after every call (never
        modified in place), so it is safe to keep a reference.
        """
        return self._targets

    def reset(self) -> None:
        """Forget the targets (the next call starts from 0); the generator is kept."""
        self._targets = None

    def weights(self, gram: Tensor, order: Tensor | None = None) -> Tensor:
        num_groups, num_tasks = _check_gram(gram)
        if self._targets is None:
            targets = torch.zeros_like(gram)
        else:
            if tuple(self._targets.shape) != tuple(gram.shape):
                g0, k0 = self._targets.shape[0], self._targets.shape[1]
                raise InvalidInputError(
                    f"GradVac holds targets of shape {list(self._targets.shape)} "
                    f"({g0} groups x {k0} tasks) but got a gram of shape {list(gram.shape)} "
                    f"({num_groups} groups x {num_tasks} tasks); the number of groups and tasks "
                    "must stay fixed (call reset() to start over)"
                )
            targets = self._targets.to(device=gram.device, dtype=gram.dtype)
        order = self._order(gram, order)
        coef, self._targets = gradvac_coefficients(gram, order, targets, self.beta, self.eps)
        _, present = _presence(gram)
        return torch.where(
            present, coef.sum(dim=1), torch.zeros((), dtype=gram.dtype, device=gram.device)
        )

    def trace_arrays(self) -> dict[str, Tensor]:
        return {} if self._targets is None else {"gradvac_target": self._targets}

    _state_keys = ("seed", "generator", "beta", "eps", "targets")

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state.update(
            beta=self.beta,
            eps=self.eps,
            targets=None if self._targets is None else self._targets.detach().cpu().clone(),
        )
        return state

    def _load_own(self, state: dict[str, Any]) -> None:
        beta, eps, targets = state["beta"], state["eps"], state["targets"]
        if isinstance(beta, bool) or not isinstance(beta, int | float) or not 0.0 <= beta <= 1.0:
            raise InvalidInputError(f"GradVac state: beta must be a number in [0, 1], got {beta!r}")
        if (
            isinstance(eps, bool)
            or not isinstance(eps, int | float)
            or not (math.isfinite(eps) and eps >= 0)
        ):
            raise InvalidInputError(f"GradVac state: eps must be a finite number >= 0, got {eps!r}")
        if targets is not None:
            try:
                targets = torch.as_tensor(targets).clone()
            except (TypeError, ValueError, RuntimeError) as err:
                raise InvalidInputError(f"GradVac state: targets is not a tensor ({err})") from None
            shape = tuple(targets.shape)
            if targets.ndim != 3 or shape[1] != shape[2] or not targets.is_floating_point():
                raise InvalidInputError(
                    f"GradVac state: targets must be a float [G, K, K] tensor, got {list(shape)}"
                )
            for key, axis in (("groups", 0), ("tasks", 1)):
                names = state[key]
                if names is not None and len(names) != shape[axis]:
                    raise InvalidInputError(
                        f"GradVac state: targets {list(shape)} do not match {len(names)} {key} "
                        f"{names}"
                    )
            # Targets are EMAs of cosines: finite and in [-1, 1] (slack for rounding). A NaN
            # target compares false with every cosine, so GradVac would silently act like Sum.
            bad = ~(targets.abs() <= 1.0 + 1e-3)
            if bool(bad.any()):
                g, i, j = (int(x) for x in bad.nonzero()[0])
                raise InvalidInputError(
                    f"GradVac state: targets[{g}, {i}, {j}] = {float(targets[g, i, j])}; targets "
                    "are moving averages of cosines, finite and in [-1, 1]: the state is damaged"
                )
        self.beta = float(beta)
        self.eps = float(eps)
        self._targets = targets

    def __repr__(self) -> str:
        return f"GradVac(beta={self.beta}, eps={self.eps}, seed={self.seed})"
