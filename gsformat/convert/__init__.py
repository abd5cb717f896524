"""`gsformat convert`: image folders, WebDataset tars and MDS datasets → splat shards."""


def __getattr__(name):
    if name == "run_convert":  # the fitter (scipy, pillow: the [fit] extra) only when used
        from .run import run_convert
        return run_convert
    raise AttributeError(name)


__all__ = ["run_convert"]
