"""Registered attention operators (see :mod:`search_spaces.operators.base` for the contract).

Importing this package registers ``acla``, ``rela``, ``lcoa`` and ``nla`` in :data:`OPERATORS`.
"""

from search_spaces.operators.acla import ACLA
from search_spaces.operators.base import OPERATORS, AttentionOp
from search_spaces.operators.lcoa import LCoA, LCoAMap
from search_spaces.operators.nla import NLA
from search_spaces.operators.rela import RELA

__all__ = ["OPERATORS", "AttentionOp", "ACLA", "RELA", "LCoA", "LCoAMap", "NLA"]
