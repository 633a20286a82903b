"""P6: basin's multiple-choice scorer against lm-eval's ``acc`` on the same work.

The work: N four-way questions (the fixture task ``tests/fixtures/lmeval/mc4.jsonl`` repeated to N,
WMDP's / MMLU's prompt, letter options), one model, one batch size. Timed, after one warm-up run
of each (imports, dataset cache, first-call allocations excluded):

- lm-eval: ``audit.metrics.lmeval.run_lmeval`` (``lm_eval.simple_evaluate`` in-process on an
  ``HFLM`` wrapping the model object, local YAML task), end to end as a user calls it;
- basin: ``audit.metrics.lmeval.mc_predictions`` (reads nothing from disk twice: the rows are
  read from the JSONL file inside the timed call, as lm-eval reads its data set).

P6 = basin time / lm-eval time (goal <= 1.0); both must pick the same option for every question.

Run: ``python bench/lmeval_bench.py`` (a random-init tiny Llama, about 20 s) or
``python bench/lmeval_bench.py --model smollm2-135m`` (the converted SmolLM2, about a minute).
Prints the machine load next to the numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import benchlib
import torch

FIXTURE = benchlib.ROOT / "tests" / "fixtures" / "lmeval" / "mc4.jsonl"


def _model(name: str):
    from unlearn.loading import load_model
    from unlearn.models import build_model

    if name in ("tiny", "small", "micro"):
        from unlearn.data.world import World
        from unlearn.tokenizer import train_tokenizer, world_training_texts

        tok = train_tokenizer(world_training_texts(World()), vocab_size=2048)
        return build_model(name, tok, torch.Generator().manual_seed(0)), tok
    return load_model(name)


def main(argv=None) -> dict:
    from audit.metrics import lmeval

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="tiny", help="tiny / small (random init) or a model name / folder")
    p.add_argument("--questions", type=int, default=200)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)

    model, tok = _model(args.model)
    model.eval()
    base = [json.loads(line) for line in FIXTURE.read_text().splitlines() if line.strip()]
    rows = [base[i % len(base)] for i in range(args.questions)]
    work = Path(tempfile.mkdtemp(prefix="lmeval-bench-"))
    data = work / "mc.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    lmeval.write_mc_task(work, "bench_mc", data)

    def run_lm_eval():
        _, results = lmeval.run_lmeval(model, tok, "bench_mc", include_path=work,
                                       batch_size=args.batch_size, log_samples=True)
        return lmeval.lmeval_choices(results, "bench_mc")

    def run_basin():
        return lmeval.mc_predictions(model, tok, lmeval.read_mc_rows(data), batch_size=args.batch_size)[0]

    times = {"lm_eval": [], "basin": []}
    picks = {}
    for name, fn in (("lm_eval", run_lm_eval), ("basin", run_basin)):
        picks[name] = fn()                                        # warm-up
    for _ in range(args.repeats):                                 # interleaved: same load for both
        for name, fn in (("lm_eval", run_lm_eval), ("basin", run_basin)):
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    same = bool((picks["lm_eval"] == picks["basin"]).all())
    med = {k: statistics.median(v) for k, v in times.items()}
    out = {"model": args.model, "questions": args.questions, "batch_size": args.batch_size,
           "threads": torch.get_num_threads(), "load_1min": round(os.getloadavg()[0], 2),
           "lm_eval_s": round(med["lm_eval"], 3), "basin_s": round(med["basin"], 3),
           "P6": round(med["basin"] / med["lm_eval"], 3), "same_choices": same}
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
