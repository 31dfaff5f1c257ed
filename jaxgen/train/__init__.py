"""The shared training stack: ``loop`` (the trainer), ``step`` (composable step pieces),
``state`` (TrainState), ``optim`` (Optax builders), ``mesh`` (device mesh and shardings),
``checkpoint`` (Orbax checkpoints and safe restore), ``evaluate`` (evaluators), ``host`` (CPU
host set-up), ``logging`` (JSONL and TensorBoard), ``images`` (PNG grids).

``jaxgen.train`` is also callable: ``jaxgen.train(config, workdir, **options)`` is
:func:`jaxgen.train.loop.train` with the family registry (:func:`jaxgen.models.make_family`) as
its default ``family``.
"""
import sys as _sys
import types as _types


class _TrainModule(_types.ModuleType):
    """The ``jaxgen.train`` package, callable as the trainer."""

    def __call__(self, config, workdir, **options):
        from jaxgen.models import make_family
        from jaxgen.train.loop import train

        options.setdefault("family", make_family)
        return train(config, workdir, **options)


_sys.modules[__name__].__class__ = _TrainModule
