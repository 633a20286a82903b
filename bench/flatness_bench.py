"""Cost of the flatness measures: one Hessian-vector product (double backward) against one
forward/backward of the same loss, and the standard error of Hutchinson's trace at n probes.

Run: ``python bench/flatness_bench.py --model world:tiny --rows 32 --probes 16`` (any model name
``basin`` loads, e.g. ``smollm2-135m``). The loss is the answer NLL of ``--rows`` evenly spaced
forget rows of the default world (micro-batches of ``--batch-size``). Prints the machine load next
to the numbers; the ratio (HVP time / forward-backward time) is what transfers between machines.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time

import benchlib  # noqa: F401  (environment defaults and basin on sys.path, before torch)
import torch


def main(argv=None) -> None:
    from audit.attacks.flatness import (evenly_spaced, answer_loss, hutchinson_trace, hvp, power_iteration, rademacher,
                                        random_sharpness, working_copy)
    from unlearn.data.benchmarks import load_benchmark
    from unlearn.data.format import encode_rows, pad_id_of
    from unlearn.loading import load_model

    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="world:tiny")
    ap.add_argument("--rows", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--probes", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--iters", type=int, default=0, help="also time a power iteration of this many HVPs")
    args = ap.parse_args(argv)

    model, tok = load_model(args.model, progress=False)
    buffer, params = working_copy(model)
    bench = load_benchmark("world:forget10")
    examples = encode_rows(tok, evenly_spaced(bench.forget, args.rows))
    loss = answer_loss(buffer, examples, pad_id_of(tok), args.batch_size)

    def fwd_bwd():
        for p in params:
            p.grad = None
        with torch.enable_grad():
            for term in loss():
                term.backward()

    def one_hvp():
        hvp(loss, params, rademacher(params, torch.Generator().manual_seed(0)))

    def timed(fn):
        fn()  # warm-up
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return min(times)

    t_fb, t_hvp = timed(fwd_bwd), timed(one_hvp)
    start = time.perf_counter()
    est = hutchinson_trace(loss, params, args.probes, torch.Generator().manual_seed(0))
    t_trace = time.perf_counter() - start
    start = time.perf_counter()
    sharp = random_sharpness(loss, params, 0.01, 5, torch.Generator().manual_seed(0))
    t_sharp = time.perf_counter() - start
    out = {"model": args.model, "params": sum(p.numel() for p in params), "rows": args.rows,
           "forward_backward_s": round(t_fb, 3), "hvp_s": round(t_hvp, 3), "hvp_over_fb": round(t_hvp / t_fb, 2),
           "probes": args.probes, "trace": est.mean, "trace_se": est.se,
           "trace_rel_se": est.se / abs(est.mean) if est.mean else math.nan,
           "sample_sd": est.se * math.sqrt(args.probes), "trace_s": round(t_trace, 2),
           "sharpness_rho0.01_5draws_mean": sharp.mean, "sharpness_max": sharp.max, "sharpness_s": round(t_sharp, 2),
           "threads": torch.get_num_threads(), "load": os.getloadavg()}
    if args.iters:
        start = time.perf_counter()
        eig = power_iteration(loss, params, args.iters, torch.Generator().manual_seed(0))
        out.update({"eig_max": eig.largest, "eig_dominant": eig.dominant, "eig_hvps": eig.iterations,
                    "eig_s": round(time.perf_counter() - start, 2)})
    print(json.dumps(out))


if __name__ == "__main__":
    main()
