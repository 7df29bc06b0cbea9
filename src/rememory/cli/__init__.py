"""The ``rememory`` command line: one module per command group."""
