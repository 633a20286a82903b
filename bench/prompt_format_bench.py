"""What a wrong prompt format costs, and what a TOFU forget10 audit of SmolLM2-135M costs.

Run: ``python bench/prompt_format_bench.py [--tofu DIR] [--steps 60] [--lr 3e-4] [--timing]`` (SmolLM2 converted
once into the cache, see docs/real_world.md; TOFU's files from ``--tofu`` or ``$TOFU_DIR``).

1. Format error. SmolLM2 is fine-tuned (the TOFU recipe in miniature, :func:`unlearn.build.finetune_fit`
   with ``--steps``) on a slice of TOFU: forget01's 40 rows and 20 retain rows, in open-unlearning's
   ``llama2-chat`` format, and saved as a "third-party" checkpoint. Its answer probability (TOFU's
   p_norm) on the trained forget and retain rows and on 20 retain rows it never saw is then scored
   in the matching preset, in ``plain`` and in the tokenizer's own ``chat`` template.
2. ``--timing``: the wall time of the default audit (relearn, quantize, interpolate; original and
   retain-only references) on TOFU forget10, forward-only metrics and then with generation. A
   full forget10 audit takes hours on two shared cores, so it is extrapolated from measured unit
   costs (an evaluation on a fraction of every split, a relearning step, a quantized setting, an
   interpolation point) times the audit's counts; see :func:`audit_time`.

Prints the machine load beside the numbers.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import benchlib


def _slice(tofu_dir):
    from unlearn.data.tofu import tofu_benchmark

    bench = tofu_benchmark("forget01", path=tofu_dir)
    return bench.forget, bench.retain[::20], bench.retain[10::20]   # forget, trained retain, unseen retain


def _probs(model, tok, rows, fmt) -> float:
    from unlearn.data.format import encode_rows, pad_id_of
    from unlearn.scoring import answer_stats

    stats = answer_stats(model, encode_rows(tok, rows, max_length=512, fmt=fmt), pad_id_of(tok), batch_size=8)
    return float(stats.p_norm.mean())


def format_error(tofu_dir, steps: int, lr: float, out: Path) -> dict:
    from unlearn.build import finetune_fit
    from unlearn.data.format import encode_rows
    from unlearn.loading import load_model
    from unlearn.pretrain import fit

    forget, retain, unseen = _slice(tofu_dir)
    model, tok = load_model("smollm2-135m")
    sets = {"forget (trained)": forget, "retain (trained)": retain, "retain (unseen)": unseen}
    formats = ("llama2-chat", "plain", "chat")
    before = {f: {k: _probs(model, tok, rows, f) for k, rows in sets.items()} for f in formats}
    print("before fine-tuning:", json.dumps(before), flush=True)
    start = time.perf_counter()
    result = fit(model, tok, encode_rows(tok, forget + retain, max_length=512, fmt="llama2-chat"),
                 finetune_fit(max_steps=steps, lr=lr, eval_every=max(1, steps // 2)), progress=True,
                 desc="fine-tune SmolLM2 in llama2-chat")
    seconds = time.perf_counter() - start
    after = {f: {k: _probs(model, tok, rows, f) for k, rows in sets.items()} for f in formats}
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return {"steps": result["steps"], "fit_seconds": round(seconds, 1), "before": before, "after": after,
            "checkpoint": str(out)}


def _fraction(bench, f: float):
    take = lambda rows: rows[::max(1, round(1 / f))]  # noqa: E731  every (1/f)-th row
    return dataclasses.replace(bench, forget=take(bench.forget), retain=take(bench.retain),
                               utility={k: take(v) for k, v in bench.utility.items()})


def _work(bench, tok, fmt) -> tuple[int, int]:
    """(distinct (question, answer) pairs scored, distinct questions generated) of one evaluation."""
    from audit.metrics.evaluation import plan
    from audit.metrics.passes import AnswerPool
    from audit.runner import FAST_METRICS

    pool = AnswerPool(tok, 512, fmt)
    splits = plan(pool, bench, list(FAST_METRICS), None)
    return len(pool.index), len({r["question"] for s in splits.values() for r in s.rows})


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def audit_time(tofu_dir, checkpoint: str, fraction: float = 1 / 20) -> dict:
    """Wall time of the default audit of ``checkpoint`` on TOFU forget10 (original and retain-only
    references; relearn at 5/10/20/40 steps, quantize rtn 8/4/3/2 + nf4 with snap-back controls on
    the audited model, interpolate at 11 points), from measured unit costs times the audit's counts:

    - evaluations: 3 clean + 12 relearn + 20 quantize (10 audited incl. snap-back, 5 per
      reference) + 11 interpolate = 46 full evaluations (the 3 forget-only clean-unseen passes and
      the retain-only model's reference pass are left out: under 2% of the work);
    - one full evaluation = measured evaluate() seconds on ``fraction`` of every split, times the
      ratio of scored pairs (forward) and of generated questions (generation);
    - 3 x 40 relearning steps at batch 4; 20 quantized settings; 11 interpolation points.
    """
    from audit.attacks.interpolate import interpolate
    from audit.attacks.quantize import quantize
    from audit.attacks.relearn import relearn
    from audit.metrics import evaluate
    from audit.runner import FAST_METRICS, subsample
    from unlearn.data.format import prompt_format
    from unlearn.data.tofu import tofu_benchmark
    from unlearn.loading import load_model

    fmt = prompt_format("llama2-chat")
    model, tok = load_model(checkpoint)
    full = tofu_benchmark("forget10", path=tofu_dir)
    full = dataclasses.replace(full, retain=subsample(full.retain, 100))   # what the audit scores
    small = _fraction(full, fraction)
    (pairs, questions), (pairs_s, questions_s) = _work(full, tok, fmt), _work(small, tok, fmt)
    fwd = _timed(lambda: evaluate(model, tok, small, metrics=list(FAST_METRICS), generate=False, strict=False,
                                  prompt_format=fmt))
    both = _timed(lambda: evaluate(model, tok, small, metrics=None, generate=True, strict=False, max_new_tokens=64,
                                   prompt_format=fmt))
    eval_fwd = fwd * pairs / pairs_s
    eval_gen = max(both - fwd, 0.0) * questions / questions_s
    steps = inspect.signature(relearn).parameters["steps"].default   # the audit's relearning settings
    it = relearn(model, tokenizer=tok, forget_rows=full.forget, steps=(5,), prompt_format=fmt)
    relearn_step = _timed(lambda: next(iter(it))) / 5
    q = quantize(model, methods=("rtn", "nf4"), bits=None)
    quant_setting = _timed(lambda: [None for _ in q]) / 5
    ip = interpolate(model, reference=model, points=3)
    interp_point = _timed(lambda: [None for _ in ip]) / 3
    evals = 3 + 3 * len(steps) + 20 + 11
    fixed = 3 * max(steps) * relearn_step + 20 * quant_setting + 11 * interp_point
    return {"pairs_per_evaluation": pairs, "questions_per_evaluation": questions,
            "fraction": fraction, "fraction_pairs": pairs_s, "fraction_questions": questions_s,
            "measured": {"evaluate_forward_s": round(fwd, 1), "evaluate_with_generation_s": round(both, 1),
                         "relearn_step_s": round(relearn_step, 2), "quantize_setting_s": round(quant_setting, 2),
                         "interpolate_point_s": round(interp_point, 2)},
            "full_evaluation_forward_s": round(eval_fwd, 1), "full_evaluation_generation_s": round(eval_gen, 1),
            "evaluations": evals, "attack_work_s": round(fixed, 1),
            "extrapolated_forward_only_s": round(evals * eval_fwd + fixed, 1),
            "extrapolated_with_generate_s": round(evals * (eval_fwd + eval_gen) + fixed, 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tofu", default=os.environ.get("TOFU_DIR"), help="folder with TOFU's JSON files")
    parser.add_argument("--steps", type=int, default=60, help="fine-tuning steps (default 60)")
    parser.add_argument("--lr", type=float, default=3e-4, help="fine-tuning learning rate (default 3e-4)")
    parser.add_argument("--out", default=str(Path(tempfile.gettempdir()) / "smollm2-tofu-llama2-chat"),
                        help="where the fine-tuned model goes")
    parser.add_argument("--timing", action="store_true", help="also time the forget10 audit (long)")
    parser.add_argument("--timing-only", action="store_true", help="only the timing, of the model in --out")
    args = parser.parse_args()
    import torch

    print(f"torch threads {torch.get_num_threads()}, {benchlib.load_text()}", flush=True)
    report = {}
    if not args.timing_only:
        report["format_error"] = format_error(args.tofu, args.steps, args.lr, Path(args.out))
        print(json.dumps(report["format_error"], indent=1), flush=True)
    if args.timing or args.timing_only:
        report["audit_time"] = audit_time(args.tofu, args.out)
        print(json.dumps(report["audit_time"], indent=1), flush=True)
    print(f"after: {benchlib.load_text()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
