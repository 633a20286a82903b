"""basin.unlearn: data, tiny models, unlearning objectives, optimizer tiers and the training loop."""

__version__ = "0.1.0"
