"""polyseg/engine/checkpoint.py: a single process's state is written packed (one array per dtype)
and restored exactly, as is one written array by array; every restore is verified against the
manifest written with the checkpoint; a damaged file is named; the training owner falls back to the
newest intact checkpoint and sets the damaged one aside; other arrays than the config builds are a
mismatch, not damage; a full disk during a write names the step."""

import errno
import json
import os
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

from polyseg.engine import checkpoint as checkpoint_lib


def make_state(step: int, width: int = 100) -> dict:
  return {
    'step': jnp.int32(step),
    'params': {'w': jnp.arange(10.0 * width).reshape(10, width) + step, 'b': jnp.ones(7) * step},
  }


def mixed_state() -> dict:
  """A state of several dtypes, containers (an optax namedtuple among them) and shapes."""
  params = {'w': jnp.arange(12.0).reshape(3, 4), 'b': jnp.arange(5.0, dtype=jnp.bfloat16)}
  opt_state = optax.adam(1e-3).init(params)
  return {
    'step': jnp.int32(7),
    'params': params,
    'opt_state': opt_state,
    'task_state': {'seen': jnp.array([True, False, True]), 'counts': [jnp.arange(3), jnp.int32(2)]},
  }


def assert_same_tree(a, b) -> None:
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    assert isinstance(x, jax.Array) and x.dtype == y.dtype and x.shape == y.shape
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_a_state_is_written_as_one_array_per_dtype_and_restored_exactly(tmp_path):
  state = mixed_state()
  ckpt = checkpoint_lib.Checkpointer(str(tmp_path))
  ckpt.save(7, state)
  arrays = ckpt.manager.item_metadata(7).tree
  assert {name: meta.shape for name, meta in arrays.items()} == {
    'int32': (1 + 1 + 3 + 1,),  # step, adam's count, counts[0], counts[1]
    'float32': (12 * 3,),  # w, its mu and nu
    'bfloat16': (5 * 3,),
    'bool': (3,),
  }
  layout = ckpt.manager.metadata(7).custom_metadata[checkpoint_lib.LAYOUT]
  assert len(layout) == len(jax.tree.leaves(state))
  assert ['params/w', 'float32', [3, 4]] in layout and ['step', 'int32', []] in layout
  zeros = jax.tree.map(jnp.zeros_like, state)
  assert_same_tree(ckpt.restore(zeros, 7), state)  # into arrays
  assert_same_tree(ckpt.restore(jax.eval_shape(lambda: state), 7), state)  # into shapes
  ckpt.close()


def test_pack_and_unpack_are_inverse():
  state = mixed_state()
  arrays, layout = checkpoint_lib.pack(state)
  leaves = checkpoint_lib.unpack(arrays, layout)
  assert_same_tree(jax.tree.unflatten(jax.tree.structure(state), map(jnp.asarray, leaves)), state)
  assert checkpoint_lib.packable(state)
  assert not checkpoint_lib.packable({'key': jax.random.key(0)})  # a typed key: array by array


def test_a_checkpoint_written_array_by_array_restores_and_is_checked(tmp_path):
  """What a multi-process run (and polyseg before packing) writes."""
  state = mixed_state()
  ckpt = checkpoint_lib.Checkpointer(str(tmp_path))
  ckpt.manager.save(3, args=ocp.args.StandardSave(state))
  ckpt.manager.wait_until_finished()
  assert len(ckpt.manager.item_metadata(3).tree['params']) == 2  # not packed
  assert_same_tree(ckpt.restore(jax.tree.map(jnp.zeros_like, state), 3), state)
  other = dict(state, params={'w': jnp.zeros((4, 3)), 'b': state['params']['b']})
  with pytest.raises(checkpoint_lib.CheckpointMismatch, match=r'params/w: saved \(3, 4\)'):
    ckpt.restore(other, 3)
  ckpt.close()


@pytest.fixture
def saved(tmp_path):
  """A workdir with checkpoints 2, 4 and 6, and its (owner) checkpointer."""
  ckpt = checkpoint_lib.Checkpointer(str(tmp_path), keep=5, owner=True)
  for step in (2, 4, 6):
    ckpt.save(step, make_state(step))
  yield ckpt
  ckpt.close()


def largest_file(ckpt, step: int) -> str:
  folder = ckpt.step_dir(step)
  files = [f for f in checkpoint_lib._files(folder) if f != checkpoint_lib.MANIFEST]
  return max(files, key=lambda f: os.path.getsize(os.path.join(folder, f)))


def test_the_manifest_lists_every_file_with_its_size_and_crc(saved):
  folder = saved.step_dir(6)
  manifest = json.loads(pathlib.Path(folder, checkpoint_lib.MANIFEST).read_text())
  files = [f for f in checkpoint_lib._files(folder) if f != checkpoint_lib.MANIFEST]
  assert sorted(manifest) == files and len(files) > 3
  for name, (size, _) in manifest.items():
    assert os.path.getsize(os.path.join(folder, name)) == size
  restored = saved.restore(make_state(0), 6)
  np.testing.assert_array_equal(restored['params']['w'], make_state(6)['params']['w'])


@pytest.mark.parametrize('damage', ['truncate', 'flip', 'delete'])
def test_a_damaged_file_is_named_with_its_step(saved, damage):
  name = largest_file(saved, 6)
  path = os.path.join(saved.step_dir(6), name)
  size = os.path.getsize(path)
  if damage == 'truncate':
    os.truncate(path, size // 2)
    problem = f'{name} has {size // 2} bytes, {size} were written'
  elif damage == 'flip':
    with open(path, 'r+b') as f:
      f.seek(size // 2)
      byte = f.read(1)
      f.seek(size // 2)
      f.write(bytes([byte[0] ^ 0xFF]))
    problem = f'{name} does not hold the bytes that were written (CRC-32)'
  else:
    os.remove(path)
    problem = f'{name} is missing'
  with pytest.raises(checkpoint_lib.DamagedCheckpoint) as damaged:
    saved.restore(make_state(0), 6)
  assert str(damaged.value) == f'checkpoint 6 in {saved.directory} is damaged: {problem}'
  assert damaged.value.step == 6
  np.testing.assert_array_equal(saved.restore(make_state(0), 4)['params']['b'], 4 * np.ones(7))


def test_the_owner_falls_back_to_the_newest_intact_and_sets_the_damaged_aside(saved, capsys):
  for step in (6, 4):
    os.truncate(os.path.join(saved.step_dir(step), largest_file(saved, step)), 10)
  state, resumed = saved.resume(make_state(0))
  assert resumed and int(state['step']) == 2
  lines = capsys.readouterr().out.strip().splitlines()
  assert len(lines) == 2
  assert lines[0].startswith(f'checkpoint 6 in {saved.directory} is damaged: ')
  assert lines[0].endswith('; resuming from checkpoint 4')
  assert lines[1].endswith('; resuming from checkpoint 2')
  aside = os.path.join(saved.workdir, checkpoint_lib.DAMAGED_DIR)
  assert sorted(name.split('-')[0] for name in os.listdir(aside)) == ['4', '6']  # kept, not deleted
  assert saved.latest_step() == 2 and sorted(os.listdir(saved.directory)) == ['2']


def test_with_nothing_intact_the_owner_starts_from_scratch(tmp_path, capsys):
  ckpt = checkpoint_lib.Checkpointer(str(tmp_path), owner=True)
  ckpt.save(3, make_state(3))
  os.remove(os.path.join(ckpt.step_dir(3), largest_file(ckpt, 3)))
  fresh = make_state(0)
  state, resumed = ckpt.resume(fresh)
  assert not resumed and state is fresh
  assert capsys.readouterr().out.strip().endswith('; starting from scratch')


def test_a_process_that_does_not_own_the_workdir_stops_and_moves_nothing(saved):
  os.truncate(os.path.join(saved.step_dir(6), largest_file(saved, 6)), 10)
  reader = checkpoint_lib.Checkpointer(saved.workdir, keep=5)
  with pytest.raises(checkpoint_lib.DamagedCheckpoint, match='checkpoint 6 .* is damaged'):
    reader.resume(make_state(0))
  assert sorted(os.listdir(saved.directory), key=int) == ['2', '4', '6']


def test_other_arrays_than_the_config_builds_are_a_mismatch_not_damage(saved):
  with pytest.raises(checkpoint_lib.CheckpointMismatch, match=r'params/w: saved \(10, 100\)'):
    saved.resume(make_state(0, width=50))
  assert saved.latest_step() == 6  # nothing set aside


def test_an_unknown_step_is_not_found(saved):
  with pytest.raises(FileNotFoundError, match=r'no checkpoint 5 in .* \(it has \[2, 4, 6\]\)'):
    saved.restore(make_state(0), 5)


def test_a_full_disk_during_a_write_names_the_step(saved, monkeypatch):
  def full(*args, **kwargs):
    raise ValueError('Error writing "d/0a1b": [OS error: No space left on device]')

  monkeypatch.setattr(saved.manager, 'save', full)
  with pytest.raises(OSError) as error:
    saved.save(8, make_state(8))
  assert error.value.errno == errno.ENOSPC and error.value.filename == saved.directory
  assert error.value.strerror == 'no space left to write checkpoint 8'
  assert checkpoint_lib.is_disk_full(error.value)
  assert not checkpoint_lib.is_disk_full(ValueError('some other failure'))
