"""``python -m datasette_imgsearch`` runs the command line."""

from .cli import cli

cli()
