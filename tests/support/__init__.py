"""Shared test helpers, importable as ``tests.support`` by the tests (pytest puts the repo root
on ``sys.path``: ``pythonpath`` in pyproject.toml) and by scripts that add the repo root
themselves (``scripts/bad_input_matrix.py``). Nothing here runs at import: semoe and heavy
libraries are imported inside the helpers that need them."""
