"""A byte-level BPE tokenizer trained on the world with the ``tokenizers`` library.

Saved in Hugging Face format, so ``AutoTokenizer.from_pretrained(folder)`` loads it. BOS is added
to every encoded text by the post-processor (``add_special_tokens=True``); EOS is appended to
answers by :mod:`unlearn.data.format`. Byte-level pre-tokenisation makes decode(encode(s)) == s.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from unlearn.data.format import prompt_text

SPECIAL = {"pad": "<pad>", "bos": "<bos>", "eos": "<eos>", "unk": "<unk>"}
DEFAULT_VOCAB_SIZE = 2048


def train_tokenizer(texts: Iterable[str], vocab_size: int = DEFAULT_VOCAB_SIZE):
    """Train a byte-level BPE on ``texts`` and wrap it as a ``PreTrainedTokenizerFast``.

    Pass the texts as the model will see them (see :func:`world_training_texts`), so that the
    prompt scaffolding and space-prefixed words become single tokens.
    """
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=SPECIAL["unk"]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL.values()),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    bos = SPECIAL["bos"]
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A $B", special_tokens=[(bos, tok.token_to_id(bos))])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=SPECIAL["bos"], eos_token=SPECIAL["eos"],
        pad_token=SPECIAL["pad"], unk_token=SPECIAL["unk"],
        clean_up_tokenization_spaces=False,
    )


def load_tokenizer(folder: str | Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder))


def world_training_texts(world) -> list[str]:
    """The world's strings in the form the model sees them: formatted prompts and `` answers``."""
    out = []
    for rows in (world.people_rows, world.holdout, world.utility):
        for r in rows:
            out += [prompt_text(r["question"]), prompt_text(r["paraphrased_question"])]
            out += [" " + a for a in (r["answer"], r["paraphrased_answer"], *r["perturbed_answer"])]
    return out
