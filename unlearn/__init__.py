"""unlearn: data, tiny models and model loading, unlearning objectives, optimizer tiers and the
training loop. The bottom package: it knows nothing of the packages above it."""

import logging as _logging

__version__ = "0.1.0"

# transformers imports torchao when it is installed (gptqmodel brings it); on a CPU machine
# torchao logs that its CUDA kernels are missing and torch logs a deprecation for its enums.
# Neither concerns basin's users, so keep those two loggers to errors.
for _name in ("torchao", "torch.utils._pytree"):
    _logging.getLogger(_name).setLevel(_logging.ERROR)
