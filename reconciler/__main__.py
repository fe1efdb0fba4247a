"""``python -m reconciler`` runs the zlayer CLI."""

from reconciler.cli.main import main

main()
