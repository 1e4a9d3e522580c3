"""The baseline's twin of ``imgsearch_plugins_first.py`` for ``scripts/datasette_suite.sh``: imports the
installed Datasette first too (so both runs test the same Datasette, not the checkout's source), but as a
test run and with an empty DATASETTE_LOAD_PLUGINS, so that neither Datasette line loads an entry-point plugin."""

import os
import sys

sys._called_from_test = True  # type: ignore[attr-defined]  # what Datasette's conftest sets (0.65)
os.environ["DATASETTE_LOAD_PLUGINS"] = ""  # the 1.0 alphas load only the plugins named here
import datasette.plugins  # noqa: E402, F401
