"""acla-nas: differentiable search of attention placement and key counts for restoration nets.

Layers (arrows point one way: command line -> study -> engine -> restoration toolkit):

* :mod:`nas.restoration` - tasks and degradations, images and data, MATLAB bicubic, metrics,
  benchmark evaluation;
* :mod:`nas.engine` - gates, FLOPs, network, supernet, ArchSpec, objective, supernet search,
  export, retraining;
* :mod:`nas.study` - the Optuna outer loop (parameters, references, storages, workers, objective,
  run, summary, Pareto fronts);
* :mod:`nas.cli` - the ``acla-nas`` command line;
* :mod:`nas.adapters` - optional peers (NNI), never imported by the rest.

The model packages :mod:`backbones` and :mod:`search_spaces` (operators, search space) sit below
the engine and never import data I/O.
"""

__version__ = "0.2.0"

import importlib

# The public names, imported on first use (PEP 562): ``import nas`` stays light, and the model
# packages (search_spaces, backbones), which import nas.registry, can be imported first without
# a cycle through nas.engine.
_EXPORTS = {
    "Config": "nas.config", "check_config": "nas.config", "load_config": "nas.config",
    "ArchSpec": "nas.engine.archspec", "build_model": "nas.engine.archspec",
    "load_archspec": "nas.engine.archspec", "load_weights": "nas.engine.archspec",
    "CostModel": "nas.engine.flops", "measure_flops": "nas.engine.flops",
    "measure_network_flops": "nas.engine.flops", "retrain": "nas.engine.retrain",
    "Supernet": "nas.engine.supernet", "SupernetSearch": "nas.engine.supernet_search",
    "DivergedError": "nas.errors", "UsageError": "nas.errors",
    "evaluate_sets": "nas.restoration.evaluate", "Task": "nas.restoration.task",
}

__all__ = ["__version__", *sorted(_EXPORTS)]


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'nas' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
