"""Autodata meta-optimization: evolve harnesses with an analyzer and an implementer.

Modules, one role each: ``config`` (schema), ``lineage`` (git), ``select`` (archive and
parent selection), ``analyze`` (analyzer and implementer LLM roles), ``edit``
(SEARCH/REPLACE edits), ``loop``
(the evolution loop), ``export`` and ``cli``. Depends on ``inner``; never the reverse.
"""
