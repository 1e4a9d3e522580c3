"""The baseline's twin of ``imgsearch_plugins_first.py`` for ``scripts/datasette_suite.sh``: imports the
installed Datasette first too (so both runs test the same Datasette, not the checkout's source), but as a
test run, so that Datasette 0.65 loads no entry-point plugin."""

import sys

sys._called_from_test = True  # type: ignore[attr-defined]  # what Datasette's conftest sets
import datasette.plugins  # noqa: E402, F401
