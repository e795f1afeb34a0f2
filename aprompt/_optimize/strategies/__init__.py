"""The optimization strategies, assembled from the shared steps (:mod:`.steps`: bootstrap, propose,
screen, search), one per module, registered by name in :mod:`.registry`.

===========================  ============  ============  ======================================
strategy                     instructions  demos         search
===========================  ============  ============  ======================================
``mipro`` (default)          proposed      bootstrapped  TPE over both, mini-batches
``mipro_zero_shot``          proposed      none          TPE, mini-batches
``bayesian_bootstrap``       original      bootstrapped  TPE, mini-batches
``bootstrap_random_search``  original      bootstrapped  random demo sets, each fully evaluated
``module_opro``              proposed      none          rounds: propose with scored history
``mipro_plus_plus``          proposed      bootstrapped  TPE also over the proposer's grounding
``mipro_reflective``         + reflective  bootstrapped  as mipro; instructions from failures join
===========================  ============  ============  ======================================

A new strategy subclasses :class:`Strategy` (its :meth:`~Strategy.plan` states its trial count, its
:meth:`~Strategy.run` searches) and is registered with :func:`register_strategy`, or passed to
``optimize(strategy=...)`` as an instance.
"""

from aprompt._optimize.strategies.base import Strategy, StrategyPlan
from aprompt._optimize.strategies.mipro_plus_plus import GROUNDING_OPTIONS, TEMPERATURES
from aprompt._optimize.strategies.registry import (
    STRATEGIES,
    register_strategy,
    resolve_strategy,
    unregister_strategy,
)

__all__ = [
    "GROUNDING_OPTIONS",
    "STRATEGIES",
    "TEMPERATURES",
    "Strategy",
    "StrategyPlan",
    "register_strategy",
    "resolve_strategy",
    "unregister_strategy",
]
