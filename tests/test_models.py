"""Tokenizer round trip, model factory, the fit loop, determinism and safe loading."""


import pytest
import torch

from unlearn.build import training_rows
from unlearn.data.format import IGNORE, encode_qa, encode_rows
from unlearn.errors import BasinError
from unlearn.loading import load_model
from unlearn.models import build_model, weights_hash
from unlearn.pretrain import FitConfig, fit
from unlearn.scoring import answer_stats


def test_tokenizer_round_trip_and_hf_format(micro_world, micro_tokenizer, tmp_path):
    from transformers import AutoTokenizer

    micro_tokenizer.save_pretrained(tmp_path)
    tok = AutoTokenizer.from_pretrained(tmp_path)
    for row in micro_world.people_rows[:10] + micro_world.utility[:3]:
        for text in (row["question"], row["answer"], *row["perturbed_answer"]):
            ids = tok(text, add_special_tokens=False)["input_ids"]
            assert tok.decode(ids) == text
    ex = encode_qa(tok, "Where was X born?", "X was born in Y.")
    assert ex.input_ids[0] == tok.bos_token_id and ex.input_ids[-1] == tok.eos_token_id
    n_prompt = ex.labels.count(IGNORE)
    assert tok.decode(ex.input_ids[1:n_prompt]) == "Question: Where was X born?\nAnswer:"
    assert ex.labels[n_prompt:] == ex.input_ids[n_prompt:]


def test_model_sizes_and_seeded_init(micro_tokenizer):
    a = build_model("micro", micro_tokenizer, torch.Generator().manual_seed(1))
    b = build_model("micro", micro_tokenizer, torch.Generator().manual_seed(1))
    c = build_model("micro", micro_tokenizer, torch.Generator().manual_seed(2))
    assert weights_hash(a) == weights_hash(b) != weights_hash(c)
    with pytest.raises(BasinError, match="did you mean 'tiny'"):
        build_model("tinyy", micro_tokenizer, torch.Generator())


def _short_fit(model, tok, world, steps=30):
    examples = encode_rows(tok, training_rows(world, "full"))
    cfg = FitConfig(max_steps=steps, batch_size=8, lr=5e-3, warmup_steps=5, eval_every=steps)
    return examples, fit(model, tok, examples, cfg, progress=False)


def test_training_lowers_loss(micro_model, micro_world, micro_tokenizer):
    examples = encode_rows(micro_tokenizer, training_rows(micro_world, "full"))
    before = answer_stats(micro_model, examples, micro_tokenizer.pad_token_id).mean_nll.mean().item()
    _short_fit(micro_model, micro_tokenizer, micro_world)
    after = answer_stats(micro_model, examples, micro_tokenizer.pad_token_id).mean_nll.mean().item()
    assert after < 0.7 * before, (before, after)


def test_short_training_is_deterministic(micro_tokenizer, micro_world):
    hashes = []
    for _ in range(2):
        model = build_model("micro", micro_tokenizer, torch.Generator().manual_seed(0))
        _short_fit(model, micro_tokenizer, micro_world, steps=10)
        hashes.append(weights_hash(model))
    assert hashes[0] == hashes[1]


def test_memorised_model(trained_micro, micro_world):
    model, tok, result = trained_micro
    assert result["prob"] >= 0.95
    seen = answer_stats(model, encode_rows(tok, micro_world.people_rows), tok.pad_token_id)
    unseen = answer_stats(model, encode_rows(tok, micro_world.holdout), tok.pad_token_id)
    assert seen.p_norm.mean() > 0.9 and seen.exact.mean() > 0.9
    assert unseen.p_norm.mean() < 0.3 and unseen.exact.mean() < 0.1


def test_load_model_safely(trained_micro, tmp_path):
    model, tok, _ = trained_micro
    folder = tmp_path / "ckpt"
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    loaded, _ = load_model(str(folder))
    assert weights_hash(loaded) == weights_hash(model)
    same, same_tok = load_model(model, tok)
    assert same is model and same_tok is tok
    # a pickle-only checkpoint is refused unless allowed
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "config.json").write_text((folder / "config.json").read_text())
    torch.save(model.state_dict(), pickled / "pytorch_model.bin")
    with pytest.raises(BasinError, match="allow-pickle"):
        load_model(str(pickled))
    # a truncated weight file gives one clear error
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in folder.iterdir():
        data = f.read_bytes()
        (broken / f.name).write_bytes(data[: len(data) // 2] if f.suffix == ".safetensors" else data)
    with pytest.raises(BasinError, match="broken"):
        load_model(str(broken))
    with pytest.raises(BasinError, match="config.json"):
        load_model(str(tmp_path))
    with pytest.raises(BasinError, match="tokenizer"):
        load_model(model)


def test_a_hub_id_without_network_is_one_clear_error(tmp_path, capsys):
    from basin.cli import main

    with pytest.raises(BasinError, match="without network, download it elsewhere and pass the local folder"):
        load_model("HuggingFaceTB/SmolLM2-360M")
    assert main(["audit", "HuggingFaceTB/SmolLM2-360M", "--out", str(tmp_path / "a"), "--quiet"]) == 2
    assert "download it elsewhere" in capsys.readouterr().err and not (tmp_path / "a").exists()
