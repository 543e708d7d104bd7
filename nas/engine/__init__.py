"""The NAS engine: gates, FLOPs, network, supernet, ArchSpec, objective, supernet search, export
and retraining. Imports the restoration toolkit and the model packages, never the study layer
or the command line."""
