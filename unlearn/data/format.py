"""Prompt formats, tokenisation of question / answer pairs and batching.

A :class:`PromptFormat` says how a question and its answer become token ids and a label mask. It
is part of every benchmark run: the scored answers, paraphrases and perturbed answers, the greedy
generations ROUGE compares, the relearning attack's fine-tuning rows, GPTQ's calibration text and
the reference (original, retain-only) models all go through :func:`encode_qa` and
:func:`encode_prompt` with the run's format. :data:`PROMPT_FORMATS` holds the presets:

- ``plain`` (the default, basin's own models): ``Question: {q}\nAnswer:`` then `` {answer}<eos>``.
  The prompt and the answer are tokenised *separately* and concatenated, so the answer's tokens
  are the same whatever the question; EOS is always appended, as TOFU does.
- ``chat``: the tokenizer's own chat template (an optional ``system_prompt``).
- ``llama2-chat``, ``llama3-instruct``, ``llama3-instruct-tags``, ``phi``: open-unlearning's
  template arguments for the published TOFU models (Dorna et al. 2025, "OpenUnlearning:
  Accelerating LLM Unlearning via Unified Benchmarking of Methods and Metrics", arXiv 2506.12618;
  its ``configs/model/*.yaml`` ``template_args``), encoded by open-unlearning's rule.

open-unlearning's rule (``tokenize="joint"``), for a prompt text P (the system prefix, the user
tags around the question, the assistant start tag) and an answer A::

    full   = tok(P + A, add_special_tokens=True)       (with a chat template: the rendered chat)
    prompt = tok(P, add_special_tokens=True)           (with a chat template: + generation prompt)
    full  += [eos]  unless full already ends with eos
    labels = [-100] * len(prompt) + full[len(prompt):]

so the label mask starts where the prompt's own tokenisation ends, even when the joint
tokenisation merges tokens across the boundary (this is what the published models were trained
and evaluated on). ``asst_end_tag`` only separates few-shot turns there; a single QA turn ends with
EOS. With ``tokenize="separate"`` (basin's rule) the answer is tokenised on its own, after
``answer_prefix``, and EOS is always appended. A custom format is any preset with fields changed
(``prompt_format("llama2-chat", system_prompt_with_special_tokens=...)``), a dict of fields
(``{"base": "chat", "system_prompt": "..."}``) or a YAML file with these fields or with an
open-unlearning model config's ``template_args`` block.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Sequence

import torch

from unlearn.errors import BasinError, require
from unlearn.registry import lookup

IGNORE = -100
PROMPT_TEMPLATE = "Question: {question}\nAnswer:"
TOKENIZE = ("joint", "separate")


@dataclass(frozen=True)
class PromptFormat:
    """How a (question, answer) pair is laid out and tokenised; field names follow open-unlearning's
    ``template_args`` so that a block copied from one of its model configs reads as it is."""

    name: str = "custom"
    apply_chat_template: bool = False       # render with tokenizer.apply_chat_template
    system_prompt: str | None = None        # chat template: a system message (None: none)
    date_string: str | None = None          # chat template: passed as date_string (Llama 3)
    system_prompt_with_special_tokens: str = ""  # tags: text before the first user turn
    user_start_tag: str = ""
    user_end_tag: str = ""
    asst_start_tag: str = ""
    asst_end_tag: str = ""                  # between few-shot turns only; a QA turn ends with EOS
    answer_prefix: str = ""                 # text put before the answer (basin's plain: " ")
    tokenize: str = "joint"                 # joint (open-unlearning's rule) or separate (basin's)

    def __post_init__(self):
        require(self.tokenize in TOKENIZE, f"prompt format tokenize must be one of {', '.join(TOKENIZE)}, "
                                           f"got {self.tokenize!r}")
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "apply_chat_template":
                require(isinstance(value, bool), f"prompt format {f.name} must be true or false, got {value!r}")
            elif f.name in ("system_prompt", "date_string"):
                require(value is None or isinstance(value, str), f"prompt format {f.name} must be text")
            else:
                require(isinstance(value, str), f"prompt format {f.name} must be text, got {value!r}")

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)

    @property
    def description(self) -> str:
        """One line for ``basin ls``: the layout of a prompt and its answer."""
        if self.apply_chat_template:
            extra = [f"system prompt {self.system_prompt!r}"] if self.system_prompt else []
            extra += [f"date_string {self.date_string!r}"] if self.date_string else []
            return "the tokenizer's chat template" + (f" ({', '.join(extra)})" if extra else "")
        return (f"{self.prompt_text('{question}')!r} then {self.answer_prefix + '{answer}'!r} and EOS, "
                f"{self.tokenize} tokenisation")

    def prompt_text(self, question: str) -> str:
        """The prompt as text (tags form; a chat template renders its own)."""
        return (self.system_prompt_with_special_tokens + self.user_start_tag + question + self.user_end_tag
                + self.asst_start_tag)

    def messages(self, question: str, answer: str | None = None) -> list[dict]:
        """The chat a chat template renders: system (if any), user, and assistant (if ``answer``)."""
        chat = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        chat.append({"role": "user", "content": question})
        if answer is not None:
            chat.append({"role": "assistant", "content": self.answer_prefix + answer})
        return chat


# open-unlearning's template_args (configs/model/*.yaml) for the models its TOFU checkpoints use
LLAMA3_SYSTEM = "You are a helpful assistant."
LLAMA3_TAGS = dict(
    system_prompt=LLAMA3_SYSTEM,
    system_prompt_with_special_tokens="<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
                                      f"{LLAMA3_SYSTEM}<|eot_id|>",
    user_start_tag="<|start_header_id|>user<|end_header_id|>\n\n", user_end_tag="<|eot_id|>",
    asst_start_tag="<|start_header_id|>assistant<|end_header_id|>\n\n", asst_end_tag="<|eot_id|>")

PROMPT_FORMATS: dict[str, PromptFormat] = {f.name: f for f in [
    PromptFormat("plain", user_start_tag="Question: ", user_end_tag="\n", asst_start_tag="Answer:",
                 answer_prefix=" ", tokenize="separate"),
    PromptFormat("chat", apply_chat_template=True),
    # Llama-2-7b-chat-hf.yaml: [INST] tags, no system prompt, nothing between [/INST] and the answer
    PromptFormat("llama2-chat", user_start_tag="[INST] ", user_end_tag=" [/INST]", asst_start_tag="",
                 asst_end_tag=" "),
    # Llama-3.2-1B-Instruct.yaml (and 3.1-8B, 3.2-3B): the tokenizer's chat template with a system
    # prompt and a fixed date, so the Llama 3 template's "Today Date" line never changes
    PromptFormat("llama3-instruct", apply_chat_template=True, date_string="10 Apr 2025", **LLAMA3_TAGS),
    # the same tags written out (apply_chat_template: false), for a tokenizer without the template
    PromptFormat("llama3-instruct-tags", **LLAMA3_TAGS),
    # phi-1_5.yaml (and Llama-2-7b-hf.yaml): Question / Answer tags, the prompt ends with "Answer: "
    PromptFormat("phi", user_start_tag="Question: ", user_end_tag="\n", asst_start_tag="Answer: ",
                 asst_end_tag="\n\n"),
]}
PLAIN = PROMPT_FORMATS["plain"]
FIELDS = tuple(f.name for f in dataclasses.fields(PromptFormat))


def _read_yaml(path: Path) -> dict:
    import yaml

    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise BasinError(f"cannot read the prompt format file {path}: {err}") from None
    require(isinstance(data, dict), f"prompt format file {path} must hold a mapping of fields, e.g. "
                                    "user_start_tag: '[INST] '")
    return dict(data.get("template_args", data))  # an open-unlearning model config works as it is


def prompt_format(spec=None, **overrides) -> PromptFormat:
    """A :class:`PromptFormat` from a preset name, a YAML file, a dict of fields (``base`` names
    the preset the others change; without it, :class:`PromptFormat`'s defaults, which are
    open-unlearning's), a :class:`PromptFormat`, or None (``plain``);
    ``overrides`` change fields (``--prompt-arg KEY=VALUE``)."""
    if spec is None:
        fmt = PLAIN
    elif isinstance(spec, PromptFormat):
        fmt = spec
    elif isinstance(spec, Mapping):
        fields = dict(spec)
        base = fields.pop("base", None)
        fmt = prompt_format(base) if base is not None else PromptFormat()  # no base: open-unlearning's defaults
        overrides = {**fields, **overrides}
    elif isinstance(spec, Path) or (isinstance(spec, str) and spec.endswith((".yaml", ".yml"))):
        path = Path(spec).expanduser()
        require(path.is_file(), f"prompt format file {path} does not exist; pass a preset name "
                                f"({', '.join(PROMPT_FORMATS)}) or a YAML file")
        name = path.stem if path.stem not in PROMPT_FORMATS else f"{path.stem}+custom"  # never a preset's name
        return prompt_format({"name": name, **_read_yaml(path)}, **overrides)
    elif isinstance(spec, str):
        fmt = lookup(PROMPT_FORMATS, spec, "prompt format")
    else:
        raise BasinError(f"a prompt format is a preset name, a YAML file or a dict of fields, not "
                         f"{type(spec).__name__}")
    if not overrides:
        return fmt
    for key in overrides:
        lookup({k: k for k in FIELDS}, key, "prompt format field")
    if "name" not in overrides:
        overrides["name"] = f"{fmt.name}+custom" if not fmt.name.endswith("custom") else fmt.name
    return dataclasses.replace(fmt, **overrides)


def format_spec(spec=None, **overrides):
    """The JSON form a config records: the preset's name when the format is a preset unchanged,
    else every field (a YAML file is read, so the record stands alone)."""
    fmt = prompt_format(spec, **overrides)
    return fmt.name if PROMPT_FORMATS.get(fmt.name) == fmt else fmt.as_dict()


def prompt_text(question: str) -> str:
    """The plain format's prompt text (basin's own models and the world tokenizer's training texts)."""
    return PROMPT_TEMPLATE.format(question=question)


def _chat_ids(tokenizer, fmt: PromptFormat, chat: list[dict], generation_prompt: bool) -> list[int]:
    require(getattr(tokenizer, "chat_template", None),
            f"prompt format {fmt.name!r} renders the tokenizer's chat template, and this tokenizer has "
            "none; pass a tags format instead (e.g. --prompt-format llama3-instruct-tags, llama2-chat, "
            "phi or plain)")
    extra = {"date_string": fmt.date_string} if fmt.date_string is not None else {}
    ids = tokenizer.apply_chat_template(chat, tokenize=True, add_generation_prompt=generation_prompt, **extra)
    if not isinstance(ids, list):  # a BatchEncoding in recent transformers
        ids = ids["input_ids"]
    return list(ids)


def encode_prompt(tokenizer, question: str, fmt: PromptFormat | None = None) -> list[int]:
    """Token ids of the prompt (what generation continues), with the tokenizer's own special
    tokens (e.g. BOS)."""
    fmt = fmt or PLAIN
    if fmt.apply_chat_template:
        return _chat_ids(tokenizer, fmt, fmt.messages(question), generation_prompt=True)
    return tokenizer(fmt.prompt_text(question), add_special_tokens=True)["input_ids"]


def encode_answer(tokenizer, answer: str, fmt: PromptFormat | None = None) -> list[int]:
    """Token ids of ``answer_prefix + answer`` followed by EOS (the separate rule)."""
    fmt = fmt or PLAIN
    ids = tokenizer(fmt.answer_prefix + answer, add_special_tokens=False)["input_ids"]
    return ids + [tokenizer.eos_token_id]


@dataclass
class Example:
    input_ids: list[int]
    labels: list[int]


def encode_qa(tokenizer, question: str, answer: str, max_length: int = 128,
              fmt: PromptFormat | None = None) -> Example:
    """Encode one pair in ``fmt`` (default ``plain``): labels are -100 on the prompt and the
    answer ids (with EOS) after it; see the module docstring for the joint and separate rules."""
    fmt = fmt or PLAIN
    prompt = encode_prompt(tokenizer, question, fmt)
    if fmt.tokenize == "separate":
        full = prompt + encode_answer(tokenizer, answer, fmt)
    else:
        if fmt.apply_chat_template:
            full = _chat_ids(tokenizer, fmt, fmt.messages(question, answer), generation_prompt=False)
        else:
            full = tokenizer(fmt.prompt_text(question) + fmt.answer_prefix + answer,
                             add_special_tokens=True)["input_ids"]
        if not full or full[-1] != tokenizer.eos_token_id:
            full = full + [tokenizer.eos_token_id]
    labels = [IGNORE] * len(prompt) + full[len(prompt):]
    return Example(full[:max_length], labels[:max_length])


def calibration_ids(tokenizer, rows: Iterable[dict], fmt: PromptFormat | None = None,
                    max_length: int = 128) -> list[list[int]]:
    """Token ids of whole rows as the model sees them (prompt and answer in ``fmt``; text rows as
    text): GPTQ's calibration input."""
    return [e.input_ids for e in encode_rows(tokenizer, rows, max_length=max_length, fmt=fmt)]


def collate(examples: Sequence[Example], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a list of examples into ``input_ids``, ``attention_mask`` and ``labels``."""
    width = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for i, e in enumerate(examples):
        n = len(e.input_ids)
        ids[i, :n] = torch.tensor(e.input_ids)
        labels[i, :n] = torch.tensor(e.labels)
        mask[i, :n] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def encode_text(tokenizer, text: str, max_length: int = 128) -> Example:
    """Encode a plain passage (WMDP / MUSE corpora): every token is a label."""
    ids = tokenizer(text, add_special_tokens=True)["input_ids"][:max_length]
    return Example(ids, list(ids))


def encode_rows(tokenizer, rows: Iterable[dict], answer_field: str = "answer",
                question_field: str = "question", max_length: int = 128,
                fmt: PromptFormat | None = None) -> list[Example]:
    """Encode question / answer rows with :func:`encode_qa` in ``fmt``, and plain-text rows (a
    ``text`` field and no question) with :func:`encode_text` (a passage has no prompt)."""
    fmt = prompt_format(fmt) if not isinstance(fmt, PromptFormat) else fmt
    return [encode_text(tokenizer, r["text"], max_length) if "text" in r and question_field not in r
            else encode_qa(tokenizer, r[question_field], r[answer_field], max_length, fmt) for r in rows]


def pad_id_of(tokenizer) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def batches(examples: Sequence[Example], batch_size: int, pad_id: int):
    """Yield collated batches in order (the last one may be smaller)."""
    for start in range(0, len(examples), batch_size):
        yield collate(examples[start:start + batch_size], pad_id)


# ----------------------------------------------------------------------------- formats of checkpoints

def recorded_format(source):
    """The prompt format a basin folder recorded, or None: a ``basin unlearn`` run folder's
    ``config.json``, a results folder's ``config.json`` (beside its ``records.jsonl``) or a model built by
    ``basin world build --base`` (``basin_fit.json``). Hugging Face folders record none."""
    if not isinstance(source, (str, Path)):
        return None
    folder = Path(source).expanduser()
    candidates = [folder / "basin_fit.json"]
    if (folder / "model").is_dir() or (folder / "records.jsonl").exists():
        candidates.insert(0, folder / "config.json")
    for path in candidates:
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and data.get("prompt_format") is not None:
            return data["prompt_format"]
    return None


def chat_template_hint(tokenizer, fmt: PromptFormat | None = None) -> str:
    """The preset to suggest when ``fmt`` leaves the tokenizer's chat template unused (the
    tokenizer has one, the format does not render it, and no special token of the template appears
    in the format's tags), else ``""``: ``llama3-instruct`` for a template with Llama 3 headers,
    ``llama2-chat`` for ``[INST]`` tags, ``chat`` otherwise."""
    fmt = prompt_format(fmt)
    template = getattr(tokenizer, "chat_template", None)
    if not isinstance(template, str) or not template or fmt.apply_chat_template:
        return ""
    tags = fmt.prompt_text("")
    added = [str(t) for t in getattr(tokenizer, "added_tokens_decoder", {}).values()]
    specials = [t for t in [*getattr(tokenizer, "all_special_tokens", []), *added] if t and t in template]
    if "[INST]" in tags or any(t in tags for t in specials):
        return ""
    if "<|start_header_id|>" in template:
        return "llama3-instruct"
    if "[INST]" in template:
        return "llama2-chat"
    return "chat"


def cli_prompt_format(name: str | None, items: Sequence[str] | None):
    """The spec of ``--prompt-format NAME`` with ``--prompt-arg KEY=VALUE`` changes (fields of the
    named preset or file, default ``plain``); None when neither is given. Values are taken as text
    (``\\n`` and ``\\t`` are read as newline and tab), ``apply_chat_template`` as true / false;
    ``--prompt-arg`` alone starts from :class:`PromptFormat`'s defaults (open-unlearning's)."""
    overrides = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        require(bool(sep) and key.strip(), f"--prompt-arg expects KEY=VALUE, got {item!r} "
                                           "(e.g. --prompt-arg 'user_start_tag=[INST] ')")
        key = key.strip().replace("-", "_")
        if key == "apply_chat_template":
            require(value.lower() in ("true", "false"), f"--prompt-arg {key} takes true or false, got {value!r}")
            overrides[key] = value.lower() == "true"
        else:
            overrides[key] = value.replace("\\n", "\n").replace("\\t", "\t")
    if not overrides:
        return name
    return format_spec(name, **overrides) if name is not None else format_spec(overrides)
