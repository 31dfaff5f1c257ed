"""Orbax checkpoints of {train state, data-iterator state, config}, saved together.

Each checkpoint also records a fingerprint of the state (per-leaf sums, computed on device); on
restore the fingerprint is recomputed, so a checkpoint whose files were half written or damaged
is detected even when Orbax can read it. An unreadable or mismatching latest checkpoint is
skipped with a warning and the previous one is used.
"""
from __future__ import annotations

import json
import logging
import os
from typing import Any, Optional

import grain
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

log = logging.getLogger("jaxgen")


class _IteratorStateAdapter:
    """Lets Grain's per-process Orbax handler save and restore any iterator with JSON state.

    Grain's handler writes ``process_<i>-of-<n>.json`` per process; it treats non-Grain items as
    byte-state iterators, so this adapter encodes the (JSON-able) state. The state is snapshotted
    when the save starts: an async save must not see batches drawn after it.
    """

    def __init__(self, iterator: Any):
        self._iterator = iterator
        self._snapshot = json.dumps(iterator.get_state()).encode()

    def get_state(self) -> bytes:
        return self._snapshot

    def set_state(self, state: bytes) -> None:
        self._iterator.set_state(json.loads(state.decode()))

    def start_prefetch(self) -> None:
        pass


@jax.jit
def fingerprint(state: Any) -> jax.Array:
    """float32 [num_leaves, 2]: sum and sum of squares of every array leaf of ``state``."""
    leaves = [jnp.asarray(x, jnp.float32) for x in jax.tree.leaves(state)]
    return jnp.stack([jnp.stack([x.sum(), jnp.square(x).sum()]) for x in leaves])


def _fingerprint_matches(expected: list, state: Any) -> bool:
    got = np.asarray(jax.device_get(fingerprint(state)))
    want = np.asarray(expected, np.float32)
    return got.shape == want.shape and bool(np.allclose(got, want, rtol=1e-4, atol=1e-6))


class Checkpointer:
    """Keeps the last ``keep`` checkpoints of a run under ``workdir/checkpoints``."""

    def __init__(self, workdir: str, keep: int = 3, async_save: bool = True):
        self.directory = os.path.join(os.path.abspath(workdir), "checkpoints")
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, enable_async_checkpointing=async_save, create=True,
            cleanup_tmp_directories=True)
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    def steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def save(self, step: int, state: Any, data_iterator: Any, config: dict, *,
             force: bool = False) -> bool:
        """Starts an (async) save of state, iterator state and config at ``step``."""
        meta = {"config": config, "fingerprint": np.asarray(fingerprint(state)).tolist()}
        args = ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            data=grain.checkpoint.CheckpointSave(_IteratorStateAdapter(data_iterator)),
            meta=ocp.args.JsonSave(meta),
        )
        return self.manager.save(step, args=args, force=force)

    def restore(self, abstract_state: Any, data_iterator: Any = None
                ) -> Optional[tuple[int, Any, dict]]:
        """Restores the newest readable checkpoint; returns (step, state, config) or None.

        ``abstract_state`` is a pytree of ``jax.ShapeDtypeStruct`` carrying shardings, so a run can
        resume onto a different mesh. ``data_iterator``, when given, has its state set in place.
        """
        initial = data_iterator.get_state() if data_iterator is not None else None
        for step in reversed(self.steps()):
            try:
                items = {"state": ocp.args.StandardRestore(abstract_state),
                         "meta": ocp.args.JsonRestore()}
                if data_iterator is not None:
                    items["data"] = grain.checkpoint.CheckpointRestore(_IteratorStateAdapter(data_iterator))
                restored = self.manager.restore(step, args=ocp.args.Composite(**items))
                if not _fingerprint_matches(restored["meta"]["fingerprint"], restored["state"]):
                    raise ValueError("its contents do not match the fingerprint saved with it")
            except Exception as e:  # noqa: BLE001 - any failure means: try the previous one
                msg = str(e).splitlines()[0] if str(e) else type(e).__name__
                log.warning("checkpoint at step %d in %s is unreadable or corrupt (%s); "
                            "falling back to the previous one", step, self.directory, msg[:200])
                continue
            return step, restored["state"], restored["meta"]["config"]
        if data_iterator is not None:  # a failed attempt may have moved it: start from scratch
            data_iterator.set_state(initial)
        return None

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()
