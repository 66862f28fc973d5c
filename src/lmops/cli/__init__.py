"""The ``lmops`` command line: a thin skin over the store and stage functions."""
