"""The optimizer: ``optimize`` and its strategies, built from bootstrap, propose, search and evaluate.

Note that ``aprompt.optimize`` imported from the package is the :func:`~aprompt._optimize.api.optimize`
function; import the modules by their full names (``from aprompt._optimize.budget import Budget``).
"""
