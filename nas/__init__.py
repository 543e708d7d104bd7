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

from nas.config import Config, check_config, load_config  # noqa: E402
from nas.engine.archspec import ArchSpec, build_model, load_archspec, load_weights  # noqa: E402
from nas.engine.flops import CostModel, measure_flops, measure_network_flops  # noqa: E402
from nas.engine.retrain import retrain  # noqa: E402
from nas.engine.supernet import Supernet  # noqa: E402
from nas.engine.supernet_search import SupernetSearch  # noqa: E402
from nas.errors import DivergedError, UsageError  # noqa: E402
from nas.restoration.evaluate import evaluate_sets  # noqa: E402
from nas.restoration.task import Task  # noqa: E402

__all__ = [
    "ArchSpec", "Config", "CostModel", "DivergedError", "Supernet", "SupernetSearch", "Task",
    "UsageError", "__version__", "build_model", "check_config", "evaluate_sets", "load_archspec",
    "load_config", "load_weights", "measure_flops", "measure_network_flops", "retrain",
]
