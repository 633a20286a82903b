"""KEY=VALUE options as commands parse them."""

import pytest

from basin.options import attack_args, key_values
from unlearn.errors import BasinError


def test_numbers_without_a_dot_are_numbers():
    # YAML 1.1 would read 1e-3 as the string '1e-3'; a learning rate must arrive as a float
    assert key_values(["lr=1e-3", "beta=0.1", "q=4", "fo=adam", "steps=[5, 10]"], "--opt") == \
        {"lr": 0.001, "beta": 0.1, "q": 4, "fo": "adam", "steps": [5, 10]}
    assert attack_args(["relearn.lr=2e-4", "quantize.methods=[rtn,nf4]"]) == \
        {"relearn": {"lr": 0.0002}, "quantize": {"methods": ["rtn", "nf4"]}}


@pytest.mark.parametrize("item", ["lr", "relearn.lr=[1,"])
def test_malformed_options_are_refused(item):
    with pytest.raises(BasinError):
        attack_args([item]) if "." in item else key_values([item], "--opt")
