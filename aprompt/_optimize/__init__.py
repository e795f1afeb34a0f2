"""The optimizer (private): ``optimize`` and its strategies, made of bootstrap, propose, search, evaluate.

Its public names are re-exported by :mod:`aprompt` (``aprompt.optimize``, ``aprompt.OptimizeResult``, ...)
and, for writing a strategy, by :mod:`aprompt.strategies`.
"""
