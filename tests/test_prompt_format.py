"""Prompt formats: parity with open-unlearning's template arguments on the real TOFU rows.

For every preset, the token ids and label masks basin builds (``encode_qa``) and the generation
prompts (``encode_prompt``) equal those of an independent implementation written here from
open-unlearning's documented template arguments (``configs/model/*.yaml`` ``template_args``) and
its rule (prompt and prompt + answer tokenised with the tokenizer's special tokens, EOS appended
unless the sequence already ends with it, labels masked over the prompt's length), on Llama-3-style
and Llama-2-style tokenizers built offline (tests/chat_tokenizers.py).
"""

from __future__ import annotations

import json

import pytest

from chat_tokenizers import llama2_style, llama3_style
from unlearn.data.format import (IGNORE, PLAIN, PROMPT_FORMATS, chat_template_hint, cli_prompt_format,
                                 encode_prompt, encode_qa, encode_rows, format_spec, prompt_format,
                                 recorded_format)
from unlearn.errors import BasinError

from tofu_files import needs, tofu_dir



TOFU_DIR = tofu_dir("forget10_perturbed.json")
needs_tofu = needs(TOFU_DIR)


def _rows(name: str) -> list[dict]:
    return [json.loads(line) for line in (TOFU_DIR / name).read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def tofu_pairs():
    """(question, answer) for the answer, paraphrase and perturbed answers of every fifth forget10
    row (all 20 authors) and of 20 retain rows: what an audit scores."""
    pairs = []
    for row in _rows("forget10_perturbed.json")[::5] + _rows("retain_perturbed.json")[::20]:
        for answer in [row["answer"], row["paraphrased_answer"], *row["perturbed_answer"]]:
            pairs.append((row["question"], answer))
    return pairs


@pytest.fixture(scope="module")
def tokenizers(tofu_pairs):
    texts = [q for q, _ in tofu_pairs] + [a for _, a in tofu_pairs] + ["Question: Answer: [INST] [/INST]"]
    return {"llama3": llama3_style(texts), "llama2": llama2_style(texts)}


# ----------------------------------------------------------------------------- the reference

# open-unlearning's template_args, copied as data from its model configs (Llama-2-7b-chat-hf.yaml,
# Llama-3.2-1B-Instruct.yaml, phi-1_5.yaml) for the independent implementation below
LLAMA2_CHAT = {"apply_chat_template": False, "user_start_tag": "[INST] ", "user_end_tag": " [/INST]",
               "asst_start_tag": "", "asst_end_tag": " "}
LLAMA3_INSTRUCT = {
    "apply_chat_template": True, "system_prompt": "You are a helpful assistant.",
    "system_prompt_with_special_tokens": "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
                                         "You are a helpful assistant.<|eot_id|>",
    "user_start_tag": "<|start_header_id|>user<|end_header_id|>\n\n", "user_end_tag": "<|eot_id|>",
    "asst_start_tag": "<|start_header_id|>assistant<|end_header_id|>\n\n", "asst_end_tag": "<|eot_id|>",
    "date_string": "10 Apr 2025"}
PHI = {"apply_chat_template": False, "user_start_tag": "Question: ", "user_end_tag": "\n",
       "asst_start_tag": "Answer: ", "asst_end_tag": "\n\n"}


def llama3_chat_text(question: str, answer: str | None, system: str, date: str) -> str:
    """What Llama 3.x's chat template renders for (system, user[, assistant]), written out."""
    text = ("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
            f"Cutting Knowledge Date: December 2023\nToday Date: {date}\n\n{system}<|eot_id|>"
            f"<|start_header_id|>user<|end_header_id|>\n\n{question.strip()}<|eot_id|>")
    if answer is None:
        return text + "<|start_header_id|>assistant<|end_header_id|>\n\n"
    return text + f"<|start_header_id|>assistant<|end_header_id|>\n\n{answer.strip()}<|eot_id|>"


def reference_encode(tok, args: dict | None, question: str, answer: str):
    """(input_ids, labels, prompt_ids) by open-unlearning's rule for one single-turn pair; with
    ``args=None``, basin's plain rule (prompt and `` answer`` tokenised apart, EOS always added)."""
    if args is None:
        prompt = tok("Question: " + question + "\nAnswer:", add_special_tokens=True)["input_ids"]
        full = prompt + tok(" " + answer, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        return full, [IGNORE] * len(prompt) + full[len(prompt):], prompt
    if args["apply_chat_template"]:  # the rendered chat is tokenised without adding special tokens
        system, date = args.get("system_prompt") or "", args.get("date_string") or "26 Jul 2024"
        prompt = tok(llama3_chat_text(question, None, system, date), add_special_tokens=False)["input_ids"]
        full = tok(llama3_chat_text(question, answer, system, date), add_special_tokens=False)["input_ids"]
    else:
        wrapped = (args.get("system_prompt_with_special_tokens") or "") + args["user_start_tag"] + question \
            + args["user_end_tag"] + args["asst_start_tag"]
        full = tok(wrapped + answer, add_special_tokens=True)["input_ids"]
        prompt = tok(wrapped, add_special_tokens=True)["input_ids"]
    if full[-1] != tok.eos_token_id:
        full = full + [tok.eos_token_id]
    return full, [IGNORE] * len(prompt) + full[len(prompt):], prompt


CASES = [  # (preset, tokenizer, reference args)
    ("plain", "llama3", None), ("plain", "llama2", None),
    ("chat", "llama3", {"apply_chat_template": True}),
    ("llama3-instruct", "llama3", LLAMA3_INSTRUCT),
    ("llama3-instruct-tags", "llama3", {**LLAMA3_INSTRUCT, "apply_chat_template": False}),
    ("llama2-chat", "llama2", LLAMA2_CHAT),
    ("phi", "llama2", PHI), ("phi", "llama3", PHI),
]


@needs_tofu
@pytest.mark.parametrize("preset, which, args", CASES, ids=[f"{c[0]}-{c[1]}" for c in CASES])
def test_presets_match_open_unlearning_on_tofu_rows(tofu_pairs, tokenizers, preset, which, args):
    tok = tokenizers[which]
    fmt = prompt_format(preset)
    for question, answer in tofu_pairs:
        ids, labels, prompt = reference_encode(tok, args, question, answer)
        ex = encode_qa(tok, question, answer, max_length=4096, fmt=fmt)
        assert ex.input_ids == ids, (preset, question, answer)
        assert ex.labels == labels, (preset, question, answer)
        assert encode_prompt(tok, question, fmt) == prompt
    # and the rows the training loop and the relearning attack encode are the same pairs
    rows = [{"question": q, "answer": a} for q, a in tofu_pairs[:7]]
    assert [e.input_ids for e in encode_rows(tok, rows, max_length=4096, fmt=preset)] == \
        [reference_encode(tok, args, q, a)[0] for q, a in tofu_pairs[:7]]


@needs_tofu
def test_hand_checked_layouts(tofu_pairs, tokenizers):
    """What the reference implies, stated on one row by hand."""
    question, answer = tofu_pairs[0]
    l3, l2 = tokenizers["llama3"], tokenizers["llama2"]
    bos3 = l3.convert_tokens_to_ids("<|begin_of_text|>")
    tags = encode_qa(l3, question, answer, 4096, prompt_format("llama3-instruct-tags"))
    assert tags.input_ids[:2] == [bos3, bos3]   # open-unlearning's tags start with BOS and the tokenizer adds one
    chat = encode_qa(l3, question, answer, 4096, prompt_format("llama3-instruct"))
    assert chat.input_ids.count(bos3) == 1 and chat.input_ids[-1] == l3.eos_token_id
    span = [t for t, lab in zip(chat.input_ids, chat.labels) if lab != IGNORE]
    assert l3.decode(span) == answer + "<|eot_id|>"  # the answer and the end of the assistant turn
    assert "Today Date: 10 Apr 2025" in l3.decode(encode_prompt(l3, question, prompt_format("llama3-instruct")))
    inst = encode_qa(l2, question, answer, 4096, prompt_format("llama2-chat"))
    assert l2.decode(inst.input_ids, skip_special_tokens=True).startswith("[INST] " + question + " [/INST]")
    assert inst.input_ids[0] == l2.bos_token_id and inst.input_ids[-1] == l2.eos_token_id
    assert inst.input_ids.count(l2.eos_token_id) == 1   # asst_end_tag does not end a single turn
    phi = encode_qa(l3, question, answer, 4096, prompt_format("phi"))
    n_masked = phi.labels.index(next(lab for lab in phi.labels if lab != IGNORE))
    # "Answer: " ends in a space token; joined, the space opens the answer's first word, which the
    # prompt-length mask then covers (open-unlearning's rule, kept: the models were trained so)
    assert l3.decode(phi.input_ids[n_masked - 1:n_masked]) == " " + answer.split()[0]


def test_plain_is_todays_format(micro_tokenizer):
    ex = encode_qa(micro_tokenizer, "Where was X born?", "In Lund.")
    n_prompt = sum(1 for lab in ex.labels if lab == IGNORE)
    assert micro_tokenizer.decode(ex.input_ids[1:n_prompt]) == "Question: Where was X born?\nAnswer:"
    assert ex == encode_qa(micro_tokenizer, "Where was X born?", "In Lund.", fmt=PLAIN)
    assert ex.input_ids[-1] == micro_tokenizer.eos_token_id


def test_registry_custom_formats_and_recording(tmp_path):
    assert set(PROMPT_FORMATS) >= {"plain", "chat", "llama2-chat", "llama3-instruct", "phi"}
    with pytest.raises(BasinError, match="did you mean 'llama3-instruct'"):
        prompt_format("llama3-instruc")
    with pytest.raises(BasinError, match="did you mean 'user_start_tag'"):
        prompt_format("phi", user_star_tag="Q: ")
    # an open-unlearning model config's template_args block reads as it is
    (tmp_path / "fmt.yaml").write_text("model_args: {}\ntemplate_args:\n  apply_chat_template: False\n"
                                       "  user_start_tag: '[INST] '\n  user_end_tag: ' [/INST]'\n"
                                       "  asst_start_tag: ''\n  asst_end_tag: ' '\n")
    from_file = prompt_format(tmp_path / "fmt.yaml")
    fields = lambda f: {k: v for k, v in f.as_dict().items() if k != "name"}  # noqa: E731
    assert fields(from_file) == fields(PROMPT_FORMATS["llama2-chat"])
    spec = cli_prompt_format("chat", ["system_prompt=Be brief.", "user_end_tag=\\n"])
    assert spec["system_prompt"] == "Be brief." and spec["user_end_tag"] == "\n" and spec["apply_chat_template"]
    assert format_spec(spec) == spec and format_spec("phi") == "phi" and cli_prompt_format(None, None) is None
    with pytest.raises(BasinError, match="KEY=VALUE"):
        cli_prompt_format("plain", ["system_prompt"])
    # a run folder's config records its format; a Hugging Face folder records none
    (tmp_path / "run" / "model").mkdir(parents=True)
    (tmp_path / "run" / "config.json").write_text(json.dumps({"prompt_format": "llama2-chat"}))
    assert recorded_format(tmp_path / "run") == "llama2-chat"
    assert recorded_format(tmp_path / "run" / "model") is None


@needs_tofu
def test_chat_template_hint(micro_tokenizer, tokenizers):
    l3 = tokenizers["llama3"]
    assert chat_template_hint(l3, prompt_format("plain")) == "llama3-instruct"
    assert chat_template_hint(l3, prompt_format("llama3-instruct")) == ""
    assert chat_template_hint(l3, prompt_format("llama3-instruct-tags")) == ""
    assert chat_template_hint(micro_tokenizer, prompt_format("plain")) == ""       # no template
    with pytest.raises(BasinError, match="has none"):                             # a template it lacks
        encode_qa(tokenizers["llama2"], "q", "a", fmt=prompt_format("chat"))


def _records(retain_prob: float, hint: str, original_forget: float = 0.9, retain_forget: float = 0.2):
    base = {"attack": "none", "setting": "clean", "seed": 0, "prompt_format": "plain", "prompt_hint": hint}
    out = []
    for role, forget, retain in (("unlearned", 0.1, retain_prob), ("original", original_forget, retain_prob),
                                 ("retain", retain_forget, retain_prob)):
        ref = {} if role == "unlearned" else {"reference": f"folders/{role}"}
        out += [{**base, **ref, "model": "m" if role == "unlearned" else role, "role": role, "metric": "prob",
                 "split": split, "value": value} for split, value in (("forget", forget), ("retain", retain))]
    return out


def test_card_states_the_format_and_references_and_warns_on_an_unused_chat_template():
    from analysis.card import audit_card
    from analysis.load import load_records

    card = audit_card(load_records(_records(0.12, "llama3-instruct")))
    assert "prompt format: plain" in card
    assert "original (ceiling) = folders/original; retain-only (floor) = folders/retain" in card
    assert "ceiling and floor: meaningful (clean prob on the forget set: original 0.900, retain-only 0.200" in card
    assert card.count("--prompt-format llama3-instruct") == 2   # in the setup and in what to do
    assert "probability only 0.120" in card
    # a model that answers its retain set well in this format, or has no template to use: no warning
    assert "Prompt format warning" not in audit_card(load_records(_records(0.8, "llama3-instruct")))
    assert "Prompt format warning" not in audit_card(load_records(_records(0.12, "")))
    flat = audit_card(load_records(_records(0.8, "", original_forget=0.22)))
    assert "ceiling and floor: NOT meaningful" in flat and "inconclusive" in flat


def test_build_and_unlearn_configs_take_and_record_the_format(micro_world, micro_tokenizer, trained_micro, tmp_path):
    import copy

    from unlearn.build import BuildConfig, model_dir
    from unlearn.train import UnlearnConfig, unlearn

    with pytest.raises(BasinError, match="needs --base"):
        BuildConfig(prompt_format="phi")
    plain, phi = BuildConfig(base="some-folder"), BuildConfig(base="some-folder", prompt_format="phi")
    assert model_dir(plain, "full", tmp_path) != model_dir(phi, "full", tmp_path)   # a cache entry per format
    assert model_dir(BuildConfig(), "full", tmp_path) == model_dir(BuildConfig(prompt_format="plain"), "full", tmp_path)
    with pytest.raises(BasinError, match="did you mean 'llama2-chat'"):
        UnlearnConfig(prompt_format="llama2-chta")
    model, tok, _ = trained_micro
    kwargs = dict(model=copy.deepcopy(model), tokenizer=tok, benchmark="world:forget10",
                  benchmark_args={"n_people": 20, "n_holdout": 4, "n_countries": 4}, steps=1, batch_size=2,
                  eval_every=1, save_every=0, progress=False)
    result = unlearn(prompt_format="phi", out=tmp_path / "run", **kwargs)
    assert json.loads((tmp_path / "run" / "config.json").read_text())["prompt_format"] == "phi"
    assert json.loads((tmp_path / "run" / "manifest.json").read_text())["prompt_format"]["asst_start_tag"] == "Answer: "
    plain_run = unlearn(out=tmp_path / "plain", **kwargs)
    prob = lambda r: [x["value"] for x in r.records if x["metric"] == "prob" and x["split"] == "retain"][0]  # noqa: E731
    assert prob(result) < prob(plain_run)   # step 0: the model was trained in plain, not phi


def test_card_names_references_under_the_home_folder_without_the_machine(monkeypatch, tmp_path):
    from pathlib import Path

    from analysis.card import audit_card
    from analysis.load import load_records
    from unlearn.cache import portable

    home = tmp_path / "alice"
    monkeypatch.setattr(Path, "home", classmethod(lambda cls: home))
    cached = f"{home}/.cache/basin/models/tiny-full-0123"
    assert portable(cached) == "~/.cache/basin/models/tiny-full-0123"
    assert portable(Path(cached)) == "~/.cache/basin/models/tiny-full-0123"
    assert portable(f"{home}x/model") == f"{home}x/model"            # a sibling folder is not under home
    assert portable("open-unlearning/tofu_Llama-3.2-1B-Instruct_full") == "open-unlearning/tofu_Llama-3.2-1B-Instruct_full"
    # records written before references were recorded under ~ are read as if they had been
    rows = _records(0.5, "")
    rows += [{**r, "reference": "~/.cache/basin/models/tiny-full-0123", "seed": 1}
             for r in rows if r["role"] == "original"]
    rows = [{**r, "reference": cached} if r["role"] == "original" and r["seed"] == 0 else r for r in rows]
    df = load_records(rows)
    assert set(df.loc[df["role"] == "original", "reference"]) == {"~/.cache/basin/models/tiny-full-0123"}
    card = audit_card(df)
    assert "original (ceiling) = ~/.cache/basin/models/tiny-full-0123;" in card and str(home) not in card
