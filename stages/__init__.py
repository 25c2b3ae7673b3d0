"""chddl's library: the pipeline stages and everything below them.

Nothing in this package prints to the console; long work reports through a
:class:`stages.progress.Progress` passed in by the caller.
"""

__version__ = "0.1.0"
