"""Orbax checkpoints of the train state: keep the last N, keep the best by an eval metric, verify
what is restored, resume from the newest intact one."""

import errno
import json
import math
import os
import shutil
import time
import zlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as policies

from polyseg.data import formats

MANIFEST = 'polyseg_files.json'  # in each step folder: {relative path: [bytes, crc32]}
DAMAGED_DIR = 'checkpoints_damaged'  # beside `checkpoints/`: damaged step folders set aside
LAYOUT = 'polyseg_layout'  # a packed checkpoint's step metadata: [[path, dtype, shape], ...]


class DamagedCheckpoint(OSError):
  """A checkpoint's files are not those that were written (or cannot be read)."""

  def __init__(self, directory: str, step: int, problem: str):
    self.step = step
    super().__init__(f'checkpoint {step} in {directory} is damaged: {problem}')


class CheckpointMismatch(ValueError):
  """A checkpoint holds other arrays than the config builds (another model or config)."""


def _file_record(path: str) -> list[int]:
  """[size in bytes, crc32] of a file."""
  crc = 0
  with open(path, 'rb') as f:
    while chunk := f.read(1 << 22):
      crc = zlib.crc32(chunk, crc)
  return [os.path.getsize(path), crc]


def _files(folder: str) -> list[str]:
  """The files below `folder`, as sorted paths relative to it."""
  return sorted(
    os.path.relpath(os.path.join(root, name), folder)
    for root, _, names in os.walk(folder)
    for name in names
  )


def folder_bytes(path: str) -> int:
  """The size of the files below `path` (0 when it does not exist)."""
  return sum(
    os.path.getsize(os.path.join(folder, name))
    for folder, _, names in os.walk(path)
    for name in names
  )


def state_bytes(state: Any) -> int:
  """The bytes of a pytree's arrays: what one checkpoint of it holds, before compression."""
  return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(state))


def _first_line(error: BaseException) -> str:
  text = str(error).strip().splitlines()
  return f'{type(error).__name__}: {text[0] if text else ""}'[:300]


def is_disk_full(error: BaseException | None) -> bool:
  """Whether `error` (or an error it was raised from) says the disk or the quota is full."""
  while error is not None:
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
      return True
    if 'No space left on device' in str(error) or 'Disk quota exceeded' in str(error):
      return True
    error = error.__cause__ or error.__context__
  return False


def _path_name(path) -> str:
  """'opt_state/1/0/mu/...' of a pytree path, whatever its keys' kinds (orbax's metadata tree
  holds a namedtuple's fields as dict keys, the state as attributes)."""
  parts = (getattr(k, 'key', getattr(k, 'idx', getattr(k, 'name', k))) for k in path)
  return '/'.join(str(part) for part in parts)


def _shapes(tree) -> dict[str, tuple]:
  """{path name: shape} of the leaves that have a shape (arrays, their metadata, shape structs)."""
  return {
    _path_name(path): tuple(leaf.shape)
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree)
    if hasattr(leaf, 'shape')
  }


def packable(state: Any) -> bool:
  """Whether `state` is written packed: this is the only process (in a multi-process run orbax
  writes each array shard by shard, from the processes that hold them) and every leaf is an array
  of a plain dtype (not a typed PRNG key)."""
  return jax.process_count() == 1 and all(
    hasattr(leaf, 'dtype') and not jnp.issubdtype(leaf.dtype, jax.dtypes.extended)
    for leaf in jax.tree.leaves(state)
  )


def _empty_flat(layout: list) -> dict[str, np.ndarray]:
  """The flat host arrays ({dtype name: [n]}, uninitialised) a packed state of `layout` fills."""
  sizes = {}
  for _, name, shape in layout:
    sizes[name] = sizes.get(name, 0) + math.prod(shape)
  return {name: np.empty(size, jnp.dtype(name)) for name, size in sizes.items()}


def pack(state: Any) -> tuple[dict[str, np.ndarray], list]:
  """(arrays, layout): the leaves of `state` copied into one flat host array per dtype ({dtype
  name: [n]}), one leaf on the host at a time, and [path, dtype name, shape] of each leaf in
  `state`'s order."""
  leaves = jax.tree_util.tree_leaves_with_path(state)
  layout = [[_path_name(path), leaf.dtype.name, list(leaf.shape)] for path, leaf in leaves]
  arrays = _empty_flat(layout)
  for view, (_, leaf) in zip(unpack(arrays, layout), leaves, strict=True):
    view[...] = np.asarray(leaf)
  return arrays, layout


def unpack(arrays: dict[str, np.ndarray], layout: list) -> list[np.ndarray]:
  """The leaves of a packed state, in order: views of `arrays` shaped as `layout` says."""
  start = dict.fromkeys(arrays, 0)
  leaves = []
  for _, name, shape in layout:
    size = math.prod(shape)
    leaves.append(arrays[name][start[name] : start[name] + size].reshape(shape))
    start[name] += size
  return leaves


def _placed(host: np.ndarray, like: Any) -> jax.Array:
  """`host` as a jax.Array of `like`'s dtype, on `like`'s sharding (a jax.Array's or a
  jax.ShapeDtypeStruct's; the default device where it has none)."""
  host = host.astype(like.dtype, copy=False)
  sharding = getattr(like, 'sharding', None)
  if sharding is None:
    return jnp.asarray(host)
  return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


class Checkpointer:
  """Saves `{'step', 'params', 'opt_state'}` pytrees under `<workdir>/checkpoints/<step>`.

  Keeps the `keep` latest checkpoints plus the best one by `best_metric` (higher is better).
  Every write is atomic (orbax writes to a temporary folder and renames it when complete), so a
  run killed mid-write resumes from the last complete checkpoint; after each write the size and
  CRC-32 of every file go to the step's `polyseg_files.json`, which `restore` checks first, so a
  file damaged later (truncated, overwritten) is found and named. A write that the disk cannot
  hold raises OSError(ENOSPC) naming the step, before it starts when the free space says so,
  else when the disk fills during it (the temporary folder is then not a checkpoint).

  A single process's state is written packed (`pack`): its leaves concatenated into one flat
  array per dtype, each leaf's path, dtype and shape in the step's metadata (`LAYOUT`), because
  orbax spends about 2 ms of CPU per array whatever its size and a state has hundreds to
  thousands (HopaDIFF's default state, 1,358 arrays: 2.9 s per save array by array, 0.26 s
  packed; `benchmarks/checkpoint.py`). A multi-process run's state is written array by array,
  each process its shards. `restore` reads both.

  `owner`: this process trains in the workdir. It deletes the temporary folders a killed write
  left behind, and `resume` sets a damaged checkpoint aside (to `<workdir>/checkpoints_damaged/`)
  and falls back to the newest intact one. Other processes (an evaluation beside the training)
  leave the folder as it is.
  """

  def __init__(
    self,
    workdir: str,
    keep: int = 3,
    best_metric: str = 'F1@50',
    owner: bool = False,
  ):
    self.workdir = os.path.abspath(workdir)
    self.directory = os.path.join(self.workdir, 'checkpoints')
    self.best_metric, self.owner = best_metric, owner
    metric = lambda metrics: metrics[best_metric]
    options = ocp.CheckpointManagerOptions(
      best_fn=metric,
      best_mode='max',
      preservation_policy=policies.AnyPreservationPolicy(
        [
          policies.LatestN(n=keep),
          policies.BestN(get_metric_fn=metric, n=1, keep_checkpoints_without_metrics=False),
        ]
      ),
      enable_async_checkpointing=False,
      cleanup_tmp_directories=owner,
      create=True,
    )
    self.manager = ocp.CheckpointManager(self.directory, options=options)

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def best_step(self) -> int | None:
    return self.manager.best_step()

  def step_dir(self, step: int) -> str:
    return os.path.join(self.directory, str(step))

  def save(self, step: int, state: Any, metrics: dict[str, float] | None = None) -> None:
    """Writes `state` as checkpoint `step` (overwrites nothing: a step already saved is skipped),
    then its manifest."""
    if step in self.manager.all_steps():
      return
    self._check_room(step, state)
    arrays, layout = pack(state) if packable(state) else (state, None)
    try:
      self.manager.save(
        step,
        args=ocp.args.StandardSave(arrays),
        metrics=metrics,
        force=True,
        custom_metadata=None if layout is None else {LAYOUT: layout},
      )
      self.manager.wait_until_finished()
      if jax.process_index() == 0:
        folder = self.step_dir(step)
        manifest = {name: _file_record(os.path.join(folder, name)) for name in _files(folder)}
        formats.write_atomic(os.path.join(folder, MANIFEST), json.dumps(manifest).encode())
    except Exception as error:
      if is_disk_full(error):
        raise OSError(
          errno.ENOSPC, f'no space left to write checkpoint {step}', self.directory
        ) from error
      raise

  def _check_room(self, step: int, state: Any) -> None:
    """OSError(ENOSPC) before a write that cannot fit: checkpoint `step` needs about the size of
    the newest one (the state's bytes for the first) and a MiB more. Stopping here, orbax starts
    no write that would fail half-way on a full disk."""
    steps = self.manager.all_steps()
    needed = folder_bytes(self.step_dir(max(steps))) if steps else state_bytes(state)
    needed += 1 << 20
    free = shutil.disk_usage(self.directory).free
    if free < needed:
      raise OSError(
        errno.ENOSPC,
        f'no space left to write checkpoint {step}: {free / 2**20:.1f} MiB free, it needs '
        f'about {needed / 2**20:.1f} MiB',
        self.directory,
      )

  def verify(self, step: int) -> None:
    """DamagedCheckpoint naming the first file of checkpoint `step` that is missing or differs
    from its manifest (a checkpoint written before manifests existed passes)."""
    folder = self.step_dir(step)
    try:
      with open(os.path.join(folder, MANIFEST)) as f:
        manifest = json.load(f)
    except FileNotFoundError:
      return
    except (OSError, ValueError) as error:
      raise DamagedCheckpoint(self.directory, step, f'{MANIFEST}: {_first_line(error)}') from None
    for name, (size, crc) in manifest.items():
      path = os.path.join(folder, name)
      if not os.path.isfile(path):
        raise DamagedCheckpoint(self.directory, step, f'{name} is missing')
      found_size, found_crc = _file_record(path)
      if found_size != size:
        raise DamagedCheckpoint(
          self.directory, step, f'{name} has {found_size} bytes, {size} were written'
        )
      if found_crc != crc:
        raise DamagedCheckpoint(
          self.directory, step, f'{name} does not hold the bytes that were written (CRC-32)'
        )

  def _metadata(self, step: int, read):
    """`read(step)` of the manager's metadata readers; DamagedCheckpoint when it fails."""
    try:
      return read(step)
    except Exception as error:  # noqa: BLE001  (orbax raises plain Exception for unreadable files)
      raise DamagedCheckpoint(
        self.directory, step, f'its metadata cannot be read ({_first_line(error)})'
      ) from None

  def _check_structure(self, step: int, saved: dict[str, tuple], target: Any) -> None:
    """CheckpointMismatch when checkpoint `step` holds other arrays (`saved`: {path: shape}) than
    `target` (another model or config: not damage)."""
    expected = _shapes(target)
    if saved != expected:
      differ = sorted(k for k in saved.keys() | expected.keys() if saved.get(k) != expected.get(k))
      name = differ[0]
      raise CheckpointMismatch(
        f'checkpoint {step} in {self.directory} holds other arrays than this config builds '
        f'({len(differ)} differ, e.g. {name}: saved {saved.get(name)}, expected '
        f'{expected.get(name)}); use the config it was trained with, or another --workdir'
      )

  def restore(self, target: Any, step: int | None = None) -> Any:
    """Restores checkpoint `step` (default: the latest) into the structure, dtypes and shardings
    of `target` (arrays or jax.ShapeDtypeStruct), after `verify`; DamagedCheckpoint when its
    files are damaged."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f'no checkpoint in {self.directory}')
    if step not in self.manager.all_steps():
      raise FileNotFoundError(
        f'no checkpoint {step} in {self.directory} (it has {list(self.manager.all_steps())})'
      )
    self.verify(step)
    layout = (self._metadata(step, self.manager.metadata).custom_metadata or {}).get(LAYOUT)
    if layout is None:  # written array by array
      tree = getattr(self._metadata(step, self.manager.item_metadata), 'tree', None)
      if tree is not None:
        self._check_structure(step, _shapes(tree), target)
      args = ocp.args.StandardRestore(jax.tree.map(ocp.utils.to_shape_dtype_struct, target))
    else:
      self._check_structure(step, {path: tuple(shape) for path, _, shape in layout}, target)
      args = ocp.args.StandardRestore(_empty_flat(layout))
    try:
      restored = self.manager.restore(step, args=args)
    except Exception as error:  # noqa: BLE001  (orbax / tensorstore read errors of any type)
      raise DamagedCheckpoint(self.directory, step, _first_line(error)) from None
    if layout is None:
      return restored
    by_path = dict(zip((path for path, _, _ in layout), unpack(restored, layout), strict=True))
    return jax.tree_util.tree_map_with_path(
      lambda path, like: _placed(by_path[_path_name(path)], like), target
    )

  def resume(self, target: Any) -> tuple[Any, bool]:
    """(state, resumed): the newest intact checkpoint restored into `target`'s structure, or
    `target` itself when there is none. Each damaged newer one is reported in one line and, by
    the owner, set aside; another process stops with DamagedCheckpoint."""
    while (step := self.latest_step()) is not None:
      try:
        return self.restore(target, step), True
      except DamagedCheckpoint as damaged:
        if not self.owner:
          raise
        aside = self._set_aside(step)
        older = [s for s in self.manager.all_steps() if s < step]
        then = f'resuming from checkpoint {max(older)}' if older else 'starting from scratch'
        print(f'{damaged}; moved it to {aside}; {then}', flush=True)
    return target, False

  def _set_aside(self, step: int) -> str:
    """Moves checkpoint `step` to `<workdir>/checkpoints_damaged/<step>-<time>`; its path."""
    aside = os.path.join(self.workdir, DAMAGED_DIR, f'{step}-{time.strftime("%Y%m%d-%H%M%S")}')
    os.makedirs(os.path.dirname(aside), exist_ok=True)
    shutil.move(self.step_dir(step), aside)
    self.manager.reload()
    return aside

  def close(self) -> None:
    self.manager.close()
