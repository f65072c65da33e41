"""Evaluation: `evaluate(checkpoint, task, ...) -> Result` (srlm.eval.run) over the harness (srlm.eval.harness)
and metrics (srlm.eval.metrics). Imported lazily, so `import srlm.eval.harness` stays light."""

__all__ = ["evaluate", "Result"]


def __getattr__(name):
    if name in __all__:
        from srlm.eval import run

        return getattr(run, name)
    raise AttributeError(f"module 'srlm.eval' has no attribute {name!r}")
