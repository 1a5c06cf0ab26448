"""Command-line interface: one module per command, registered in :mod:`cryorient.cli.main`."""
