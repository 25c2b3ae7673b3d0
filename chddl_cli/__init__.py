"""The ``chddl`` command line: a thin Typer shell over :mod:`stages`."""
