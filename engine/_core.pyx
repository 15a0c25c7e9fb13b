# cython: language_level=3
"""Compiled evaluators (placeholder until the rule core lands)."""

def compiled() -> bool:
    return True
