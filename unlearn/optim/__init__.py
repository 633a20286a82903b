"""Every optimizer tier of "Downgrade to Upgrade: Optimizer Simplification Enhances Robustness in
LLM Unlearning" (Lang et al., ICLR 2026, arXiv 2510.00761), behind one API::

    from unlearn.optim import OPTIMIZERS, make_optimizer
    opt = make_optimizer("hybrid", model, lr=1e-4, total_steps=200, seed=0)
    loss = opt.step(closure, n_micro=2)     # closure(i): loss of micro-batch i (already / n_micro)

An optimizer is an *estimator* (where the descent signal comes from: backprop, zeroth-order
probes, SAM, Sophia's curvature; :mod:`~unlearn.optim.estimators`,
:mod:`~unlearn.optim.zeroth_order`) feeding a *chain* of per-tensor transforms (Adam moments,
sign, quantization, AdaZO moments, Sophia clipping, weight decay, learning rate;
:mod:`~unlearn.optim.transforms`), hosted by one ``torch.optim.Optimizer`` subclass,
:class:`~unlearn.optim.optimizer.BasinOptimizer`. The named optimizers are listed in
:mod:`~unlearn.optim.aliases`.

Tiers: first order (sgd, adam), compressed first order (signsgd, signadam, qsgd, qadam),
second order (sophia), zeroth order (zo-sgd, zo-adam, adazo), the paper's hybrid, and the
robust-objective baseline sam.
"""

from unlearn.optim.aliases import OPTIMIZERS, make_optimizer
from unlearn.optim.optimizer import BasinOptimizer

__all__ = ["OPTIMIZERS", "make_optimizer", "BasinOptimizer"]
