"""acla-nas: differentiable search of attention placement and key counts for restoration nets."""

__version__ = "0.1.0"
