"""Zeroth-order (ZO) estimation: a descent signal from loss values alone, at inference memory.

Randomized gradient estimate with q directions u_i and smoothing radius mu (Nesterov & Spokoiny
2017; ZO-Bench, Zhang et al. 2024, arXiv 2402.11592):

    central difference   g = (1/q) sum_i [f(p + mu u_i) - f(p - mu u_i)] / (2 mu) * s * u_i
    forward difference   g = (1/q) sum_i [f(p + mu u_i) - f(p)] / mu * s * u_i

- ``directions="gaussian"``: u_i ~ N(0, I), s = 1.
- ``directions="sphere"``: u_i uniform on the unit sphere of the whole perturbed parameter
  vector (a Gaussian draw divided by its norm over all perturbed tensors), s = d, the number of
  perturbed parameters; without s the estimate would be d times too small. With the same mu a
  sphere probe is sqrt(d) times shorter than a Gaussian one, so scale mu up accordingly.

E[g] is the gradient of the *smoothed* loss f_mu(p) = E_v f(p + mu v) (v ~ N(0, I) for Gaussian
directions, v uniform in the unit ball for sphere directions): ZO descent is descent on a
randomly smoothed loss, the link the paper draws to robustness ("Downgrade to Upgrade", ICLR
2026, arXiv 2510.00761). On a quadratic, f_mu and f have the same gradient.

Random-sign control (``coefficients="random-sign"``). The finite-difference coefficient
c_i = [f(p + mu u_i) - f(p - mu u_i)] / (2 mu) is the only place the loss enters g. Replacing it
by c_i = sign_scale * e_i, e_i = +-1 a fair coin seeded by (seed, step, direction), keeps
everything else (the same directions u_i, the same s, q and chain) and removes all loss
information: the update is a random walk along the ZO directions, E[g] = 0, with
||g|| = sign_scale * s * ||(1/q) sum_i e_i u_i|| (about sign_scale * sqrt(d / q) for Gaussian
directions). It controls for the *noise* a ZO step injects, separating it from what ZO
*estimates* (a noise-matched control). No probes are run; the step's loss is f(p).

Memory (MeZO, Malladi et al. 2023, arXiv 2305.17333): u is never stored. Each tensor is cut into
blocks of ``BLOCK`` elements (on the CPU; one block per tensor on other devices). Block c of
tensor j in direction i at step t has its own seed, derived from (optimizer seed, t, i, j, c) (a
tensor's first block uses (seed, t, i, j)), and a dedicated ``torch.Generator`` regenerates its
N(0, I) draw for every pass: perturb (+mu u), the minus move (-2 mu u), and restore (+mu u) fused
with building g. No ``.grad`` is allocated; besides the weights, a ZO step holds a few block-sized
scratch buffers per worker thread and, while the optimizer updates a tensor, that tensor's g.
All micro-batches of a step are evaluated at the same perturbed weights, so gradient
accumulation is exact.

Speed. A step costs the forward passes plus three Gaussian draws of every perturbed parameter
(the generator dominates the per-parameter work). Blocks are independent, so each pass runs its
blocks on ``workers`` threads (torch kernels release the GIL); the moves of a block are done
while its draw is in cache. Which thread draws a block never changes the numbers: same seed,
same bits, for any number of workers. ``keep_directions`` trades memory for speed: True keeps
each draw (in the parameter's dtype) from the first pass of a step to the last, so every
parameter is drawn once per step instead of three times, with the same bits as regenerating;
"bfloat16" keeps them rounded to bfloat16 (half the memory for float32 weights; the directions
are then bfloat16-rounded Gaussians, so the run differs). Extra memory: q x the perturbed
parameters' size in that dtype, held from the first probe to the update.

Bit-exact restore. Floating-point addition is not invertible: in fp32, fl(fl(p + z) - 2z) + z
differs from p in about half of the entries (by an ulp or so), and even fl(fl(p + z) - z)
differs where p + z crosses into a larger binade (|p + z| >= the next power of two above |p|),
since the sum then keeps one bit less. So the -2 mu u move is done as two unit moves through p
(restore, then -mu u), and with ``exact_restore=True`` (the default) each move records, per
block, the few entries its reverse move would not return exactly (found by computing the
reverse move on a scratch copy) and writes their saved values back on the way home. Weights come
back bit-for-bit in any dtype. The cost is memory for those entries (int32 index + value: 8
bytes each) while a probe is out; how many there are depends on mu against the weights' size
(about 7% of entries per side for mu = 1e-3 Gaussian probes on weights of std 0.02, about 1% on
weights of size 1; almost none for sphere probes). ``exact_restore=False`` skips the bookkeeping
(plain MeZO): the weights then drift by an ulp here and there per step, the same size as the
rounding of the update itself.
"""

from __future__ import annotations

import math
import os
import re
import threading
from concurrent.futures import ThreadPoolExecutor

import torch

from unlearn.errors import BasinError
from unlearn.optim.estimators import Estimate, Estimator, NamedParams, forward_losses
from unlearn.optim.rng import derive_seed, generator

DIRECTIONS = ("gaussian", "sphere")
DIFFERENCES = ("central", "forward")
COEFFICIENTS = ("finite-difference", "random-sign")
KEEP_DIRECTIONS = (False, True, "bfloat16")

# elements per draw block on the CPU: part of what a seed means, so fixed (changing it changes
# every draw of tensors larger than one block)
BLOCK = 1 << 16

# entries a reverse move would not restore exactly: (flat indices in the block, original values)
Exceptions = tuple[torch.Tensor, torch.Tensor]

_INT_OF_SIZE = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def _bits(t: torch.Tensor) -> torch.Tensor:
    """The tensor's bit patterns as integers (so -0.0 != +0.0 and NaNs compare by payload)."""
    return t.view(_INT_OF_SIZE[t.element_size()])


# ----------------------------------------------------------------------------- per-thread scratch

_local = threading.local()
_buffers: dict = {}          # (thread, name, dtype, device) -> scratch buffer, for one pass


def _scratch(name: str, n: int, like: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """This thread's reusable buffer ``name`` of ``n`` elements (grown on demand): the moves of a
    block allocate nothing, so the allocator never hands back fresh pages mid-pass. Every pass
    ends with :func:`_release`, so no scratch is held through a forward pass."""
    dtype = dtype or like.dtype
    key = (threading.get_ident(), name, dtype, like.device)
    buf = _buffers.get(key)
    if buf is None or buf.numel() < n:
        buf = _buffers[key] = torch.empty(n, dtype=dtype, device=like.device)
    return buf[:n]


def _release() -> None:
    """Free every thread's scratch (called between passes, when no worker is running)."""
    _buffers.clear()


def _seeded(seed: int, device: torch.device) -> torch.Generator:
    """This thread's generator for ``device``, reseeded (a CPU reseed costs a few microseconds)."""
    gens = _local.__dict__.setdefault("generators", {})
    gen = gens.get(device)
    if gen is None:
        gen = gens[device] = torch.Generator(device=device)
    return gen.manual_seed(seed)


_pools: dict[tuple[int, int], ThreadPoolExecutor] = {}


def _pool(workers: int) -> ThreadPoolExecutor:
    """A pool of ``workers`` threads for this process (a forked child makes its own) whose
    kernels run single-threaded: the pool is the parallelism. (Nested intra-op teams would put
    a thread barrier in every block's kernels, which stalls whenever a core is busy elsewhere.)
    ``torch.set_num_threads`` also sets the default for threads started later, so that default
    is put back once every worker has started."""
    key = (os.getpid(), workers)
    if key not in _pools:
        intra = torch.get_num_threads()
        started = threading.Barrier(workers)
        pool = ThreadPoolExecutor(workers, thread_name_prefix="basin-zo",
                                  initializer=torch.set_num_threads, initargs=(1,))
        list(pool.map(lambda _: started.wait(), range(workers)))
        reset = threading.Thread(target=torch.set_num_threads, args=(intra,))
        reset.start()
        reset.join()
        _pools[key] = pool
    return _pools[key]


# ----------------------------------------------------------------------------- one block's moves

def shift(p: torch.Tensor, z: torch.Tensor, sign: int, exact: bool) -> Exceptions | None:
    """p <- fl(p + sign * z). With ``exact``, return the entries where the reverse move
    fl(new - sign * z) would not give back p's bits, with their current values. Indices are
    stored in the narrowest integer type that holds them (int16 for a CPU block, offset by
    2^15), since they are most of the memory a probe holds."""
    exceptions = None
    if exact:
        back = _scratch("back", p.numel(), p)
        (torch.add if sign > 0 else torch.sub)(p, z, out=back)           # the move, on a copy
        (torch.sub if sign > 0 else torch.add)(back, z, out=back)        # and back again
        differs = _scratch("differs", p.numel(), p, torch.bool)
        torch.ne(_bits(back), _bits(p), out=differs)
        bad = differs.nonzero().view(-1)
        if bad.numel():
            values = p[bad]
            exceptions = (_narrow(bad, p.numel()), values)
    if sign > 0:
        p.add_(z)
    else:
        p.sub_(z)
    return exceptions


def _narrow(index: torch.Tensor, n: int) -> torch.Tensor:
    if n <= 1 << 16:
        return index.sub_(1 << 15).to(torch.int16)
    return index.to(torch.int32) if n < 1 << 31 else index


def _widen(index: torch.Tensor) -> torch.Tensor:
    return index.to(torch.int32).add_(1 << 15) if index.dtype == torch.int16 else index


def unshift(p: torch.Tensor, z: torch.Tensor, sign: int, exceptions: Exceptions | None) -> None:
    """Undo :func:`shift`: p <- fl(p - sign * z), then write back the recorded exceptions."""
    if sign > 0:
        p.sub_(z)
    else:
        p.add_(z)
    if exceptions is not None:
        p[_widen(exceptions[0])] = exceptions[1]


class _Done:
    """An already computed result with the ``result()`` of a future."""

    def __init__(self, value):
        self.value = value

    def result(self):
        return self.value


def _without_grad(fn):
    """``fn`` under ``torch.no_grad()`` in whichever thread runs it (grad mode is per thread)."""
    def run(item):
        with torch.no_grad():
            return fn(item)
    return run


class ZerothOrder(Estimator):
    """Randomized finite-difference estimator (see the module docstring for the equations).

    Parameters: ``q`` directions per step; smoothing radius ``mu``; ``directions`` "gaussian"
    or "sphere"; ``difference`` "central" (2q forward passes) or "forward" (q + 1); ``perturb``
    a regular expression over parameter names selecting the tensors to perturb and update (None:
    every trainable tensor), e.g. ``r"mlp\\."`` for the MLP weights only; ``exact_restore`` as
    in the module docstring; ``coefficients`` "finite-difference" (ZO) or "random-sign" (the
    noise-matched control: c_i = +-``sign_scale``, no loss information); ``keep_directions``
    False, True or "bfloat16" (memory for speed, see the module docstring); ``workers`` threads
    for the per-parameter passes (None: torch's intra-op thread count; the numbers do not depend
    on it). The step's loss is f(p) for forward differences and random signs, and the mean of
    (f(p + mu u) + f(p - mu u)) / 2, which is f(p) + O(mu^2), for central ones.
    """

    kind = "zo"

    def __init__(self, q: int = 1, mu: float = 1e-3, directions: str = "gaussian",
                 difference: str = "central", perturb: str | None = None, exact_restore: bool = True,
                 coefficients: str = "finite-difference", sign_scale: float = 1.0,
                 keep_directions: bool | str = False, workers: int | None = None):
        self.q, self.mu, self.directions, self.difference = q, mu, directions, difference
        self.perturb, self.exact_restore = perturb, exact_restore
        self.coefficients, self.sign_scale = coefficients, sign_scale
        self.keep_directions, self.workers = keep_directions, workers
        self._selected: NamedParams = []
        self.dim = 0

    def bind(self, params: NamedParams) -> None:
        pattern = re.compile(self.perturb) if self.perturb is not None else None
        self._selected = [(j, n, p) for j, n, p in params if pattern is None or pattern.search(n)]
        if not self._selected:
            raise BasinError(f"perturb={self.perturb!r} matches no trainable parameter; names look like "
                             f"{', '.join(n for _, n, _ in params[:3])}")
        for _, name, p in self._selected:
            if not p.is_contiguous():
                raise BasinError(f"zeroth-order probes need contiguous parameters; {name} is not")
        self.dim = sum(p.numel() for _, _, p in self._selected)

    @property
    def selected(self) -> list[str]:
        """Names of the perturbed parameters."""
        return [n for _, n, _ in self._selected]

    # -- directions ----------------------------------------------------------------------------
    @staticmethod
    def blocks(p: torch.Tensor) -> list[tuple[int, int, int]]:
        """(c, start, end) of each draw block of ``p`` (flattened)."""
        size = BLOCK if p.device.type == "cpu" else max(p.numel(), 1)
        return [(c, a, min(a + size, p.numel())) for c, a in enumerate(range(0, p.numel(), size))]

    @staticmethod
    def block_seed(seed: int, t: int, i: int, j: int, c: int) -> int:
        """Seed of block c of tensor j, direction i, step t (block 0: the tensor's own seed)."""
        return derive_seed(seed, t, "zo", i, j) if c == 0 else derive_seed(seed, t, "zo", i, j, c)

    def direction(self, p: torch.Tensor, t: int, i: int, j: int, seed: int) -> torch.Tensor:
        """Raw draw for direction i, tensor j at step t: N(0, I), regenerated from its seeds."""
        out = torch.empty(p.numel(), dtype=p.dtype, device=p.device)
        for c, a, b in self.blocks(p):
            out[a:b].normal_(generator=generator(self.block_seed(seed, t, i, j, c), p.device))
        return out.view(p.shape)

    def _draw(self, i: int, k: int, c: int, a: int, b: int, p: torch.Tensor) -> torch.Tensor:
        """Direction i's draw for block c of selected tensor k, as a flat tensor of p's dtype
        (a scratch buffer: valid until this thread's next draw)."""
        if self.keep_directions:
            block = self._kept[(i, k)][a:b]
            if (i, k, c) not in self._filled:
                self._fill(block, i, k, c, p)
                self._filled.add((i, k, c))
            return block if block.dtype == p.dtype else _scratch("draw", b - a, p).copy_(block)
        return self._fill(_scratch("draw", b - a, p), i, k, c, p)

    def _scaled(self, draw: torch.Tensor, radius: float) -> torch.Tensor:
        """radius * draw: in place on a scratch draw, into scratch "z" for a kept one."""
        if self.keep_directions:
            return torch.mul(draw, radius, out=_scratch("z", draw.numel(), draw))
        return draw.mul_(radius)

    def _fill(self, out: torch.Tensor, i: int, k: int, c: int, p: torch.Tensor) -> torch.Tensor:
        if out.dtype != p.dtype:                      # kept in bfloat16: draw in p's dtype, round
            return out.copy_(self._fill(_scratch("draw", out.numel(), p), i, k, c, p))
        j = self._selected[k][0]
        return out.normal_(generator=_seeded(self.block_seed(self._seed, self._t, i, j, c), p.device))

    # -- passes over every block -----------------------------------------------------------------
    def _items(self, ks=None):
        ks = range(len(self._selected)) if ks is None else ks
        return [(k, c, a, b) for k in ks for c, a, b in self.blocks(self._selected[k][2])]

    def _submit(self, fn, items) -> list:
        """Start fn(item) for every block on the worker threads; returns a list of waitables
        (with one worker, or off the CPU, it runs them here, in order). Block (k, c) always goes
        to worker (k + c) mod workers, so the thread that records a block's exceptions is the one
        that frees them (the C allocator keeps an arena per thread: memory freed by another
        thread would not be reused, and the resident set would grow)."""
        workers = self.workers or torch.get_num_threads()
        if workers <= 1 or self._selected[0][2].device.type != "cpu":
            return [_Done([fn(item) for item in items])]
        pool = _pool(workers)
        shares = [[item for item in items if (item[0] + item[1]) % workers == w] for w in range(workers)]
        return [pool.submit(_without_grad(lambda share: [fn(item) for item in share]), share)
                for share in shares if share]

    def _run(self, fn, items) -> list:
        """fn(item) for every block; the results in the order of ``items``."""
        out = dict(r for f in self._submit(lambda item: (item, fn(item)), items) for r in f.result())
        _release()
        return [out[item] for item in items]

    def _weights(self) -> list[float]:
        """Per direction, the factor w_i turning the raw draw into u_i = w_i * draw:
        1 for Gaussian directions, 1 / ||draw_i|| (norm over all perturbed tensors) for sphere."""
        if self.directions == "gaussian":
            return [1.0] * self.q
        out = []
        for i in range(self.q):
            def square(item, i=i):
                k, c, a, b = item
                draw = self._draw(i, k, c, a, b, self._selected[k][2])
                return float(torch.linalg.vector_norm(draw, dtype=torch.float64)) ** 2
            out.append(1.0 / math.sqrt(sum(self._run(square, self._items()))))
        return out

    def _move(self, i: int, radius: float, undo: int, do: int) -> None:
        """Every block: undo the move of sign ``undo`` (0: none), then move by ``do`` * radius *
        draw_i (0: none), recording the exceptions of the new move."""
        exact = self.exact_restore

        def move(item):
            k, c, a, b = item
            p = self._selected[k][2]
            block = p.view(-1)[a:b]
            z = self._scaled(self._draw(i, k, c, a, b, p), radius)
            if undo:
                unshift(block, z, undo, self._exceptions.pop((k, c), None))
            if do:
                exceptions = shift(block, z, do, exact)
                if exceptions is not None:
                    self._exceptions[(k, c)] = exceptions
        self._run(move, self._items())

    # -- one step ------------------------------------------------------------------------------
    def estimate(self, params, closure, n_micro, t, seed, **step_options):
        if closure is None:
            raise BasinError("zeroth-order optimizers need a closure: call step(closure, n_micro)")
        self._t, self._seed = t, seed
        self._exceptions: dict = {}
        self._kept: dict = {}                          # (i, k) -> kept draws (allocated here: the
        self._filled: set = set()                      # workers fill blocks of one tensor at once)
        if self.keep_directions:
            for k, (_, _, p) in enumerate(self._selected):
                dtype = torch.bfloat16 if self.keep_directions == "bfloat16" else p.dtype
                for i in range(self.q):
                    self._kept[(i, k)] = torch.empty(p.numel(), dtype=dtype, device=p.device)
        with torch.no_grad():
            return self._probe(closure, n_micro)

    def _probe(self, closure, n_micro) -> Estimate:
        mu, weights = self.mu, self._weights()
        if self.coefficients == "random-sign":
            return Estimate(forward_losses(closure, n_micro), self._estimate(self._random_signs(), weights, 0))
        f0 = forward_losses(closure, n_micro) if self.difference == "forward" else None
        coefs, centres = [], []
        for i in range(self.q):
            radius = mu * weights[i]
            self._move(i, radius, 0, +1)                                       # p + mu u
            f_plus = forward_losses(closure, n_micro)
            if self.difference == "central":
                self._move(i, radius, +1, -1)                                  # p - mu u
                f_minus = forward_losses(closure, n_micro)
                coefs.append((f_plus - f_minus) / (2 * mu))
                centres.append((f_plus + f_minus) / 2)
                side = -1
            else:
                coefs.append((f_plus - f0) / mu)
                side = +1
            if i < self.q - 1:                                                 # back to p
                self._move(i, radius, side, 0)
        loss = f0 if f0 is not None else sum(centres) / len(centres)
        return Estimate(loss, self._estimate(coefs, weights, side))

    def _random_signs(self) -> list[float]:
        """c_i = sign_scale * e_i, e_i = +-1 from a generator seeded by (seed, step, direction)."""
        out = []
        for i in range(self.q):
            coin = torch.randint(0, 2, (1,), generator=generator(derive_seed(self._seed, self._t, "zo-sign", i)))
            out.append(self.sign_scale * (2.0 * float(coin) - 1.0))
        return out

    def _estimate(self, coefs, weights, side):
        """Per tensor: undo the last probe (when ``side`` is not 0) and build
        g = (s/q) sum_i c_i w_i draw_i  (c_i the finite-difference coefficient, s = 1 or d)
        in the same pass over its blocks, then hand g to the optimizer. Non-finite losses skip
        the update (weights are restored)."""
        s = self.dim if self.directions == "sphere" else 1
        last = self.q - 1
        finite = all(math.isfinite(c) for c in coefs)

        def start(k):                                 # tensor k's pass, on the workers
            p = self._selected[k][2]
            g = torch.empty_like(p) if finite else None

            def restore_and_build(item):
                _, c, a, b = item
                draw = self._draw(last, k, c, a, b, p)
                block = p.view(-1)[a:b]
                if side:
                    z = torch.mul(draw, self.mu * weights[last], out=_scratch("z", b - a, p))   # draw is used below
                    unshift(block, z, side, self._exceptions.pop((k, c), None))
                if g is None:
                    return
                gb = g.view(-1)[a:b]
                torch.mul(draw, coefs[last] * s * weights[last] / self.q, out=gb)
                for i in range(last):
                    gb.add_(self._draw(i, k, c, a, b, p), alpha=coefs[i] * s * weights[i] / self.q)
            return g, self._submit(restore_and_build, self._items([k]))

        n = len(self._selected)
        pending = start(0)
        for k in range(n):                            # tensor k+1's pass runs while the
            g, work = pending                         # optimizer updates tensor k (two g's at most)
            for w in work:
                w.result()
            pending = start(k + 1) if k + 1 < n else None
            for i in range(self.q):                   # kept draws of this tensor are done with
                self._kept.pop((i, k), None)
            if g is not None:
                yield self._selected[k][0], self._selected[k][2], g, {}
        _release()
