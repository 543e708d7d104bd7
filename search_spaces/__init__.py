"""Search spaces of acla-nas: the attention operators an insertion point can hold."""

from search_spaces.operators import OPERATORS

__all__ = ["OPERATORS"]
