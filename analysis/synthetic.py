"""Synthetic result records, for tests and for trying the report without running anything.

These numbers are made up from a simple generative story; they are *not* results. Every record
carries ``"synthetic": true`` and a run name starting with ``synthetic-``, and a report built from
them says so at the top.

Story: every unlearned optimizer reaches a clean forget probability ``clean[opt]`` and, under an
attack of strength s, recovers a fraction ``robust[opt]``-dependent share of the gap to the attacked
original, plus Gaussian seed noise of standard deviation ``noise``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Sequence

import numpy as np

from unlearn.records import append_records

DEFAULT_OPTIMIZERS = ("adam", "signadam", "zo-adam", "hybrid")
# share of the knowledge a strong attack brings back (1 = all), per optimizer
DEFAULT_LEAK = {"sophia": 0.6, "sgd": 0.6, "adam": 0.6, "signsgd": 0.45, "signadam": 0.45,
                "zo-sgd": 0.3, "zo-adam": 0.3, "adazo": 0.3, "hybrid": 0.2, "sam": 0.4}
RELEARN_STEPS = (10, 25, 50, 100)
QUANT_BITS = (8, 4, 3)
NOISE_SCALES = (0.001, 0.01, 0.03)
ALPHAS = tuple(round(a, 2) for a in np.linspace(0, 1, 11))


def _rec(model, attack, setting, metric, value, split, seed, **extra) -> dict:
    return {"model": model, "attack": attack, "setting": setting, "metric": metric,
            "value": float(value), "split": split, "seed": int(seed), "synthetic": True, **extra}


def _original_under(attack: str, x: float) -> float:
    """Forget probability of the attacked original (the ceiling)."""
    if attack == "quantize":
        return {8: 0.98, 4: 0.9, 3: 0.55}.get(int(x), 0.9)
    if attack == "noise":
        return 0.98 - 6 * x
    return 0.98


def _retain_under(attack: str, x: float) -> float:
    """Forget probability of the attacked retain-only model (the floor)."""
    if attack == "relearn":
        return 0.15 + 0.1 * (1 - math.exp(-x / 40))
    return 0.15


def _strength(attack: str, x: float) -> float:
    """0..1: how hard the attack pulls the unlearned model toward the attacked original."""
    if attack == "relearn":
        return 1 - math.exp(-x / 30)
    if attack == "quantize":
        return {8: 0.05, 4: 0.5, 3: 0.8}.get(int(x), 0.5)
    return min(1.0, 20 * x)


def synthetic_records(optimizers: Sequence[str] = DEFAULT_OPTIMIZERS, seeds: Sequence[int] = (0, 1, 2),
                      *, leak: dict | None = None, noise: float = 0.01, objective: str = "npo",
                      rng_seed: int = 0, basins: bool = True) -> list[dict]:
    """Made-up records for ``optimizers`` x ``seeds`` plus the original and retain-only references:
    clean prob / exact_match / model_utility / forget_quality, relearn, quantize and noise curves on
    ``forget`` and ``forget_unseen``, and (``basins``) interpolation and plane losses."""
    rng = np.random.default_rng(rng_seed)
    leak = {**DEFAULT_LEAK, **(leak or {})}
    out: list[dict] = []
    attacks = [("relearn", f"steps={s}", s) for s in RELEARN_STEPS]
    attacks += [("quantize", f"rtn-{b}bit", b) for b in QUANT_BITS]
    attacks += [("noise", f"scale={s:g}", s) for s in NOISE_SCALES]

    for role, model, base, util in (("original", "synthetic-original", 0.98, 0.62),
                                    ("retain", "synthetic-retain", 0.15, 0.61)):
        for seed in seeds:
            for split in ("forget", "forget_unseen"):
                out.append(_rec(model, "none", "", "prob", base + rng.normal(0, noise), split, seed,
                                role=role, run=model))
                out.append(_rec(model, "none", "", "exact_match", base * 0.95, split, seed, role=role, run=model))
            out.append(_rec(model, "none", "", "prob", 0.97 + rng.normal(0, noise), "retain", seed, role=role, run=model))
            out.append(_rec(model, "none", "", "model_utility", util + rng.normal(0, noise), "retain",
                            seed, role=role, run=model))
            for attack, setting, x in attacks:
                ref = _original_under(attack, x) if role == "original" else _retain_under(attack, x)
                for split in ("forget", "forget_unseen"):
                    out.append(_rec(model, attack, setting, "prob", ref + rng.normal(0, noise), split, seed,
                                    role=role, run=model, x=x))
                out.append(_rec(model, attack, setting, "model_utility", util - 0.05 * _strength(attack, x),
                                "retain", seed, role=role, run=model, x=x))

    for opt in optimizers:
        share = leak.get(opt, 0.5)
        for seed in seeds:
            run = f"synthetic-{opt}-s{seed}"
            common = dict(role="unlearned", optimizer=opt, objective=objective, run=run, lr=1e-5)
            clean = 0.05 + 0.02 * rng.random()
            util = 0.6 - 0.1 * (opt.startswith("zo") or opt == "adazo") + rng.normal(0, noise)
            for split in ("forget", "forget_unseen"):
                out.append(_rec(run, "none", "", "prob", clean + rng.normal(0, noise), split, seed, **common))
                out.append(_rec(run, "none", "", "exact_match", max(0.0, clean - 0.03), split, seed, **common))
            out.append(_rec(run, "none", "", "prob", 0.93 + rng.normal(0, noise), "retain", seed, **common))
            out.append(_rec(run, "none", "", "model_utility", util, "retain", seed, **common))
            out.append(_rec(run, "none", "", "forget_quality", 0.3 if opt == "hybrid" else 0.01, "forget",
                            seed, **common))
            for attack, setting, x in attacks:
                ceiling = _original_under(attack, x)
                back = share * _strength(attack, x)
                for split in ("forget", "forget_unseen"):
                    scale = 0.8 if split == "forget_unseen" else 1.0
                    value = clean + scale * back * (ceiling - clean) + rng.normal(0, noise)
                    out.append(_rec(run, attack, setting, "prob", value, split, seed, x=x, **common))
                out.append(_rec(run, attack, setting, "model_utility", util - 0.05 * _strength(attack, x),
                                "retain", seed, x=x, **common))
    if basins:
        out += _basin_records(optimizers, seeds, rng, noise, objective)
    return out


def _basin_records(optimizers, seeds, rng, noise, objective) -> list[dict]:
    out = []
    pairs = [f"original->{o}" for o in optimizers[:2]]
    for pair in pairs:
        for seed in seeds:
            for a in ALPHAS:
                forget = 0.3 + 3.0 * a + 0.8 * math.sin(math.pi * a) + rng.normal(0, noise)
                retain = 0.4 + 0.05 * a + 0.3 * math.sin(math.pi * a) + rng.normal(0, noise)
                for split, v in (("forget", forget), ("retain", retain)):
                    out.append(_rec(pair, "interpolate", f"alpha={a:g}", "loss", v, split, seed,
                                    role="unlearned", objective=objective, x=a, run=f"synthetic-{pair}"))
    if len(optimizers) >= 2:
        plane = f"original | {optimizers[0]} | {optimizers[-1]}"
        grid = np.round(np.linspace(-0.25, 1.25, 9), 3)
        for seed in seeds[:1]:
            for x in grid:
                for y in grid:
                    base = (x - 0.1) ** 2 + (y - 0.1) ** 2
                    for split, v in (("forget", 0.3 + 1.5 * abs(x + y) + base), ("retain", 0.4 + 1.5 * base)):
                        out.append(_rec(plane, "plane", f"x={x:g},y={y:g}", "loss", v, split, seed,
                                        role="unlearned", objective=objective, run="synthetic-plane"))
    return out


def write_synthetic_runs(root: str | Path, records: list[dict] | None = None) -> list[Path]:
    """Write records as run folders under ``root`` (one per ``run``): ``config.json`` (optimizer,
    objective, seed, lr), ``records.jsonl`` and ``manifest.json``. Returns the folders."""
    root = Path(root)
    records = synthetic_records() if records is None else records
    by_run: dict[str, list[dict]] = {}
    for r in records:
        by_run.setdefault(r.get("run") or r["model"], []).append(r)
    folders = []
    for run, recs in by_run.items():
        folder = root / run
        folder.mkdir(parents=True, exist_ok=True)
        first = recs[0]
        config = {"synthetic": True, "seed": first["seed"]}
        for key in ("optimizer", "objective", "lr", "role"):
            if key in first:
                config[key] = first[key]
        # keep the config fields out of the records, so loading must join them from config.json
        slim = [{k: v for k, v in r.items() if k not in ("optimizer", "objective", "lr")} for r in recs]
        (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        (folder / "manifest.json").write_text(json.dumps({"synthetic": True, "note": "made-up records"}) + "\n")
        append_records(folder / "records.jsonl", slim)
        folders.append(folder)
    return folders


def _per_seed(value, seeds: Sequence[int]) -> list[float]:
    """A number per seed: a scalar repeats, a sequence gives one value per seed in order."""
    if isinstance(value, (int, float)):
        return [float(value)] * len(seeds)
    values = [float(v) for v in value]
    if len(values) != len(seeds):
        raise ValueError(f"{len(values)} values for {len(seeds)} seeds")
    return values


def comparison_records(arms: dict, *, seeds: Sequence[int] = (0, 1, 2), original: dict | None = None,
                       gold: dict | None = None, metric: str = "prob", objective: str = "npo") -> list[dict]:
    """Hand-set records for verdict tests: every number is given, nothing is drawn at random.

    ``arms`` maps an optimizer name to ``{"clean": forget value, "retain": retain value,
    "attacked": {(attack, setting): forget value under that attack}, "lr": ..., "recipe": ...,
    "margin": clean latent margin, "margin_attacked": {(attack, setting): margin}, "seeds": ...}``;
    values are scalars or one number per seed. The same forget numbers are written on ``forget``
    and ``forget_unseen``. ``original`` and ``gold`` (the retain-only model) take ``clean``,
    ``retain`` and ``attacked`` the same way (defaults: original 0.95 clean, 0.95 under every
    attack; gold 0.05 everywhere; retain 0.95). Several recipes of one optimizer are given as
    ``"name@anything"`` keys with their own ``lr`` / ``recipe``.
    """
    out: list[dict] = []
    refs = {"original": {"clean": 0.95, "retain": 0.95, "default_attacked": 0.95, **(original or {})},
            "retain": {"clean": 0.05, "retain": 0.95, "default_attacked": 0.05, **(gold or {})}}
    keys = sorted({k for arm in arms.values() for k in arm.get("attacked", {})}
                  | {k for ref in refs.values() for k in ref.get("attacked", {})})
    for role, ref in refs.items():
        for i, seed in enumerate(seeds):
            base = dict(role=role, run=f"synthetic-{role}", synthetic=True)
            for split in ("forget", "forget_unseen"):
                out.append(_rec(role, "none", "", metric, _per_seed(ref["clean"], seeds)[i], split, seed, **base))
            out.append(_rec(role, "none", "", metric, _per_seed(ref["retain"], seeds)[i], "retain", seed, **base))
            for attack, setting in keys:
                v = ref.get("attacked", {}).get((attack, setting), ref["default_attacked"])
                for split in ("forget", "forget_unseen"):
                    out.append(_rec(role, attack, setting, metric, _per_seed(v, seeds)[i], split, seed, **base))
    for key, arm in arms.items():
        opt = key.split("@")[0]
        arm_seeds = arm.get("seeds", seeds)
        for i, seed in enumerate(arm_seeds):
            run = f"synthetic-{key}-s{seed}"
            common = dict(role="unlearned", optimizer=opt, objective=objective, run=run,
                          lr=arm.get("lr", 1e-3), synthetic=True)
            if "recipe" in arm:
                common["recipe"] = arm["recipe"]
            for split in ("forget", "forget_unseen"):
                out.append(_rec(run, "none", "", metric, _per_seed(arm["clean"], arm_seeds)[i], split, seed, **common))
                if "margin" in arm:
                    out.append(_rec(run, "none", "", "margin", _per_seed(arm["margin"], arm_seeds)[i], split,
                                    seed, **common))
            out.append(_rec(run, "none", "", metric, _per_seed(arm.get("retain", 0.95), arm_seeds)[i], "retain",
                            seed, **common))
            for (attack, setting), v in arm.get("attacked", {}).items():
                for split in ("forget", "forget_unseen"):
                    out.append(_rec(run, attack, setting, metric, _per_seed(v, arm_seeds)[i], split, seed, **common))
                    m = arm.get("margin_attacked", {}).get((attack, setting))
                    if m is not None:
                        out.append(_rec(run, attack, setting, "margin", _per_seed(m, arm_seeds)[i], split, seed,
                                        **common))
    return out
