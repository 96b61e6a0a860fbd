"""The command line: the ``tfpipe`` console script (:mod:`~tfpipe.cli.main`), one module per command
group (:mod:`~tfpipe.cli.train`, :mod:`~tfpipe.cli.predict`, :mod:`~tfpipe.cli.experiments`) and the
``python -m`` entry points (``tfpipe/*/__main__.py``), which import the library and are never imported
by it.

Every command imports its library functions when it runs, so ``--help`` loads no TensorFlow. The
terminal helpers the library shares with it (parser, signals, log filter) are :mod:`tfpipe.console`.
"""
