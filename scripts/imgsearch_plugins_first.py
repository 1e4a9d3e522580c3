"""A pytest plugin for ``scripts/datasette_suite.sh``: loaded with ``-p`` before Datasette's own
``conftest.py`` runs, it imports Datasette's plugin manager while installed plugins are still loaded.
(Datasette 0.65 skips entry-point plugins once its conftest has marked the run as a test run; the 1.0
alphas load them either way.)"""

import datasette.plugins  # noqa: F401
