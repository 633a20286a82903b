"""Data parallel for the unlearning loop: the processes of an ``accelerate`` / ``torchrun`` launch.

Every process draws the same step batch and takes the micro-batches i = rank, rank + N, ... of it
(``grad_accum`` must be a multiple of N). A backprop step sums the processes' gradients,
g = sum_i grad f_i (the single-process accumulation), before the update; a zeroth-order step sums
their probe losses, so every process sees the same f(p + mu z) - f(p - mu z) and, with z drawn
from the shared seed, makes the same update. The optimizer is reached only through its public
hooks (:meth:`~unlearn.optim.optimizer.BasinOptimizer.takes_gradient`, ``backward``,
``step(None)``). Sophia and SAM (closures inside the step) do not run data parallel.
"""

from __future__ import annotations

import os

import torch

from unlearn.errors import require
from unlearn.optim.estimators import forward_losses


class DataParallel:
    """The processes of a data-parallel launch (accelerate sets them up): rank, size, device, and
    the two sums a step needs."""

    def __init__(self, cpu: bool = False):
        from accelerate import Accelerator  # deferred: accelerate is needed only by a launch

        self.accelerator = Accelerator(cpu=cpu)  # without cpu=True accelerate runs one CPU process alone
        self.rank, self.size = self.accelerator.process_index, self.accelerator.num_processes
        self.device = self.accelerator.device
        self.main = self.accelerator.is_main_process

    @staticmethod
    def launched() -> bool:
        """Whether this process is one of several (a launcher set WORLD_SIZE > 1)."""
        return int(os.environ.get("WORLD_SIZE", "1")) > 1

    def mine(self, n_micro: int) -> list[int]:
        return list(range(self.rank, n_micro, self.size))

    def sum_grads(self, params) -> None:
        """g <- sum over processes of g, for every parameter that has a gradient."""
        import torch.distributed as dist

        for p in params:
            if p.grad is not None:
                dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)

    def sum_value(self, value: float) -> float:
        import torch.distributed as dist

        t = torch.tensor([value], dtype=torch.float64, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return float(t.item())

    def barrier(self) -> None:
        self.accelerator.wait_for_everyone()


def data_parallel_step(dp: DataParallel, optimizer, closure, n_micro: int) -> float:
    """One optimizer step over this process's micro-batches, summed over the processes."""
    mine = dp.mine(n_micro)
    if optimizer.takes_gradient():                       # g = sum_i grad f_i over every process
        local = optimizer.backward(lambda k: closure(mine[k]), len(mine))
        dp.sum_grads(p for group in optimizer.param_groups for p in group["params"])
        optimizer.step(None)                             # the update from the summed .grad
        return dp.sum_value(local)
    # zeroth order: each probe's loss is the sum over processes; n_micro=1 carries it whole
    return optimizer.step(lambda _: dp.sum_value(forward_losses(lambda i: closure(mine[i]), len(mine))),
                          n_micro=1)


def check_data_parallel(dp: DataParallel, grad_accum: int, optimizer) -> None:
    """Refuse a launch the data-parallel step cannot run exactly."""
    require(grad_accum % dp.size == 0,
            f"with {dp.size} processes, grad_accum ({grad_accum}) must be a multiple of {dp.size}: "
            f"each process takes grad_accum / {dp.size} of a step's micro-batches (e.g. --grad-accum {dp.size})")
    for phase in optimizer.phases:
        require(optimizer.takes_gradient(phase) or optimizer.is_zeroth_order(phase),
                f"optimizer {optimizer.name!r} (phase {phase!r}) does not run data parallel: only "
                "backprop (first-order, compressed) and zeroth-order steps do; run it in one process")
