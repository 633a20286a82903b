"""Benchmark of shared-prefix scoring: scoring time / a bare forward over the same sequences.

For each question an audit scores its answer, paraphrased answer and perturbed answers under the
same prompt. The scoring side is :func:`audit.metrics.evaluate` with ``generate=False`` on the
forget and retain splits (every scored metric: prob, nll, exact match, truth ratio, margin), which
runs each question's prompt once and each token answers share once (:func:`unlearn.scoring.shared_prefix_scores`). The reference
side is a bare no-grad forward, logits discarded, over the same pairs as *unshared* sequences
(prompt + answer each), sorted by length, in batches of the same size. The two timings are
interleaved (order alternating), so load on a shared machine hits both alike; the script prints
the per-round ratios of wall-clock and of process CPU time (steadier on a loaded machine), their
medians, ``uptime`` before, after and per round, and the peak resident memory of
each side (VmHWM, reset through /proc/self/clear_refs before each timing) together with the
largest key/value cache one scoring step holds.

Run: ``python bench/prefix_bench.py --model smollm2-135m --benchmark world:forget10`` and
``python bench/prefix_bench.py --model smollm2-135m --benchmark tofu:forget10 --tofu PATH --forget 100``
(``--forget`` / ``--retain`` limit the rows; defaults: every forget row, 100 retain rows).
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import subprocess
import time

import benchlib
import torch


def uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return benchlib.load_text()


def pairs_of(bench) -> list[tuple[str, str]]:
    """Every distinct (question, answer text) pair evaluate scores on forget and retain without
    generation: answer, paraphrased answer, perturbed answers."""
    out = {}
    for r in bench.forget + bench.retain:
        for a in [r["answer"], r["paraphrased_answer"], *r["perturbed_answer"]]:
            out[(r["question"], a)] = None
    return list(out)


@torch.no_grad()
def bare_forward(model, examples, pad: int, batch_size: int) -> None:
    """The reference: length-sorted batches of the full sequences, logits computed and dropped."""
    from unlearn.data.format import collate

    model.eval()
    order = sorted(range(len(examples)), key=lambda i: -len(examples[i].input_ids))
    for start in range(0, len(order), batch_size):
        batch = collate([examples[i] for i in order[start:start + batch_size]], pad)
        model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])


def cache_bytes(model, examples, batch_size: int) -> int:
    """Bytes of the largest key/value cache scoring can hold at once, an upper bound from the
    shapes: a question batch's prefixes, plus two levels of the answers' radix tree (the level
    being run and the one it continues), each at most one row per answer of the batch's questions
    and the longest sequence wide (float32 here)."""
    from unlearn.scoring import prefix_cut

    cfg = model.config
    heads = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
    per_token = 2 * cfg.num_hidden_layers * heads * (cfg.hidden_size // cfg.num_attention_heads) * 4
    per_question: dict = {}
    for e in examples:
        key = tuple(e.input_ids[:prefix_cut(e)])
        per_question[key] = per_question.get(key, 0) + 1
    longest_prefix = max(len(p) for p in per_question)
    longest = max(len(e.input_ids) for e in examples)
    return per_token * batch_size * (longest_prefix + 2 * max(per_question.values()) * longest)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--benchmark", default="world:forget10")
    parser.add_argument("--tofu", default=None, help="folder with TOFU's JSON files (tofu:* benchmarks)")
    parser.add_argument("--forget", type=int, default=None, help="forget rows (default all)")
    parser.add_argument("--retain", type=int, default=100, help="retain rows (default 100)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    from audit.metrics import evaluate
    from audit.metrics.passes import model_max_length
    from unlearn.data.benchmarks import Benchmark, load_benchmark
    from unlearn.data.format import encode_qa, pad_id_of
    from unlearn.loading import load_model

    kwargs = {"path": args.tofu} if args.tofu else {}
    full = load_benchmark(args.benchmark, **kwargs) if kwargs else load_benchmark(args.benchmark)
    bench = Benchmark(full.name, full.forget[:args.forget], full.retain[:args.retain])
    model, tok = load_model(args.model, None)
    model.eval()
    pairs = pairs_of(bench)
    limit = model_max_length(model)
    examples = [encode_qa(tok, q, a, limit) for q, a in pairs]
    pad = pad_id_of(tok)
    tokens = sum(len(e.input_ids) for e in examples)
    prompts = {q for q, _ in pairs}
    print(f"{args.model} on {bench!r}: {len(examples)} sequences, {tokens} tokens, {len(prompts)} distinct "
          f"prompts; batch size {args.batch_size}, {torch.get_num_threads()} threads")
    print("before:", uptime())

    splits = [name for name in ("forget", "retain") if getattr(bench, name)]

    def score():
        evaluate(model, tok, bench, generate=False, splits=splits, batch_size=args.batch_size)

    def bare():
        bare_forward(model, examples, pad, args.batch_size)

    warm = Benchmark(bench.name, bench.forget[:2], bench.retain[:2])
    evaluate(model, tok, warm, generate=False, splits=splits, batch_size=args.batch_size)
    bare_forward(model, examples[:14], pad, args.batch_size)  # warm-up (allocator, kernels), not timed
    wall = {"score": [], "bare": []}
    cpu = {"score": [], "bare": []}
    peaks = {"score": 0.0, "bare": 0.0}
    for r in range(args.rounds):
        for name in (("bare", "score") if r % 2 == 0 else ("score", "bare")):
            fn = score if name == "score" else bare
            with contextlib.suppress(OSError):   # without clear_refs, the peak since the start
                benchlib.reset_peak()
            t, c = time.perf_counter(), time.process_time()
            fn()
            wall[name].append(time.perf_counter() - t)
            cpu[name].append(time.process_time() - c)
            peaks[name] = max(peaks[name], benchlib.status_bytes("VmHWM") / 2**20)
        print(f"round {r}: score {wall['score'][-1]:.1f} s ({cpu['score'][-1]:.1f} s CPU), bare "
              f"{wall['bare'][-1]:.1f} s ({cpu['bare'][-1]:.1f} s CPU), ratio "
              f"{wall['score'][-1] / wall['bare'][-1]:.3f} (CPU {cpu['score'][-1] / cpu['bare'][-1]:.3f}); "
              f"{uptime()}", flush=True)
    for label, t in (("wall", wall), ("CPU", cpu)):
        ratios = [s / b for s, b in zip(t["score"], t["bare"])]
        print(f"{label}: median score {statistics.median(t['score']):.1f} s, bare {statistics.median(t['bare']):.1f} s; "
              f"ratio median {statistics.median(ratios):.3f} (rounds: {', '.join(f'{x:.3f}' for x in ratios)})")
    print(f"peak resident memory: score {peaks['score']:.0f} MiB, bare {peaks['bare']:.0f} MiB; "
          f"largest KV cache per step {cache_bytes(model, examples, args.batch_size) / 2**20:.1f} MiB")
    print("after:", uptime())


if __name__ == "__main__":
    main()
