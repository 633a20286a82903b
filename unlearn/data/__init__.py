"""Benchmarks: the embedded world (``world``), TOFU, MUSE and text-corpus loaders (``benchmarks`` is
the registry), and the prompt format and collation that turn rows into token ids (``format``)."""
