"""The ``shardflow`` command line: one module per command, wired up in :mod:`.main`.

Each command module has ``register(subparsers)``, which adds its parser and sets
``run``, and ``run(args) -> int``, the exit status. Nothing is imported here, so that
``python -m shardflow.cli.main`` runs the module once.
"""
