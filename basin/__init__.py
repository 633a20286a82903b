"""basin: the app layer. The console (``basin.cli``, one module per command in ``basin.commands``)
and the pipelines that run models across packages: ``basin.demo`` (the main job on the embedded
default), ``basin.sweep`` (grids of audited unlearning runs on an engine), ``basin.calibrate``
(matched-forgetting calibration: per optimizer, the lr reaching a target forget level).

The packages below it point one way: ``basin`` -> ``analysis`` -> ``audit`` -> ``unlearn``
(checked by the import contracts in ``pyproject.toml``).
"""
