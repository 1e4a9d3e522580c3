"""``python -m datasette_imgsearch`` runs the command line."""

from datasette_imgsearch.cli import cli

cli()
