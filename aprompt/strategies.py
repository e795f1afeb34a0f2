"""Write an optimization strategy of your own: everything a custom strategy needs, in one place.

A strategy subclasses :class:`Strategy`: a ``name``, a :meth:`~Strategy.plan` that states its trial
count (a :class:`StrategyPlan`), and an async :meth:`~Strategy.run` that searches, given the run's
:class:`RunContext`, and returns the :class:`Candidates` it searched with the :class:`SearchOutcome`. The
shared steps (:func:`bootstrap_candidates`, :func:`grounding_texts`, :func:`instruction_candidates`,
:func:`screen_instructions`, :func:`search_loop`, :func:`tpe_search`) are journaled, so a strategy built
from them resumes like the built-in ones. Pass an instance to ``aprompt.optimize(strategy=...)``, or
:func:`register_strategy` it to select it by name (:data:`STRATEGIES` holds the registered ones).

Example::

    from aprompt.strategies import Candidates, RunContext, SearchOutcome, Strategy, StrategyPlan

    class FewDemos(Strategy):
        name = "few_demos"
        ...
"""

from aprompt._optimize.budget import Budget
from aprompt._optimize.candidates import Candidates
from aprompt._optimize.grounding import GROUNDING_SOURCES, GroundingSource
from aprompt._optimize.reflect import ReflectiveProposals
from aprompt._optimize.run_context import RunContext
from aprompt._optimize.search_records import FullEval, SearchOutcome, Trial
from aprompt._optimize.strategies.base import Strategy, StrategyPlan
from aprompt._optimize.strategies.registry import STRATEGIES, register_strategy, unregister_strategy
from aprompt._optimize.strategies.steps import (
    bootstrap_candidates,
    grounding_texts,
    instruction_candidates,
    screen_instructions,
    search_loop,
    tpe_search,
)

__all__ = [
    "GROUNDING_SOURCES",
    "STRATEGIES",
    "Budget",
    "Candidates",
    "FullEval",
    "GroundingSource",
    "ReflectiveProposals",
    "RunContext",
    "SearchOutcome",
    "Strategy",
    "StrategyPlan",
    "Trial",
    "bootstrap_candidates",
    "grounding_texts",
    "instruction_candidates",
    "register_strategy",
    "screen_instructions",
    "search_loop",
    "tpe_search",
    "unregister_strategy",
]
