"""metalab: learning to learn in PyTorch."""

__version__ = "0.1.0"


def load_run(run_dir, checkpoint="last"):
    """The trained `MetaLearner` of a run directory, ready for ``adapt``: its ``last`` or
    ``best`` (on validation) checkpoint (see `metalab.train`)."""
    from metalab.train import load_run as _load_run

    return _load_run(run_dir, checkpoint)
