"""Tokenizers in the style of the published TOFU models' families, built offline for tests.

- :func:`llama3_style`: a byte-level BPE with Llama 3's special tokens (``<|begin_of_text|>``
  added as BOS, ``<|start_header_id|>``, ``<|end_header_id|>``, ``<|eot_id|>`` as EOS, as in the
  Instruct models) and a chat template written here that lays a chat out as Llama 3.x's does: a
  system block with the knowledge-cutoff and "Today Date" lines (``date_string``, default
  26 Jul 2024), then one header / content / ``<|eot_id|>`` block per message.
- :func:`llama2_style`: a SentencePiece-like BPE (``▁`` word prefix) with ``<s>`` added as BOS,
  ``</s>`` as EOS, ``<unk>``; no chat template (Llama-2-chat's ``[INST]`` tags are plain text).

Both are trained on the texts given (the TOFU rows), so the words of the questions are tokens.
"""

from __future__ import annotations

from typing import Iterable

LLAMA3_SPECIAL = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
                  "<|eot_id|>"]

# Written for these tests: the layout of Llama 3.x's chat template (system block with the date
# lines always present, content stripped, an assistant header for the generation prompt).
LLAMA3_TEMPLATE = (
    "{{- bos_token }}"
    "{%- if date_string is not defined %}{%- set date_string = '26 Jul 2024' %}{%- endif %}"
    "{%- if messages[0]['role'] == 'system' %}{%- set system = messages[0]['content'] | trim %}"
    "{%- set messages = messages[1:] %}{%- else %}{%- set system = '' %}{%- endif %}"
    "{{- '<|start_header_id|>system<|end_header_id|>\\n\\n' }}"
    "{{- 'Cutting Knowledge Date: December 2023\\nToday Date: ' + date_string + '\\n\\n' }}"
    "{{- system + '<|eot_id|>' }}"
    "{%- for m in messages %}"
    "{{- '<|start_header_id|>' + m['role'] + '<|end_header_id|>\\n\\n' + m['content'] | trim + '<|eot_id|>' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}"
)


def llama3_style(texts: Iterable[str], vocab_size: int = 1500):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=LLAMA3_SPECIAL, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer=trainer)
    bos = "<|begin_of_text|>"
    tok.post_processor = processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A $B",
                                                       special_tokens=[(bos, tok.token_to_id(bos))])
    out = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=bos, eos_token="<|eot_id|>",
                                  pad_token="<|end_of_text|>", clean_up_tokenization_spaces=False)
    out.add_special_tokens({"additional_special_tokens": LLAMA3_SPECIAL[2:]})
    out.chat_template = LLAMA3_TEMPLATE
    return out


def llama2_style(texts: Iterable[str], vocab_size: int = 1500):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<unk>", "<s>", "</s>"],
                                  show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A $B",
                                                       special_tokens=[("<s>", tok.token_to_id("<s>"))])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   clean_up_tokenization_spaces=False)
