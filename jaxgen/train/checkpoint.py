"""Orbax checkpoints of {train state, metadata}, and a restore that never silently starts over.

Each checkpoint holds the state, and a JSON ``meta`` item with the run's config, the state's
structure (every leaf's path, shape and dtype) and a fingerprint (per-leaf sums, computed on
device). The data position is the step (train iterators are indexed by global batch and have
``seek(step)``), so a checkpoint does not depend on the number of processes. Iterators without
``seek`` (research code's own) have their state saved per process as before.

Restore tells failures apart by evidence, never by the wording of an error
(:meth:`Checkpointer.restore`):
  * damage: a file of the checkpoint is missing or has another size than when it was written
    (each finished checkpoint records its files and sizes in ``jaxgen_files.json``), its
    metadata is missing or is not JSON, or the restored state does not match the fingerprint
    saved with it: warn and fall back to the previous checkpoint;
  * a state of another structure (a config change): :class:`StateMismatch`, a usage error that
    names the state paths and config keys that differ. Adding or removing the EMA is the one
    structural change applied on purpose: an EMA added on resume starts from the restored
    parameters (of the subtree the family tracks);
  * anything else (a sharding or shape the checkpoint cannot take, out of memory, a transient
    filesystem error, any error while reading a checkpoint whose files are all as written):
    raised as it is; the run stops and nothing is trained over the checkpoints;
  * checkpoints exist but none is readable: :class:`jaxgen.errors.RunError`.
Every process restores the same step: the candidates come from process 0.
"""
from __future__ import annotations

import json
import logging
import os
from typing import Any, Callable, Optional

import grain
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from jaxgen.errors import RunError, UsageError

log = logging.getLogger("jaxgen")

FILES = "jaxgen_files.json"  # {relative path: size} of a finished checkpoint's files


class StateMismatch(UsageError):
    """The checkpoint's state has another structure than the config builds."""


class _Damaged(Exception):
    """A checkpoint whose files are damaged: fall back to the previous one."""


class _IteratorStateAdapter:
    """Lets Grain's per-process Orbax handler save and restore any iterator with JSON state.

    Used only for iterators without ``seek(step)``. The state is snapshotted when the save
    starts: an async save must not see batches drawn after it.
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


def state_structure(tree: Any) -> dict[str, list]:
    """{leaf path: [shape, dtype]} of a pytree of arrays or ShapeDtypeStructs."""
    leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
    return {jax.tree_util.keystr(p): [list(x.shape), str(x.dtype)] for p, x in leaves}


def _group(paths: list[str], limit: int = 4) -> str:
    """'.ema_params[...] (6 leaves)' style summary of a list of leaf paths."""
    groups: dict[str, int] = {}
    for p in paths:
        head = p.split("]")[0] + "]" if p.count("[") > 1 else p
        head = head if "[" in head else p
        groups[head] = groups.get(head, 0) + 1
    items = [f"{g}{' (%d leaves)' % n if n > 1 else ''}" for g, n in sorted(groups.items())]
    return ", ".join(items[:limit]) + (f" and {len(items) - limit} more" if len(items) > limit else "")


def describe_mismatch(saved: dict, wanted: dict) -> str:
    """One line naming the state paths that were added, removed or changed shape/dtype."""
    added = [p for p in wanted if p not in saved]
    removed = [p for p in saved if p not in wanted]
    changed = [p for p in wanted if p in saved and saved[p] != wanted[p]]
    parts = []
    if added:
        parts.append(f"new in the config: {_group(added)}")
    if removed:
        parts.append(f"only in the checkpoint: {_group(removed)}")
    if changed:
        p = changed[0]
        parts.append(f"changed shape/dtype: {_group(changed)} (e.g. {p} {saved[p]} -> {wanted[p]})")
    return "; ".join(parts)


def changed_config_keys(saved: dict, current: dict, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two config dicts, as 'key: old -> new'."""
    out = []
    for k in sorted(set(saved) | set(current)):
        a, b = saved.get(k), current.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            out += changed_config_keys(a, b, f"{prefix}{k}.")
        elif a != b and not (isinstance(a, list) and isinstance(b, (list, tuple)) and list(b) == a):
            out.append(f"{prefix}{k}: {a!r} -> {b!r}")
    return out


def _files(step_dir: str) -> dict[str, int]:
    """{path relative to ``step_dir``: size} of every file below it (but the record itself)."""
    out = {}
    for root, _, names in os.walk(step_dir):
        for name in names:
            path = os.path.join(root, name)
            rel = os.path.relpath(path, step_dir)
            if rel != FILES:
                out[rel] = os.path.getsize(path)
    return out


def record_files(step_dir: str) -> None:
    """Writes the record of a finished checkpoint's files (process 0; idempotent)."""
    from jaxgen.train.workdir import write_json

    if jax.process_index() == 0 and not os.path.exists(os.path.join(step_dir, FILES)):
        write_json(os.path.join(step_dir, FILES), _files(step_dir))


def check_files(step_dir: str) -> Optional[bool]:
    """True: every recorded file is there with its size; False: one is missing or resized
    (damage, :class:`_Damaged` names it); None: the checkpoint has no record (not verifiable)."""
    path = os.path.join(step_dir, FILES)
    if not os.path.exists(path):
        return None
    try:
        with open(path, encoding="utf-8") as f:
            recorded = json.load(f)
    except (OSError, ValueError) as e:
        raise _Damaged(f"its file record is unreadable ({_first_line(e)})") from None
    for rel, size in recorded.items():
        full = os.path.join(step_dir, rel)
        if not os.path.exists(full):
            raise _Damaged(f"its file {rel} is missing")
        if os.path.getsize(full) != size:
            raise _Damaged(f"its file {rel} has {os.path.getsize(full)} bytes, written with {size}")
    return True


def _agreed_steps(steps: list[int]) -> list[int]:
    """Multi-host: every process uses process 0's list of checkpoint steps."""
    if jax.process_count() == 1:
        return steps
    from jax.experimental import multihost_utils
    padded = np.full(64, -1, np.int64)
    padded[:min(len(steps), 64)] = steps[-64:]
    padded = np.asarray(multihost_utils.broadcast_one_to_all(padded))
    return [int(s) for s in padded if s >= 0]


def _all_agree(ok: bool) -> bool:
    """Multi-host: True only if every process succeeded."""
    if jax.process_count() == 1:
        return ok
    from jax.experimental import multihost_utils
    flags = multihost_utils.process_allgather(np.asarray([1 if ok else 0], np.int32))
    return bool(np.all(np.asarray(flags)))


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

    def _step_dir(self, step: int) -> str:
        return os.path.join(self.directory, str(step))

    def _record_finished(self) -> None:
        """Records the files of every finished checkpoint that has no record yet."""
        for step in self.steps():
            record_files(self._step_dir(step))

    def save(self, step: int, state: Any, data_iterator: Any, config: dict, *,
             force: bool = False) -> bool:
        """Starts an (async) save of the state and its metadata at ``step``."""
        self.manager.wait_until_finished()  # the previous save is on disk: record its files
        self._record_finished()
        meta = {"config": config, "fingerprint": np.asarray(fingerprint(state)).tolist(),
                "structure": state_structure(state)}
        items = {"state": ocp.args.StandardSave(state), "meta": ocp.args.JsonSave(meta)}
        if data_iterator is not None and not hasattr(data_iterator, "seek"):
            items["data"] = grain.checkpoint.CheckpointSave(_IteratorStateAdapter(data_iterator))
        return self.manager.save(step, args=ocp.args.Composite(**items), force=force)

    def _read_meta(self, step: int) -> dict:
        try:
            meta = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
        except (FileNotFoundError, json.JSONDecodeError) as e:  # a missing or truncated file
            raise _Damaged(f"its metadata is unreadable ({_first_line(e)})") from e
        if not isinstance(meta, dict) or "fingerprint" not in meta:
            raise _Damaged("its metadata is incomplete")
        return meta

    def _restore_step(self, step: int, abstract_state: Any, data_iterator: Any,
                      ema_of: Optional[Callable[[Any], Any]], config: Optional[dict]) -> tuple[Any, dict]:
        verified = check_files(self._step_dir(step))
        meta = self._read_meta(step)
        wanted = state_structure(abstract_state)
        saved = meta.get("structure")
        target, ema_fix = abstract_state, None
        if saved is not None and saved != wanted:
            target, ema_fix = _ema_only_change(saved, wanted, abstract_state, ema_of)
            if target is None:
                keys = changed_config_keys(meta.get("config", {}), config or {})
                keys = [k for k in keys if not k.startswith(("experiment:", "train.steps:"))]
                hint = f" (config changes: {'; '.join(keys[:5])})" if keys else ""
                raise StateMismatch(
                    f"the checkpoint at step {step} holds a state of another structure than this "
                    f"config builds: {describe_mismatch(saved, wanted)}{hint}; undo the change or "
                    "train into a fresh --workdir")
        items = {"state": ocp.args.StandardRestore(target)}
        if data_iterator is not None and not hasattr(data_iterator, "seek"):
            items["data"] = grain.checkpoint.CheckpointRestore(_IteratorStateAdapter(data_iterator))
        try:
            restored = self.manager.restore(step, args=ocp.args.Composite(**items))
        except json.JSONDecodeError as e:  # a truncated metadata file of the state
            raise _Damaged(f"a metadata file of its state is truncated ({_first_line(e)})") from e
        except Exception as e:  # noqa: BLE001 - damage only on evidence
            if verified is None and isinstance(e, (FileNotFoundError,)):
                raise _Damaged(f"a file of its state is missing ({_first_line(e)})") from e
            raise
        state = restored["state"]
        if not _fingerprint_matches(meta["fingerprint"], state):
            raise _Damaged("its contents do not match the fingerprint saved with it")
        if ema_fix is not None:
            state = ema_fix(state)
        if data_iterator is not None and hasattr(data_iterator, "seek"):
            data_iterator.seek(step)
        return state, meta

    def restore(self, abstract_state: Any, data_iterator: Any = None, *,
                ema_of: Optional[Callable[[Any], Any]] = None, config: Optional[dict] = None
                ) -> Optional[tuple[int, Any, dict]]:
        """Restores the newest readable checkpoint; returns (step, state, config), or None when
        the workdir has no checkpoint at all.

        ``abstract_state`` is a pytree of ``jax.ShapeDtypeStruct`` carrying shardings, so a run can
        resume onto a different mesh. ``data_iterator``, when given, is moved to the restored
        step. ``ema_of(params)`` is the subtree an EMA tracks (identity when None). ``config``
        (a dict) lets a structure mismatch name the config keys that changed.

        Raises:
          StateMismatch: the checkpoint's state has another structure (a usage error).
          RunError: checkpoints exist but every one is damaged.
          Exception: any failure that is not damage (out of memory, I/O), as it is.
        """
        steps = _agreed_steps(self.steps())
        if not steps:
            return None
        initial = data_iterator.get_state() if data_iterator is not None and \
            not hasattr(data_iterator, "seek") else None
        damaged = []
        for step in reversed(steps):
            error: Optional[BaseException] = None
            try:
                state, meta = self._restore_step(step, abstract_state, data_iterator, ema_of, config)
            except _Damaged as e:  # only evidence of damage falls back; the rest is raised
                error = e
            if _all_agree(error is None):
                return step, state, meta["config"]
            msg = _first_line(error) if error is not None else "another process could not read it"
            log.warning("checkpoint at step %d in %s is damaged (%s); falling back to the "
                        "previous one", step, self.directory, msg[:200])
            damaged.append(step)
        if initial is not None:
            data_iterator.set_state(initial)
        raise RunError(f"every checkpoint in {self.directory} is damaged (steps "
                       f"{', '.join(map(str, damaged))}); nothing was trained over them: move them "
                       "away to start again, or restore them from a backup")

    def wait(self) -> None:
        self.manager.wait_until_finished()
        self._record_finished()

    def close(self) -> None:
        self.wait()
        self.manager.close()


def _first_line(e: BaseException) -> str:
    return str(e).splitlines()[0] if str(e) else type(e).__name__


def _ema_only_change(saved: dict, wanted: dict, abstract_state: Any,
                     ema_of: Optional[Callable[[Any], Any]]):
    """(restore target, fix-up) when the two structures differ only by the EMA; else (None, None).

    EMA added: restore without it, then start it from the restored parameters.
    EMA removed: restore it (shapes as the tracked parameters) and drop it.
    """
    def strip(s):
        return {p: v for p, v in s.items() if not p.startswith(".ema_params")}
    if strip(saved) != strip(wanted):
        return None, None
    ema_of = ema_of or (lambda p: p)
    has_saved = any(p.startswith(".ema_params") for p in saved)
    has_wanted = any(p.startswith(".ema_params") for p in wanted)
    if has_wanted and not has_saved:
        def add(state):
            log.info("train.ema_decay turned on at resume: the EMA starts from the restored parameters")
            return state.replace(ema_params=jax.tree.map(jnp.copy, ema_of(state.params)))
        return abstract_state.replace(ema_params=None), add
    if has_saved and not has_wanted:
        target = abstract_state.replace(ema_params=ema_of(abstract_state.params))
        if state_structure(target) != saved:
            return None, None

        def drop(state):
            log.info("train.ema_decay turned off at resume: the saved EMA is dropped")
            return state.replace(ema_params=None)
        return target, drop
    return None, None
