"""audit: attacks that try to bring forgotten knowledge back (:mod:`audit.attacks`, a self-describing
registry), the metrics that score it (:mod:`audit.metrics`) and the runner that attacks a model and
its references and writes long-form records (:mod:`audit.runner`). It may use ``unlearn`` (data,
models, the optimizers for relearning) and knows nothing of ``analysis`` or ``basin``."""
