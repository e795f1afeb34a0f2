"""The strategies ``optimize(strategy=...)`` knows by name: the built-in ones and those registered."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from aprompt._errors import ConfigError
from aprompt._optimize.strategies.base import Strategy
from aprompt._optimize.strategies.bayesian_bootstrap import BayesianBootstrap
from aprompt._optimize.strategies.bootstrap_random_search import BootstrapRandomSearch
from aprompt._optimize.strategies.mipro import Mipro
from aprompt._optimize.strategies.mipro_plus_plus import MiproPlusPlus
from aprompt._optimize.strategies.mipro_reflective import MiproReflective
from aprompt._optimize.strategies.mipro_zero_shot import MiproZeroShot
from aprompt._optimize.strategies.module_opro import ModuleOpro

_registered: dict[str, Strategy] = {}

#: Every registered strategy by name (read-only; add one with :func:`register_strategy`).
STRATEGIES: Mapping[str, Strategy] = MappingProxyType(_registered)


def register_strategy(strategy: Strategy, *, replace: bool = False) -> Strategy:
    """Make ``strategy`` selectable as ``optimize(..., strategy=strategy.name)``; returns it.

    Raises:
        ConfigError: ``strategy`` is not a :class:`Strategy` instance or has no name, or its name is
            taken by another strategy and ``replace`` is not set.
    """
    if not isinstance(strategy, Strategy):
        raise ConfigError(f"register_strategy needs a Strategy instance, got {type(strategy).__name__}")
    name = getattr(strategy, "name", None)
    if not isinstance(name, str) or not name:
        raise ConfigError(f"strategy {type(strategy).__name__} needs a non-empty `name` (a str)")
    if not replace and _registered.get(name, strategy) is not strategy:
        raise ConfigError(f"a strategy named {name!r} is registered already; pass replace=True to replace it")
    _registered[name] = strategy
    return strategy


def unregister_strategy(name: str) -> None:
    """Forget the strategy registered as ``name`` (nothing happens when there is none)."""
    _registered.pop(name, None)


def resolve_strategy(strategy: str | Strategy) -> Strategy:
    """The registered strategy of that name, or ``strategy`` itself.

    Raises:
        ConfigError: an unknown name (the message lists the registered ones) or neither a name nor a
            :class:`Strategy`.
    """
    if isinstance(strategy, Strategy):
        return strategy
    if isinstance(strategy, str) and strategy in _registered:
        return _registered[strategy]
    raise ConfigError(
        f"unknown strategy {strategy!r}; choose one of {sorted(_registered)} or pass a Strategy instance"
    )


for _builtin in (
    Mipro(),
    MiproZeroShot(),
    BayesianBootstrap(),
    BootstrapRandomSearch(),
    ModuleOpro(),
    MiproPlusPlus(),
    MiproReflective(),
):
    register_strategy(_builtin)


__all__ = ["STRATEGIES", "register_strategy", "resolve_strategy", "unregister_strategy"]
