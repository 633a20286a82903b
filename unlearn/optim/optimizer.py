"""``BasinOptimizer``: the one ``torch.optim.Optimizer`` that hosts every optimizer tier.

An optimizer is a set of *phases* and a *schedule* saying which phase runs at step t. A phase
pairs an estimator (where the descent signal comes from: backprop, zeroth-order probes, SAM,
curvature) with a chain of update transforms (what is done to it: Adam moments, sign,
quantization, clipping, learning rate). Every named optimizer has one phase, except ``hybrid``,
which alternates a first-order phase ("fo") and a zeroth-order one ("zo").

One step::

    t = number of steps taken so far
    phase = schedule(t)
    loss, signals = phase.estimator.estimate(params, closure, n_micro, t, seed)
    for each (p, g) in signals:                       # lazily, one tensor at a time
        p -= lr * chain(g)                            # lr read from p's param group now
    return loss

Per-tensor state lives in ``self.state[p]`` under names prefixed by a *state namespace*: ""
for single-phase optimizers and for the hybrid's ``shared`` policy, "fo/" or "zo/" for its
``separate`` policy. ``state_dict`` adds the step counter and identity of the optimizer to
torch's state dict; all randomness is derived from (seed, step), so that is all a resume needs.

After each step, :attr:`BasinOptimizer.diagnostics` holds per-step numbers for the run records:
``update_rms`` = ||Delta p|| / (lr sqrt(D)) over the D updated coordinates (the root mean square
of the chain's direction, in units of the learning rate; a zeroth-order run's value is the
``noise_std`` that makes ``adam-noise`` a noise-matched control), and whatever the links tally
(``sophia_clip_fraction``: the fraction of coordinates Sophia clipped).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Callable

import torch

from unlearn.errors import BasinError, require
from unlearn.optim.estimators import Estimator
from unlearn.optim.rng import derive_seed, generator
from unlearn.optim.transforms import Link, UpdateContext

STATE_POLICIES = ("separate", "shared")


@dataclass
class Phase:
    """One way of stepping: an estimator, a chain of links and a learning-rate multiplier."""

    name: str
    estimator: Estimator
    chain: list[Link]
    lr_scale: float = 1.0


class Constant:
    """The same phase at every step."""

    def __init__(self, phase: str):
        self.phase = phase

    def __call__(self, t: int) -> str:
        return self.phase


class Alternating:
    """Blocks of ``n_fo`` "fo" steps and ``n_zo`` "zo" steps, alternating, aligned from the end
    so that the run of ``total`` steps always *ends* with a full "zo" block (the paper's hybrid,
    "Downgrade to Upgrade", ICLR 2026). Counting r = total - 1 - t steps back from the last one,
    step t is "zo" when r mod (n_fo + n_zo) < n_zo. The first block may be partial.

    >>> s = Alternating(2, 3, total=7)
    >>> "".join(s(t)[0] for t in range(7))
    'zzffzzz'
    """

    def __init__(self, n_fo: int, n_zo: int, total: int):
        self.n_fo, self.n_zo, self.total = n_fo, n_zo, total

    def __call__(self, t: int) -> str:
        if t >= self.total:
            raise BasinError(f"hybrid was built for total_steps={self.total} (its blocks are aligned "
                             f"to end with a zeroth-order block) and cannot take step {t + 1}; "
                             "build it with the real number of steps")
        r = self.total - 1 - t
        return "zo" if r % (self.n_fo + self.n_zo) < self.n_zo else "fo"


@dataclass
class Plan:
    """What a named optimizer is: its phases, a schedule over them and a state policy."""

    phases: dict[str, Phase]
    schedule: Callable[[int], str]
    state_policy: str = "shared"
    description: dict = field(default_factory=dict)


def named_parameters(params) -> list[tuple[str, torch.Tensor]]:
    """``params`` as (name, tensor) pairs: an ``nn.Module`` (its trainable parameters), an
    iterable of (name, tensor) pairs, or an iterable of tensors (named ``param<i>``)."""
    if isinstance(params, torch.nn.Module):
        pairs = [(n, p) for n, p in params.named_parameters() if p.requires_grad]
    else:
        pairs = []
        for i, item in enumerate(params):
            if isinstance(item, torch.Tensor):
                pairs.append((f"param{i}", item))
            elif isinstance(item, (tuple, list)) and len(item) == 2 and isinstance(item[1], torch.Tensor):
                pairs.append((str(item[0]), item[1]))
            else:
                raise BasinError("params must be an nn.Module, (name, tensor) pairs or tensors; "
                                 f"got an item of type {type(item).__name__}")
    seen, unique = set(), []
    for name, p in pairs:
        if id(p) not in seen:
            require(p.is_floating_point(), f"parameter {name} is {p.dtype}; only floating-point tensors train")
            seen.add(id(p))
            unique.append((name, p))
    require(bool(unique), "no trainable parameters: every parameter has requires_grad=False "
            "(unfreeze some, or pass them explicitly)")
    return unique


def _ratio(name: str, num: float, den: float) -> float:
    """A tally as a number: root mean square for ``*_rms`` tallies (sum of squares / count),
    else a fraction (count / total)."""
    return (num / den) ** 0.5 if name.endswith("_rms") else num / den


class BasinOptimizer(torch.optim.Optimizer):
    """Every optimizer tier behind the ``torch.optim.Optimizer`` interface; see the module docstring.

    Build one with :func:`unlearn.optim.make_optimizer`. ``step(closure, n_micro=1)`` returns the
    loss as a float; ``closure(i)`` returns micro-batch i's loss (a tensor, or a dict of terms
    summing to it), already divided by ``n_micro``. ``phase`` is the phase the last step ran
    ("fo", "zo", "so", "sam"; before the first step: the phase it will run), for logging after
    ``step``; ``next_phase`` is the phase the next step will run.
    """

    def __init__(self, params, plan: Plan, lr: float = 1e-3, seed: int = 0,
                 total_steps: int | None = None, name: str = "custom"):
        require(isinstance(lr, (int, float)) and lr >= 0, f"lr must be a number >= 0, got {lr!r}")
        require(isinstance(seed, int), f"seed must be an integer, got {seed!r}")
        require(plan.state_policy in STATE_POLICIES,
                f"state policy must be one of {STATE_POLICIES}, got {plan.state_policy!r}")
        pairs = named_parameters(params)
        super().__init__(pairs, {"lr": float(lr)})
        self.plan, self.seed, self.total_steps, self.name = plan, seed, total_steps, name
        self.steps_taken = 0
        self._last_phase: str | None = None
        self.diagnostics: dict[str, float] = {}
        self._params = [(j, n, p) for j, (n, p) in enumerate(pairs)]
        for phase in plan.phases.values():
            phase.estimator.bind(self._params)

    # -- schedule --------------------------------------------------------------------------------
    @property
    def phase(self) -> str:
        """The phase of the last step (before the first step: the phase it will run)."""
        return self._last_phase if self._last_phase is not None else self.next_phase

    @property
    def next_phase(self) -> str:
        """The phase the next step will run (after a hybrid's last step: its last phase)."""
        t = self.steps_taken
        if self.total_steps is not None and t >= self.total_steps:
            t = self.total_steps - 1
        return self.plan.schedule(t)

    def _namespace(self, phase: str) -> str:
        return "" if self.plan.state_policy == "shared" else f"{phase}/"

    # -- the step ----------------------------------------------------------------------------------
    def step(self, closure=None, n_micro: int = 1, **step_options) -> float:
        """One optimizer step; returns the loss (NaN when ``closure`` is None)."""
        require(isinstance(n_micro, int) and n_micro >= 1, f"n_micro must be an integer >= 1, got {n_micro!r}")
        usable = {o for ph in self.plan.phases.values() for o in ph.estimator.step_options}
        unknown = set(step_options) - usable
        require(not unknown, f"step() got option(s) {', '.join(sorted(unknown))} that optimizer "
                f"{self.name!r} does not use")
        t = self.steps_taken
        phase = self.plan.phases[self.plan.schedule(t)]
        if closure is not None:
            self.zero_grad(set_to_none=True)      # grads of the last step go; this step makes its own
        options = {k: v for k, v in step_options.items() if k in phase.estimator.step_options}
        estimate = phase.estimator.estimate(self._params, closure, n_micro, t, self.seed, **options)
        lr_of = {id(p): group["lr"] for group in self.param_groups for p in group["params"]}
        prefix = self._namespace(phase.name)
        tallies: dict[str, list] = {}
        with torch.no_grad():
            for j, p, g, extras in estimate.signals:
                self._apply_chain(phase, prefix, t, j, p, g, extras, lr_of[id(p)] * phase.lr_scale, tallies)
        # read back once per step (numerators are device tensors: no synchronisation per tensor)
        self.diagnostics = {name: _ratio(name, sum(float(x) for x in parts), den)
                            for name, (parts, den) in tallies.items() if den}
        self.steps_taken += 1
        self._last_phase = phase.name
        return estimate.loss

    def _apply_chain(self, phase: Phase, prefix: str, t: int, j: int, p: torch.Tensor,
                     g: torch.Tensor, extras: dict, lr: float, tallies: dict | None = None) -> None:
        """p -= lr * chain(g), with the chain's state buffers for tensor j in this namespace;
        ``tallies`` (name -> [numerators, denominator]) collects the step's diagnostics."""
        tallies = {} if tallies is None else tallies
        state = self.state[p]
        count_key = prefix + "t"
        state[count_key] = state.get(count_key, 0) + 1
        buffers = {}
        for link in phase.chain:
            for name in link.buffers:
                key = prefix + name
                if key not in state:
                    state[key] = torch.zeros_like(p, memory_format=torch.preserve_format)
                buffers[name] = state[key]
        ctx = UpdateContext(lr=lr, t=state[count_key], extras=extras, tallies=tallies,
                            rng=lambda tag: generator(derive_seed(self.seed, t, tag, j), p.device))
        direction = g
        for link in phase.chain:
            direction = link(direction, p, buffers, ctx)
        ctx.tally("update_rms", torch.linalg.vector_norm(direction, dtype=torch.float32).square(), direction.numel())
        p.add_(direction, alpha=-lr)

    # -- checkpoints -------------------------------------------------------------------------------
    def _identity(self) -> dict:
        out = {"name": self.name, "phases": sorted(self.plan.phases), "state_policy": self.plan.state_policy,
               "n_params": len(self._params)}
        if isinstance(self.plan.schedule, Alternating):  # the block layout depends on the total
            out["total_steps"] = self.total_steps
        return out

    def state_dict(self) -> dict:
        """torch's optimizer state (per-tensor buffers and counters, param groups) plus
        ``basin``: the step counter, the seed and the optimizer's identity. Plain types only, so
        ``torch.load(..., weights_only=True)`` reads it."""
        out = super().state_dict()
        out["basin"] = {"steps_taken": self.steps_taken, "seed": self.seed,
                        "last_phase": self._last_phase, **self._identity()}
        return out

    def load_state_dict(self, state_dict: dict) -> None:
        """Restore a :meth:`state_dict` (deep-copied, so the source stays independent)."""
        state_dict = copy.deepcopy(dict(state_dict))
        extra = state_dict.pop("basin", None)
        if extra is None:
            raise BasinError("this optimizer state was not saved by a basin optimizer")
        mine = self._identity()
        theirs = {k: extra.get(k) for k in mine}
        if theirs != mine:
            diff = ", ".join(f"{k}: saved {theirs[k]!r}, now {mine[k]!r}" for k in mine if theirs[k] != mine[k])
            raise BasinError(f"the optimizer state belongs to a different optimizer ({diff}); "
                             "resume with the same optimizer and options")
        super().load_state_dict(state_dict)
        self.steps_taken = int(extra["steps_taken"])
        self.seed = int(extra["seed"])
        self._last_phase = extra.get("last_phase")

    def __repr__(self) -> str:
        phases = "; ".join(f"{name}: {ph.estimator!r} -> {ph.chain!r}" for name, ph in self.plan.phases.items())
        return f"BasinOptimizer({self.name!r}, lr={self.param_groups[0]['lr']}, {phases})"
