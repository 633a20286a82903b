"""Auditing a third-party checkpoint in the format it was trained in, on the real TOFU files.

A micro Llama with a Llama-2-style tokenizer stands in for a published TOFU model: fine-tuned on a
slice of TOFU (two forget authors and two retain authors) in open-unlearning's ``llama2-chat``
format, then unlearned a little, and saved as plain Hugging Face folders (no basin record).
``basin audit FOLDER --benchmark tofu:forget01 --original ... --retain ... --prompt-format
llama2-chat --generate`` is the hub-id command's shape on local folders. Offline, the hub-id
command itself is one clear error with nothing written. The same on SmolLM2-135M is the slow
test in tests/test_real.py's style (BASIN_SLOW=1).
"""

from __future__ import annotations

import json
import os

import pytest
import torch

from chat_tokenizers import llama2_style
from basin.cli import main
from unlearn.data.format import encode_rows, prompt_format
from unlearn.errors import BasinError

from tofu_files import needs, tofu_dir



TOFU_DIR = tofu_dir()
needs_tofu = needs(TOFU_DIR)
HUB_COMMAND = ["audit", "some-lab/tofu_Llama-3.2-1B-Instruct_NPO", "--benchmark", "tofu:forget10",
               "--original", "some-lab/tofu_Llama-3.2-1B-Instruct_full",
               "--retain", "some-lab/tofu_Llama-3.2-1B-Instruct_retain90",
               "--prompt-format", "llama3-instruct", "--generate"]


def test_offline_the_hub_id_command_is_one_clear_error_with_nothing_written(tmp_path, capsys):
    out = tmp_path / "audit"
    assert main(HUB_COMMAND + ["--out", str(out)]) == 2  # offline, the first hub fetch refuses: TOFU itself
    err = capsys.readouterr().err
    assert err.startswith("basin: error: could not load") and "from the hub" in err and err.count("\n") == 1
    assert not out.exists()
    if TOFU_DIR is not None:  # TOFU from a local folder: then the model is what cannot be had offline
        assert main(HUB_COMMAND + ["--benchmark-arg", f"path={TOFU_DIR}", "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("basin: error: could not load 'some-lab/tofu_Llama-3.2-1B-Instruct_NPO' from the hub")
        assert err.count("\n") == 1 and "pass the local folder" in err
        assert not out.exists()
    assert main(HUB_COMMAND[:-3] + ["--prompt-format", "llama3-instrct", "--out", str(out)]) == 2
    assert "did you mean 'llama3-instruct'" in capsys.readouterr().err and not out.exists()


def finetune(model, tok, rows, fmt, steps: int, lr: float = 5e-3):
    """Fit ``model`` on ``rows`` laid out in ``fmt`` (the publisher's fine-tuning, in miniature)."""
    from unlearn.pretrain import FitConfig, fit

    return fit(model, tok, encode_rows(tok, rows, max_length=128, fmt=fmt),
               FitConfig(max_steps=steps, batch_size=16, lr=lr, warmup_steps=10, eval_every=25, target_prob=0.9),
               progress=False)


def _rows(name):
    return [json.loads(line) for line in (TOFU_DIR / name).read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    """Folders of a "published" original, retain-only and unlearned micro model, all trained in
    llama2-chat on TOFU forget01 (authors 198-199) and the 20 retain rows the audit scores."""
    from unlearn.models import build_model
    from unlearn.train import unlearn

    root = tmp_path_factory.mktemp("published")
    forget, retain = _rows("forget01_perturbed.json"), _rows("retain_perturbed.json")[::20]  # = --max-retain 20
    texts = [r[k] for r in forget + retain for k in ("question", "answer", "paraphrased_answer")]
    tok = llama2_style(texts + [a for r in forget + retain for a in r["perturbed_answer"]] + ["[INST] [/INST]"],
                       vocab_size=1200)
    fmt = prompt_format("llama2-chat")
    folders = {}
    for name, rows, seed, steps in (("full", forget + retain, 0, 240), ("retain", retain, 1, 60)):
        model = build_model("micro", tok, torch.Generator().manual_seed(seed))
        finetune(model, tok, rows, fmt, steps=steps)
        folders[name] = root / name
        model.save_pretrained(folders[name], safe_serialization=True)
        tok.save_pretrained(folders[name])
    run = unlearn(model=str(folders["full"]), benchmark="tofu:forget01", benchmark_args={"path": str(TOFU_DIR)},
                  objective="ga", optimizer="adam", lr=2e-3, steps=4, batch_size=8, eval_every=0, save_every=0,
                  prompt_format="llama2-chat", out=root / "run", progress=False)
    folders["run"] = run.out
    folders["unlearned"] = run.out / "model"   # the bare checkpoint records no format
    return folders


@pytest.mark.slow
@needs_tofu
def test_third_party_audit_in_its_format_on_local_folders(published, tmp_path, capsys):
    from analysis.card import audit_card
    from analysis.load import load_records

    out = tmp_path / "audit"
    code = main(["audit", str(published["unlearned"]), "--benchmark", "tofu:forget01",
                 "--benchmark-arg", f"path={TOFU_DIR}", "--benchmark-arg", "utility_rows=10",
                 "--original", str(published["full"]),
                 "--retain", str(published["retain"]), "--prompt-format", "llama2-chat",
                 "--attacks", "relearn", "--arg", "relearn.steps=[2]", "--arg", "relearn.size=8",
                 "--max-retain", "20", "--out", str(out), "--quiet"])
    assert code == 0, capsys.readouterr().err
    config = json.loads((out / "config.json").read_text())
    manifest = json.loads((out / "manifest.json").read_text())
    assert config["prompt_format"] == "llama2-chat"
    assert manifest["prompt_format"]["user_start_tag"] == "[INST] "
    df = load_records(out)
    assert set(df["prompt_format"]) == {"llama2-chat"}
    assert set(df.loc[df.role == "retain", "reference"]) == {str(published["retain"])}
    clean = df[(df.attack == "none") & (df.metric == "prob")].set_index(["role", "split"])["value"]
    assert clean["original", "forget"] > clean["retain", "forget"] + 0.05   # the ceiling sits above the floor
    card = audit_card(df, fmt="markdown")
    assert "prompt format: llama2-chat" in card and "ceiling and floor: meaningful" in card
    assert "Prompt format warning" not in card     # no chat template to leave unused

    # the original scored in plain, the format it was never trained in: far lower, and greedy
    # answers (ROUGE) continue the format's own prompt
    from audit.metrics import evaluate

    def scored(fmt, metric="prob"):
        recs, _ = evaluate(str(published["full"]), None, _bench(), metrics=[metric], splits=["forget"],
                               generate=metric == "rouge", prompt_format=fmt, max_new_tokens=24)
        return recs[0]["value"]
    assert scored("llama2-chat") > 2 * scored("plain")
    assert scored("llama2-chat", "rouge") > scored("plain", "rouge")


def _bench():
    from unlearn.data.benchmarks import load_benchmark

    return load_benchmark("tofu:forget01", path=TOFU_DIR)


@pytest.mark.slow
@needs_tofu
def test_a_run_folders_recorded_format_is_used_when_audited_again(published, tmp_path):
    from audit.runner import audit

    run = published["run"]
    assert json.loads((run / "config.json").read_text())["prompt_format"] == "llama2-chat"
    assert json.loads((run / "manifest.json").read_text())["prompt_format"]["name"] == "llama2-chat"
    kwargs = dict(benchmark="tofu:forget01", benchmark_args={"path": str(TOFU_DIR)}, attacks=(),
                  metrics=("prob",), max_retain=5, progress=False)
    df = audit(str(run), out=tmp_path / "a", **kwargs)
    assert set(df["prompt_format"]) == {"llama2-chat"}
    assert json.loads((tmp_path / "a" / "config.json").read_text())["prompt_format"] == "llama2-chat"
    with pytest.raises(BasinError, match="scored with prompt format 'llama2-chat'"):  # resuming in another format
        audit(str(run), out=tmp_path / "a", prompt_format="plain", **kwargs)


# Read at import, before the session fixture points BASIN_CACHE at a temporary folder: the user's
# cache, where SmolLM2 was converted (docs/real_world.md).
from unlearn.cache import cache_root  # noqa: E402

USER_CACHE = cache_root()
SLOW = os.environ.get("BASIN_SLOW") == "1"


@pytest.mark.slow
@pytest.mark.skipif(not SLOW, reason="set BASIN_SLOW=1 (needs the converted SmolLM2 checkpoint)")
@needs_tofu
def test_smollm2_published_in_llama2_chat_audited_in_its_format(tmp_path, capsys):
    """SmolLM2-135M saved as a third-party TOFU model: fine-tuned briefly on forget01 and 20 retain
    rows in llama2-chat, unlearned 2 GA steps, then audited with the hub-id command's shape on
    local folders (the base SmolLM2 is the retain-only stand-in: it never saw the TOFU authors)."""
    from analysis.card import audit_card
    from analysis.load import load_records
    from unlearn.build import finetune_fit
    from unlearn.loading import load_model
    from unlearn.pretrain import fit
    from unlearn.train import unlearn

    base = USER_CACHE / "models" / "smollm2-135m"
    if not (base / "config.json").exists():
        pytest.skip(f"no converted SmolLM2 in {USER_CACHE}")
    rows = _rows("forget01_perturbed.json") + _rows("retain_perturbed.json")[::20]
    model, tok = load_model(str(base))
    fit(model, tok, encode_rows(tok, rows, max_length=256, fmt="llama2-chat"),
        finetune_fit(max_steps=12, eval_every=6), progress=False)
    model.save_pretrained(tmp_path / "full", safe_serialization=True)
    tok.save_pretrained(tmp_path / "full")
    unlearn(model=str(tmp_path / "full"), benchmark="tofu:forget01",
            benchmark_args={"path": str(TOFU_DIR), "utility_rows": 4}, objective="ga", optimizer="adam",
            lr=1e-5, steps=2, batch_size=4, eval_every=0, save_every=0, device="cpu",
            prompt_format="llama2-chat", out=tmp_path / "run", progress=False)
    out = tmp_path / "audit"
    code = main(["audit", str(tmp_path / "run" / "model"), "--benchmark", "tofu:forget01",
                 "--benchmark-arg", f"path={TOFU_DIR}", "--benchmark-arg", "utility_rows=4",
                 "--original", str(tmp_path / "full"), "--retain", str(base),
                 "--prompt-format", "llama2-chat", "--generate", "--attacks", "relearn",
                 "--arg", "relearn.steps=[1]", "--arg", "relearn.size=4", "--arg", "relearn.lr=0.00001",
                 "--max-retain", "5", "--device", "cpu", "--out", str(out), "--quiet"])
    assert code == 0, capsys.readouterr().err
    df = load_records(out)
    assert set(df["prompt_format"]) == {"llama2-chat"} and (df.metric == "rouge").any()
    clean = df[(df.attack == "none") & (df.metric == "prob")].set_index(["role", "split"])["value"]
    assert clean["original", "forget"] > clean["retain", "forget"]   # fine-tuning taught the slice
    card = audit_card(df)
    assert "prompt format: llama2-chat" in card and "Prompt format warning" not in card
    # scored in plain, the format it was not trained in, with the chat template left unused
    plain = main(["audit", str(tmp_path / "run" / "model"), "--benchmark", "tofu:forget01",
                  "--benchmark-arg", f"path={TOFU_DIR}", "--benchmark-arg", "utility_rows=4",
                  "--original", str(tmp_path / "full"), "--retain", str(base), "--prompt-format", "plain",
                  "--attacks", "", "--max-retain", "5", "--device", "cpu", "--out", str(tmp_path / "plain"),
                  "--quiet"])
    assert plain == 0
    df_plain = load_records(tmp_path / "plain")
    assert set(df_plain["prompt_hint"]) == {"chat"}  # SmolLM2's template: <|im_start|> turns


TOFU_STUDY = """
name: tofu-smoke
version: 1
question: does a study run on a published original / retain-only pair and the real TOFU files?
min_seeds: 2
claims: [signadam-vs-adam-relearn]
regimes:
  published:
    model: {original: ORIGINAL, gold: GOLD}             # set by the test
    benchmark: tofu:forget01
    benchmark_args: {path: TOFU_DIR, utility_rows: 4}   # set by the test
    seeds: [0, 1]
    objectives: {npo: {beta: 0.1, gamma: 1.0}}
    unlearn: {steps: 2, batch_size: 8, eval_every: 2, eval_max_rows: 8, save_every: 2, prompt_format: llama2-chat}
    arms:
      adam: {optimizer: adam, start: 2.0e-3}
      signadam: {optimizer: signadam, start: 2.0e-4}
    calibration: {metric: prob, targets: [halfway], seeds: [1000], max_probes: 1, max_retain: 8}
    audit:
      max_retain: 8
      splits: [forget, retain]
      metrics: [prob]
      attacks:
        relearn: {steps: [1], size: 8, lr: 1.0e-3}
"""


@pytest.mark.slow
@needs_tofu
def test_a_study_on_a_published_pair_and_the_real_tofu_files(published, tmp_path):
    """model: {original, gold} names trained models (here the published micro pair; a hub name on
    a user's machine): nothing is built, every calibration, run and audit uses the two as they are,
    in the regime's prompt format, on the benchmark's options (the local TOFU folder)."""
    import yaml

    from analysis.load import load_records
    from basin.study import StudyConfig, run_study, write_study

    fields = yaml.safe_load(TOFU_STUDY)
    fields["regimes"]["published"].update(model={"original": str(published["full"]), "gold": str(published["retain"])},
                                          benchmark_args={"path": str(TOFU_DIR), "utility_rows": 4})
    config = StudyConfig(**{**fields, "out": str(tmp_path / "report"), "work": str(tmp_path / "work")})
    before = {p: p.stat().st_mtime_ns for p in published["full"].rglob("*")}
    run_study(config, progress=False, log=lambda *_: None)
    work = tmp_path / "work" / "published"
    assert sorted(p.name for p in (work / "runs" / "npo-halfway").iterdir()) == [
        "adam-s0", "adam-s1", "signadam-s0", "signadam-s1"]
    run = json.loads((work / "runs" / "npo-halfway" / "adam-s1" / "config.json").read_text())
    assert run["model"] == str(published["full"]) and run["prompt_format"] == "llama2-chat"
    assert run["benchmark_args"] == {"path": str(TOFU_DIR), "utility_rows": 4}
    df = load_records([work / "audits" / "npo-halfway" / "adam-s0"])
    assert set(df["prompt_format"]) == {"llama2-chat"}
    assert set(df.loc[df.role == "retain", "reference"]) == {str(published["retain"])}
    assert {p: p.stat().st_mtime_ns for p in published["full"].rglob("*")} == before   # the original untouched
    write_study(config, log=lambda *_: None)
    summary = json.loads((tmp_path / "report" / "v1" / "summary.json").read_text())
    assert [v["claim"] for v in summary["verdicts"]] == ["signadam-vs-adam-relearn"]
    assert {c["arm"] for c in summary["calibration"]} == {"adam", "signadam"}


def test_a_published_pair_takes_no_world_and_fits_no_models():
    from basin.study import StudyConfig

    fields = {"name": "s", "version": 1, "question": "q", "min_seeds": 2, "claims": [], "regimes": {"r": {
        "model": {"original": "a", "gold": "b"}, "benchmark": "tofu:forget01", "seeds": [0, 1],
        "arms": {"adam": {"optimizer": "adam"}}, "calibration": {"targets": ["gold"]},
        "audit": {"attacks": {"relearn": {}}}}}}
    StudyConfig(**fields)
    for change, message in (({"model": {"original": "a", "gold": "b", "world": {}}}, "takes no"),
                            ({"vary_models": True, "calibration_model_seed": 9}, "one pair"),
                            ({"model": {"original": "a"}}, "original: MODEL, gold: MODEL")):
        bad = {**fields, "regimes": {"r": {**fields["regimes"]["r"], **change}}}
        with pytest.raises(BasinError, match=message):
            StudyConfig(**bad)
