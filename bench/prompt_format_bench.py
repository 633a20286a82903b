"""What a wrong prompt format costs, and what a TOFU forget10 audit of SmolLM2-135M costs.

Run: ``python bench/prompt_format_bench.py [--tofu DIR] [--steps 60] [--timing]`` (SmolLM2 converted
once into the cache, see docs/real_world.md; TOFU's files from ``--tofu`` or ``$TOFU_DIR``).

1. Format error. SmolLM2 is fine-tuned (the TOFU recipe in miniature, :func:`unlearn.build.finetune_fit`
   with ``--steps``) on a slice of TOFU: forget01's 40 rows and 20 retain rows, in open-unlearning's
   ``llama2-chat`` format, and saved as a "third-party" checkpoint. Its answer probability (TOFU's
   p_norm) on the trained forget and retain rows and on 20 retain rows it never saw is then scored
   in the matching preset, in ``plain`` and in the tokenizer's own ``chat`` template.
2. ``--timing``: the wall time of the default audit (relearn, quantize, interpolate; original and
   retain-only references) on TOFU forget10, forward-only metrics and then with generation. A
   full forget10 audit takes hours on two shared cores, so it is run on fractions f of every split
   (the same fraction of forget, retain, real_authors and world_facts rows) and extrapolated with
   T(f) = a + b f fitted through two fractions: a is what does not grow with the rows (relearning
   steps, weight quantization, model copies), b f what does (scoring and generation).

Prints the machine load beside the numbers.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def _slice(tofu_dir):
    from unlearn.data.tofu import tofu_benchmark

    bench = tofu_benchmark("forget01", path=tofu_dir)
    return bench.forget, bench.retain[::20], bench.retain[10::20]   # forget, trained retain, unseen retain


def _probs(model, tok, rows, fmt) -> float:
    from unlearn.data.format import encode_rows, pad_id_of
    from unlearn.scoring import answer_stats

    stats = answer_stats(model, encode_rows(tok, rows, max_length=512, fmt=fmt), pad_id_of(tok), batch_size=8)
    return float(stats.p_norm.mean())


def format_error(tofu_dir, steps: int, out: Path) -> dict:
    from unlearn.build import finetune_fit
    from unlearn.data.format import encode_rows
    from unlearn.models import load_model
    from unlearn.pretrain import fit

    forget, retain, unseen = _slice(tofu_dir)
    model, tok = load_model("smollm2-135m")
    sets = {"forget (trained)": forget, "retain (trained)": retain, "retain (unseen)": unseen}
    formats = ("llama2-chat", "plain", "chat")
    before = {f: {k: _probs(model, tok, rows, f) for k, rows in sets.items()} for f in formats}
    start = time.perf_counter()
    result = fit(model, tok, encode_rows(tok, forget + retain, max_length=512, fmt="llama2-chat"),
                 finetune_fit(max_steps=steps), progress=True, desc="fine-tune SmolLM2 in llama2-chat")
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


def audit_time(tofu_dir, checkpoint: str, fractions=(1 / 40, 1 / 20)) -> dict:
    from audit.runner import AuditConfig, audit
    from unlearn.data.tofu import tofu_benchmark

    full = tofu_benchmark("forget10", path=tofu_dir)
    out = {}
    for generate in (False, True):
        times = {}
        for f in fractions:
            bench = _fraction(full, f)
            config = AuditConfig(benchmark=bench, prompt_format="llama2-chat", generate=generate,
                                 metrics=None if generate else AuditConfig().metrics, device="cpu",
                                 max_retain=round(100 * f))
            start = time.perf_counter()
            df = audit(checkpoint, original=checkpoint, retain="smollm2-135m", config=config, progress=False)
            times[f] = time.perf_counter() - start
            print(f"  generate={generate} f={f:.4f}: {times[f]:.0f} s, {len(df)} records, load {_load()}",
                  flush=True)
        (f1, t1), (f2, t2) = sorted(times.items())
        b = (t2 - t1) / (f2 - f1)
        a = t1 - b * f1
        out["generate" if generate else "forward_only"] = {
            "measured_seconds": {f"{k:.4f}": round(v, 1) for k, v in times.items()},
            "fixed_seconds": round(a, 1), "per_full_rows_seconds": round(b, 1),
            "extrapolated_full_seconds": round(a + b, 1)}
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tofu", default=os.environ.get("TOFU_DIR"), help="folder with TOFU's JSON files")
    parser.add_argument("--steps", type=int, default=60, help="fine-tuning steps (default 60)")
    parser.add_argument("--out", default=str(Path(tempfile.gettempdir()) / "smollm2-tofu-llama2-chat"),
                        help="where the fine-tuned model goes")
    parser.add_argument("--timing", action="store_true", help="also time the forget10 audit (long)")
    args = parser.parse_args()
    import torch

    print(f"torch threads {torch.get_num_threads()}, load {_load()}", flush=True)
    report = {"format_error": format_error(args.tofu, args.steps, Path(args.out))}
    print(json.dumps(report["format_error"], indent=1), flush=True)
    if args.timing:
        report["audit_time"] = audit_time(args.tofu, args.out)
        print(json.dumps(report["audit_time"], indent=1), flush=True)
    print(f"load after: {_load()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
