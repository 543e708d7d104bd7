"""The study layer: the Optuna outer loop over the supernet search (parameters, references,
storages, workers, objective, run) and reading a study (summary, Pareto fronts)."""
