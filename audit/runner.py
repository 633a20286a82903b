"""The audit: every attack x every metric on a model, with ceilings and floors, as records.

For the audited model (role ``unlearned``), and, when given, the original model (role
``original``: the ceiling, what the attack leaves of knowledge that was never removed) and the
retain-only model (role ``retain``: the floor, what the attack produces from nothing), the audit
scores the clean model (attack ``none``) and every setting of every attack with the benchmark
metrics. ``interpolate`` runs only for the audited model, on the path from the original to it, or
from another model named by its option ``endpoint`` (a run folder or model: adam -> hybrid, seed 0
-> seed 1); its ``path`` records hold the barrier, the distance ||theta_B - theta_A|| and the
barrier per unit of distance. Diagnostics (``flatness``) write their measured values as records
instead of scoring attacked models.
Records are appended to ``OUT/records.jsonl`` after each setting; a rerun of the same audit skips
what is already there, so an interrupted audit resumes. The audited model is never modified: its
weight hash is checked before and after every attack.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd
import torch
from tqdm.auto import tqdm

from audit.attacks import ATTACKS, Attack, describe_attacks, get_attack
from audit.attacks.common import check_same_architecture
from audit.attacks.interpolate import distance, loss_barrier, plane
from audit.metrics import METRICS, describe_metrics, evaluate, reference_stats
from audit.metrics.lmeval import run_lmeval
from audit.metrics.muse import score_muse
from unlearn.cache import check_writable, portable, write_json_atomic
from unlearn.data.benchmarks import Benchmark, load_benchmark
from unlearn.data.format import (calibration_ids, chat_template_hint, encode_rows, format_spec, prompt_format,
                                 recorded_format)
from unlearn.errors import BasinError, require, require_number
from unlearn.loading import load_model
from unlearn.models import DTYPES, canonical_dtype, check_device_name, resolve_device, weights_hash
from unlearn.optim import OPTIMIZERS
from unlearn.records import append_records, read_records, recipe_of
from unlearn.registry import lookup
from unlearn.runs import OBJECT_MODEL
from unlearn.sources import check_model_source, check_same_shapes

DEFAULT_ATTACKS = ("relearn", "quantize", "interpolate")
# what the audit writes beside the registered metrics, described for the report like them
AUDIT_METRICS = {
    "barrier": {"label": "loss barrier along the path (nats)", "higher_is_better": False, "knowledge": None},
    "barrier_per_distance": {"label": "loss barrier per unit of distance ||θ_B − θ_A||", "higher_is_better": False,
                             "knowledge": None},
    "distance": {"label": "weight-space distance between the path's ends", "higher_is_better": None,
                 "knowledge": None},
    "code_change": {"label": "fraction of quantization codes changed", "higher_is_better": None,
                    "knowledge": None},
    "lmeval_acc": {"label": "lm-eval accuracy", "higher_is_better": True, "knowledge": True},
    "lmeval_acc_norm": {"label": "lm-eval accuracy (length-normalised)", "higher_is_better": True,
                        "knowledge": True},
}
NEEDS_RETAIN = ("forget_quality", "privleak", "privleak_pp", "muse_privleak")
UNSEEN_METRICS = ("prob", "nll", "exact_match", "truth_ratio", "margin", "margin_win")
FAST_METRICS = ("prob", "nll", "exact_match", "truth_ratio", "forget_quality", "mc_accuracy",
                "margin", "margin_win", "mink_auc", "privleak", "muse_auc", "muse_privleak")


@dataclass
class AuditConfig:
    benchmark: str = "world:forget10"
    benchmark_args: dict = field(default_factory=dict)  # loader options, e.g. {"n_people": 10} for world:
    attacks: tuple = DEFAULT_ATTACKS
    attack_args: dict = field(default_factory=dict)
    metrics: tuple | None = FAST_METRICS
    generate: bool = False          # ROUGE, model utility, MUSE VerbMem / KnowMem need greedy generation (slower)
    muse_options: dict = field(default_factory=dict)  # MUSE passes: limit, verbmem_tokens, knowmem_tokens
    lmeval: dict | None = None      # lm-eval on every scored model: {"tasks": [...], "include_path", "limit", ...}
    max_new_tokens: int = 64
    max_retain: int = 100           # retain rows scored (evenly spaced), to keep attacks affordable
    seed: int = 0                   # attack seed (relearning subset, noise draws)
    splits: tuple | None = None     # splits to score (default: all of the benchmark's)
    clean_splits: tuple | None = None  # splits for the clean (unattacked) models (default: splits)
    # also score and attack the original / retain-only models (ceiling, floor): True, False, or the
    # attacks to run on them (they are scored clean too), e.g. ("relearn",) where only that attack's
    # setting (the relearning subset) changes with the attack seed
    score_references: bool | tuple = True
    device: str = "auto"            # auto (cuda if available, else cpu), cpu, cuda, cuda:N, mps, auto-map
    dtype: str = "float32"          # the audited models' weights: float32, bfloat16 or float16
    # how questions and answers are laid out (a preset such as llama3-instruct, a YAML file or a
    # dict of fields; unlearn.data.format); None: the audited run's recorded format, else plain
    prompt_format: str | dict | None = None

    def __post_init__(self):
        if self.prompt_format is not None:
            self.prompt_format = format_spec(self.prompt_format)
        self.device = check_device_name(self.device)
        self.dtype = canonical_dtype(self.dtype, tuple(DTYPES))
        for metric in self.metrics or ():
            lookup(METRICS, metric, "metric")
        # the options are the passes' own keywords, less what the audit passes itself
        for key in self.muse_options:
            lookup(_keywords(score_muse, "model", "tokenizer", "data", "names", "reference", "k", "max_length"),
                   key, "MUSE option")
        if self.lmeval is not None:
            require(isinstance(self.lmeval, dict) and self.lmeval.get("tasks"),
                    "lmeval must be a dict with tasks, e.g. {'tasks': ['mmlu'], 'limit': 100}")
            for key in self.lmeval:
                lookup(_keywords(run_lmeval, "model", "tokenizer"), key, "lm-eval option")


def _keywords(fn, *taken: str) -> dict:
    """The keyword arguments of ``fn`` a caller may set, as a registry (for did-you-mean errors)."""
    return {k: k for k in inspect.signature(fn).parameters if k not in taken}


def _resolve_format(spec, model, out):
    """The audit's prompt format: the one given, else the one ``out`` recorded (a resumed audit),
    else the audited run folder's, else ``plain``. Resuming ``out`` with another format is an error:
    its records were scored in the recorded one."""
    previous = recorded_format(out) if out is not None and (Path(out) / "records.jsonl").exists() else None
    chosen = format_spec(spec if spec is not None else previous if previous is not None
                         else recorded_format(model))
    if previous is not None and format_spec(previous) != chosen:
        raise BasinError(f"{out} holds records scored with prompt format {prompt_format(previous).name!r}; "
                         f"pass that format to resume (or drop --prompt-format), or another --out")
    return chosen


def subsample(rows: list[dict], n: int) -> list[dict]:
    """``n`` rows evenly spaced over ``rows`` (all of them when n <= 0 or there are no more)."""
    if n <= 0 or len(rows) <= n:
        return rows
    step = len(rows) / n
    return [rows[int(i * step)] for i in range(n)]


def _call(attack_name: str, attack: Attack, model, context: dict, args: dict):
    """Call an attack with the context keywords it accepts plus its own options (its signature's
    defaults fill the rest)."""
    accepted = set(inspect.signature(attack.run).parameters)
    kwargs = {k: v for k, v in context.items() if k in accepted and v is not None}
    unknown = set(args) - set(attack.options)
    require(not unknown, f"attack {attack_name!r} takes no option(s) {', '.join(sorted(unknown))}; "
            f"its options: {', '.join(attack.options)}")
    return attack.run(model, **{**kwargs, **args})


def _tier(optimizer: str | None) -> str | None:
    """The optimizer's tier as its recipe declares it (None for models no basin run made)."""
    return OPTIMIZERS[optimizer].tier if optimizer in OPTIMIZERS else None


def _run_info(source) -> dict:
    """Optimizer / objective / seed / original model of a `basin unlearn` run folder."""
    if isinstance(source, (str, Path)) and (Path(source) / "config.json").exists() \
            and (Path(source) / "model").exists():
        cfg = json.loads((Path(source) / "config.json").read_text())
        info = {k: cfg.get(k) for k in ("optimizer", "objective", "seed", "lr", "model")}
        info["recipe"] = recipe_of(cfg) or None  # the run's settings: runs at different ones are never pooled
        if info["model"] == OBJECT_MODEL:  # started from an object: no name to load the original by
            info["model"] = None
        return info
    return {}


def check_audit(config: AuditConfig, model, *, original=None, retain=None, out=None,
                allow_pickle: bool = False) -> None:
    """Refuse an audit before any model is loaded or anything is written: attack names, every
    attack option (its attack must be run; its name and type against the attack's signature; the
    ranges are the attack's own checks, run on the loaded model before the first write), the
    numeric fields, the benchmark, the models each attack needs, the model folders and their
    architectures (from configs and headers, see :func:`unlearn.sources.check_same_shapes`) and
    the output folder."""
    require(isinstance(config.attacks, (list, tuple)) and all(isinstance(a, str) for a in config.attacks),
            f"attacks must be a list of attack names, got {config.attacks!r}")
    for name in config.attacks:
        get_attack(name)
    require(isinstance(config.attack_args, dict), f"attack_args must map attacks to options, got {config.attack_args!r}")
    for name, options in config.attack_args.items():
        attack = get_attack(name)
        require(name in config.attacks, f"--arg {name}.* sets an option of attack {name!r}, which this audit does "
                f"not run (attacks: {', '.join(config.attacks) or 'none'}); add it to --attacks or drop the option")
        require(isinstance(options, dict), f"attack_args[{name!r}] must map options to values, got {options!r}")
        params = inspect.signature(attack.run).parameters
        for key, value in options.items():
            lookup(dict.fromkeys(attack.options), key, f"{name} option")
            problem = _option_type_problem(value, params[key])
            require(problem is None, f"--arg {name}.{key}={value!r}: {problem}")
    if not isinstance(config.score_references, bool):
        require(isinstance(config.score_references, (list, tuple)) and all(
            a in config.attacks for a in config.score_references),
            f"score_references must be true, false or a list of the audit's attacks "
            f"({', '.join(config.attacks)}), got {config.score_references!r}")
    require_number("max_retain", config.max_retain, 0, integer=True)
    require_number("max_new_tokens", config.max_new_tokens, 1, integer=True)
    require_number("seed", config.seed, 0, integer=True)
    load_benchmark(config.benchmark, **config.benchmark_args)  # a bad name or loader option (cheap: no model)
    given = {"original": original, "retain": retain}
    for name in config.attacks:
        for role in get_attack(name).needs:
            require(given.get(role) is not None, f"{name} needs the {role} model: pass --{role} (or audit a basin "
                    "unlearn run folder, which names its original)")
    for role, source in (("audited", model), *given.items()):
        check_model_source(source, allow_pickle=allow_pickle, what=f"the {role} model")
    for role, source in given.items():
        if source is not None:
            check_same_shapes(source, model, f"{role} model and the audited model")
    if out is not None:
        out = Path(out)
        require(not out.exists() or out.is_dir(), f"--out {out} is a file; pass a folder for the audit")
        check_writable(out, "audit folder", "pass a writable --out")
        saved = out / "config.json"
        kind = json.loads(saved.read_text()).get("kind") if saved.is_file() else "audit"
        require(kind == "audit", f"--out {out} holds a basin unlearn run, not an audit; pass another folder "
                f"for the audit (e.g. {out}-audit)")


def _option_type_problem(value, param: inspect.Parameter) -> str | None:
    """Why ``value`` cannot be this attack option, judged from its default and annotation (None: it
    can). Numbers, booleans, strings and lists of them; ranges are left to the attack."""
    default, note = param.default, str(param.annotation)
    many = isinstance(default, (list, tuple)) or "Sequence" in note
    items = list(value) if many and isinstance(value, (list, tuple)) else [value]
    sample = default[0] if isinstance(default, (list, tuple)) and default else default
    if value is None:
        return None if default is None or "None" in note else "must be set (not null)"
    if isinstance(sample, bool) or (sample is None and note.strip() == "bool"):
        ok, want = all(isinstance(v, bool) for v in items), "true or false"
    elif isinstance(sample, (int, float)) or (sample is None and ("int" in note or "float" in note)
                                               and "str" not in note):
        integer = isinstance(sample, int) and "float" not in note
        ok = all(isinstance(v, int if integer else (int, float)) and not isinstance(v, bool) for v in items)
        want = "an integer" if integer else "a number"
    elif isinstance(sample, str) or (sample is None and "str" in note):
        ok, want = all(isinstance(v, str) for v in items), "a name"
    elif "dict" in note:
        ok, want = isinstance(value, dict), "a mapping {key: value}"
    else:
        return None
    if many and not ok:
        want += " or a [list] of them"
    return None if ok else f"must be {want}"


def _load_models(model, tokenizer, original, retain, config: AuditConfig, safety: dict):
    """The audited model, its tokenizer, the references (role -> model) and the attack endpoints
    (attack -> (label, model)) that stand in for a reference; every model an attack needs is
    there and has the audited model's architecture (checked before anything is written)."""
    target, tok = load_model(model, tokenizer, **safety)
    refs = {}
    for role, source in (("original", original), ("retain", retain)):
        if source is not None:
            refs[role] = load_model(source, None if isinstance(source, (str, Path)) else tok, **safety)[0]
    endpoints = {}
    for attack in config.attacks:
        option = get_attack(attack).endpoint
        source = config.attack_args.get(attack, {}).get(option) if option else None
        if source is not None:
            endpoints[attack] = (_model_label(source),
                                 load_model(source, None if isinstance(source, (str, Path)) else tok, **safety)[0])
    for attack in config.attacks:
        for role in get_attack(attack).needs:
            require(role in refs or attack in endpoints,
                    f"{attack} needs the {role} model: pass --{role} (or audit a basin unlearn run folder, which "
                    "names its original)" + (f", or another model as its option {get_attack(attack).endpoint}"
                                            if get_attack(attack).endpoint else ""))
    for role, ref in [*refs.items(), *((f"{a} endpoint", m) for a, (_, m) in endpoints.items())]:
        check_same_architecture(ref, target, f"the {role} model and the audited model")
    return target, tok, refs, endpoints


def _open_out(out: Path | None, config: AuditConfig, model, name: str, original, retain) -> set:
    """Write ``out``/config.json; returns the (role, attack, setting) already recorded there."""
    if out is None:
        return set()
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out / "config.json", {**asdict(config), "model": str(model) if isinstance(
        model, (str, Path)) else name, "original": str(original) if original is not None else None,
        "retain": str(retain) if retain is not None else None, "kind": "audit"})
    if not (out / "records.jsonl").exists():
        return set()
    return {(r.get("role"), r["attack"], r["setting"]) for r in read_records(out / "records.jsonl")}


def _retain_stats(retain_model, tok, bench, config: AuditConfig):
    """The retain-only model's clean per-question statistics (forget quality, MIA references)."""
    _, per_example = evaluate(retain_model, tok, bench, metrics=["truth_ratio", "mink_auc", "muse_auc"],
                              splits=["forget", "holdout"] if bench.holdout else ["forget"],
                              generate=False, strict=False,
                              muse_options=config.muse_options, prompt_format=config.prompt_format)
    return reference_stats(per_example)


def _write_manifest(out: Path, records: list[dict], config: AuditConfig, fmt, seconds: float, fingerprint: str) -> None:
    written = sorted({r["metric"] for r in records})
    extra = {**AUDIT_METRICS, **{k: v for a in config.attacks for k, v in (ATTACKS[a].metrics or {}).items()}}
    write_json_atomic(out / "manifest.json", {"wall_seconds": round(seconds, 2), "model_hash": fingerprint,
                                              "torch": torch.__version__, "prompt_format": fmt.as_dict(),
                                              "describe": {"metrics": {**describe_metrics(written),
                                                                       **{m: extra[m] for m in written if m in extra}},
                                                           "attacks": describe_attacks(config.attacks)}})


def audit(model, tokenizer=None, *, original=None, retain=None, config: AuditConfig | None = None,
          out=None, name: str | None = None, progress: bool = True, allow_pickle: bool = False,
          trust_remote_code: bool = False, **overrides) -> pd.DataFrame:
    """Audit a model; return the records as a DataFrame (and append them to ``out``/records.jsonl).

    ``model``, ``original`` and ``retain`` are names, folders or model objects (see
    :func:`unlearn.loading.load_model`). If ``model`` is a ``basin unlearn`` run folder, its
    original model is taken from the run's config unless ``original`` is given. Checkpoints load
    from safetensors only and without remote code unless ``allow_pickle`` / ``trust_remote_code``.
    ``config.device`` / ``config.dtype`` place every model (names and folders load there; model
    objects are moved and cast in place). ``config.prompt_format`` lays out every prompt (the
    scored pairs and generations of all three models, the relearning rows, GPTQ's calibration);
    when None, the format recorded by the audited run folder (or by ``out``, when resuming) is
    used, else ``plain``.
    """
    config = dataclasses.replace(config or AuditConfig(), **overrides)
    info = _run_info(model)
    if original is None and info.get("model"):
        original = info["model"]
    check_audit(config, model, original=original, retain=retain, out=out, allow_pickle=allow_pickle)
    name = name or (Path(str(model)).name if isinstance(model, (str, Path)) else "model")
    safety = dict(allow_pickle=allow_pickle, trust_remote_code=trust_remote_code, progress=progress,
                  device=resolve_device(config.device), dtype=config.dtype)
    target, tok, refs, endpoints = _load_models(model, tokenizer, original, retain, config, safety)
    bench = load_benchmark(config.benchmark, **config.benchmark_args)
    bench = dataclasses.replace(bench, retain=subsample(bench.retain, config.max_retain))  # keeps MUSE data
    config = dataclasses.replace(config, prompt_format=_resolve_format(config.prompt_format, model, out))
    fmt = prompt_format(config.prompt_format)
    encode_rows(tok, (bench.forget + bench.retain)[:1], fmt=fmt)  # a format the tokenizer cannot render fails here
    for attack in config.attacks:  # bad attack options fail here, before anything is written
        _call(attack, get_attack(attack), target, _context(tok, bench, config, {}, refs.get("original")),
              _options(config, attack, endpoints)).close()
    out = Path(out) if out is not None else None
    done = _open_out(out, config, model, name, original, retain)
    start = time.time()
    fingerprint = weights_hash(target)
    base = {"model": name, "seed": info.get("seed", 0) if info.get("seed") is not None else 0,
            "attack_seed": config.seed, "optimizer": info.get("optimizer"), "objective": info.get("objective"),
            "tier": _tier(info.get("optimizer")), "lr": info.get("lr"), "recipe": info.get("recipe"),
            "prompt_format": fmt.name, "prompt_hint": chat_template_hint(tok, fmt)}
    sources = {"original": original, "retain": retain}
    records: list[dict] = [r for r in (read_records(out / "records.jsonl") if done else [])]

    # the retain-only model's clean per-question truth ratios feed forget quality for every model
    retain_stats = _retain_stats(refs["retain"], tok, bench, config) if "retain" in refs else None
    if "retain" not in refs and config.metrics:
        config = dataclasses.replace(config, metrics=tuple(m for m in config.metrics if m not in NEEDS_RETAIN))
    roles = [("unlearned", target)] + [(r, m) for r, m in refs.items() if config.score_references]
    plan = [(role, m, "none") for role, m in roles]
    for attack in config.attacks:
        plan += [(role, m, attack) for role, m in roles if role in ATTACKS[attack].roles
                 and (role == "unlearned" or isinstance(config.score_references, bool)
                      or attack in config.score_references)]

    bar = tqdm(plan, desc=f"audit {name}", disable=not progress)
    for role, m, attack in bar:
        bar.set_postfix(role=role, attack=attack)
        row_base = {**base, "role": role}
        if role != "unlearned":
            row_base.update({"model": role, "optimizer": None, "objective": None, "tier": None, "lr": None,
                             "recipe": None,
                             "reference": portable(sources[role]) if isinstance(sources[role], (str, Path)) else role})
        new = _audit_one(m, tok, bench, attack, role, refs, config, retain_stats, row_base, done, endpoints)
        if out is not None and new:
            append_records(out / "records.jsonl", new)
        records += new
        if weights_hash(target) != fingerprint:
            raise RuntimeError(f"attack {attack} modified the audited model; this is a bug in basin")
    if out is not None:
        _write_manifest(out, records, config, fmt, time.time() - start, fingerprint)
    return pd.DataFrame(records)


def _score(model, tok, bench, config, retain_stats, base, attack, setting, x, splits=None,
           metrics=None, unseen=None, with_lmeval=True) -> list[dict]:
    """Score a model; with ``unseen`` (forget row indices), also report the forget metrics on
    those rows alone as split ``forget_unseen`` (means of the per-question values)."""
    metrics = metrics or (list(config.metrics) if config.metrics else None)
    recs, per_example = evaluate(model, tok, bench, metrics=metrics, retain_stats=retain_stats,
                                 generate=config.generate, max_new_tokens=config.max_new_tokens,
                                 splits=splits or config.splits, strict=False, muse_options=config.muse_options,
                                 prompt_format=config.prompt_format)
    if config.lmeval is not None and with_lmeval:  # lm-eval's tasks, in process, on this very model
        recs = recs + run_lmeval(model, tok, **{"seed": config.seed, **config.lmeval})[0]
    out = [{**base, **r, "attack": attack, "setting": setting, "x": x} for r in recs]
    if unseen is not None:
        rows = per_example[(per_example["split"] == "forget") & per_example["row"].isin(unseen)]
        for metric in UNSEEN_METRICS:
            if metric in rows and rows[metric].notna().any():
                out.append({**base, "attack": attack, "setting": setting, "x": x, "metric": metric,
                            "split": "forget_unseen", "value": float(rows[metric].mean())})
    return out


def _options(config, attack: str, endpoints: dict) -> dict:
    """The attack's options from the config, with a named endpoint model loaded in place."""
    args = dict(config.attack_args.get(attack, {}))
    if attack in endpoints:
        args[get_attack(attack).endpoint] = endpoints[attack][1]
    return args


def _model_label(source) -> str:
    """A short name for a model: a run folder's optimizer, else the folder's name."""
    info = _run_info(source)
    if info.get("optimizer"):
        return str(info["optimizer"])
    return Path(str(source)).name if isinstance(source, (str, Path)) else "endpoint"


def _context(tok, bench, config, stats, reference) -> dict:
    """What an attack may ask for by keyword (each takes the ones in its signature)."""
    return {"tokenizer": tok, "forget_rows": bench.forget, "retain_rows": bench.retain, "seed": config.seed,
            "stats": stats, "calibration": calibration_ids(tok, bench.retain, config.prompt_format),
            "reference": reference, "prompt_format": config.prompt_format}


def _audit_one(model, tok, bench, attack, role, refs, config, retain_stats, base, done,
               endpoints=None) -> list[dict]:
    if attack == "none":
        if (role, "none", "clean") in done:
            return []
        return _score(model, tok, bench, config, retain_stats, base, "none", "clean", None,
                      splits=config.clean_splits)

    spec = get_attack(attack)
    endpoints = endpoints or {}
    args = _options(config, attack, endpoints)
    stats: dict = {}
    context = _context(tok, bench, config, stats, refs.get("original") if role == "unlearned" else None)
    if spec.diagnostic:  # measured values, not attacked models
        return [{**base, "attack": attack, "setting": setting, "x": x, "metric": metric, "split": split,
                 "value": float(value)}
                for setting, x, values in _call(attack, spec, model, context, args) if (role, attack, setting) not in done
                for (split, metric), value in values.items()]
    unseen = spec.unseen_rows(len(bench.forget), args, config.seed)
    out = []
    if unseen is not None and (role, "none", "clean-unseen") not in done:
        # the clean model on the same unseen items: the baseline recovery is measured from
        out += [r for r in _score(model, tok, bench, config, None, base, "none", "clean-unseen", None,
                                  splits=["forget"], metrics=UNSEEN_METRICS, unseen=unseen, with_lmeval=False)
                if r["split"] == "forget_unseen"]
    curve = []
    start, start_model = endpoints.get(attack, ("original", refs.get("original")))
    pair = f"{start}->{base.get('optimizer') or base['model']}"  # a path's records name both ends
    for setting, x, attacked in _call(attack, spec, model, context, args):
        if (role, attack, setting) in done:
            continue
        recs = _score(attacked, tok, bench, config, retain_stats, base, attack, setting, x, unseen=unseen)
        if setting in stats:
            recs += [{**base, "attack": attack, "setting": setting, "x": x, "metric": k, "split": "weights",
                      "value": float(v)} for k, v in stats[setting].items()]
        if spec.path:
            recs = [{**r, "model": pair} for r in recs]
            curve.append((x, {(r["split"], r["metric"]): r["value"] for r in recs}))
        out += recs
    if curve:  # the path's length ||theta_B - theta_A||, the barrier, and the barrier per unit length
        path = {**base, "model": pair, "attack": attack, "setting": "path", "x": None}
        length = distance(start_model, model)
        out.append({**path, "metric": "distance", "split": "weights", "value": length})
    for split in ("forget", "retain") if curve else ():
        pts = [(a, vals.get((split, "nll"))) for a, vals in curve]
        if all(v is not None for _, v in pts) and {0.0, 1.0} <= {a for a, _ in pts}:
            b = loss_barrier(pts)
            out.append({**path, "metric": "barrier", "split": split, "value": b})
            out.append({**path, "metric": "barrier_per_distance", "split": split,
                        "value": b / length if length > 0 else float("nan")})
    return out


def audit_plane(first, second, third, tokenizer=None, *, names=("original", "second", "third"),
                benchmark="world:forget10", benchmark_args=None, grid=(-0.25, 0.25, 0.75, 1.25),
                max_retain: int = 100,
                seed: int = 0, out=None, progress: bool = True, device: str = "auto",
                dtype: str = "float32", prompt_format=None) -> pd.DataFrame:
    """The basin picture: forget and retain NLL on the plane through three models.

    theta(x, y) = (1 - x - y) theta_1 + x theta_2 + y theta_3 on ``grid`` x ``grid`` plus the three
    models' own corners, so the models sit at (0, 0), (1, 0) and (0, 1). Records have attack
    ``plane``, setting ``x=..,y=..``, model ``"name1 | name2 | name3"``. No model is modified.
    ``device`` and ``dtype`` place the three models as in :class:`AuditConfig`; ``prompt_format``
    (default: the first model's recorded format, else ``plain``) lays out the scored pairs.
    """
    place = dict(progress=progress, device=resolve_device(check_device_name(device)),
                 dtype=canonical_dtype(dtype, tuple(DTYPES)))
    a, tok = load_model(first, tokenizer, **place)
    b = load_model(second, None if isinstance(second, (str, Path)) else tok, **place)[0]
    c = load_model(third, None if isinstance(third, (str, Path)) else tok, **place)[0]
    bench = load_benchmark(benchmark, **(benchmark_args or {}))
    bench = Benchmark(bench.name, bench.forget, subsample(bench.retain, max_retain), [], {})
    fmt = format_spec(prompt_format if prompt_format is not None else recorded_format(first))
    axis = sorted(set(grid) | {0.0, 1.0})
    label = " | ".join(names)
    records = []
    points = [(x, y) for x in axis for y in axis]
    it = plane(a, second=b, third=c, xs=axis, ys=axis)
    for x, y, model in tqdm(it, total=len(points), desc="plane", disable=not progress):
        recs, _ = evaluate(model, tok, bench, metrics=["nll", "prob"], splits=["forget", "retain"],
                           generate=False, prompt_format=fmt)
        records += [{**r, "model": label, "attack": "plane", "setting": f"x={x:g},y={y:g}", "x": x, "y": y,
                     "seed": seed, "role": "unlearned"} for r in recs]
    if out is not None:
        append_records(Path(out) / "records.jsonl", records)
    return pd.DataFrame(records)
