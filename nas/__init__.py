"""acla-nas: differentiable search of attention placement and key counts for restoration nets."""

__version__ = "0.1.0"


def build_model(spec):
    """Rebuild the fixed network of an ArchSpec (see :func:`nas.archspec.build_model`)."""
    from nas.archspec import build_model as _build

    return _build(spec)
