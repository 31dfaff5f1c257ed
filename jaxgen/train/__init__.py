"""The shared training stack: ``loop`` (the trainer), ``step`` (composable step pieces),
``state`` (TrainState), ``optim`` (Optax builders), ``mesh`` (device mesh and shardings),
``checkpoint`` (Orbax checkpoints and safe restore), ``evaluate`` (evaluators), ``host`` (CPU
host set-up), ``logging`` (JSONL and TensorBoard), ``images`` (PNG grids)."""
