r"""The command line (`python -m polyseg.main`) with one fault injected, for tests/engine/test_faults.py.

python tests/engine/fault_driver.py FAULT [polyseg.main flags...]

FAULT is 'none' or KIND@STEP, where the fault strikes when the training loop asks for the batch of
STEP (that is, after STEP steps are done; see `at_loop_batch`):
  sigkill@S       SIGKILL: the process dies at once, mid-training
  checkpoint@S    SIGKILL inside the write of checkpoint S, after its files are written to orbax's
                  temporary folder and before the rename that completes it
  sigterm@S       SIGTERM (a scheduler's preemption notice) before step S runs
  sigint@S        SIGINT (Ctrl-C) before step S runs
  diskfull@S:K    before step S runs, fills the file system of the workdir with `<workdir>/../filler`,
                  leaving K KiB free (a test mounts a small file system for the workdir)
"""

import os
import signal
import sys

from absl import app
from orbax.checkpoint._src.path import atomicity

from polyseg import main
from polyseg.data import pipeline

SIGNALS = {'sigkill': signal.SIGKILL, 'sigterm': signal.SIGTERM, 'sigint': signal.SIGINT}


def at_loop_batch(step: int, action) -> None:
  """Runs `action()` when the training loop asks for the batch of `step`: the loop asks
  `pipeline.Prefetcher` (data.prefetch > 0, the default), in the main thread; the batches it
  builds ahead and the one the first step is compiled for do not count."""
  ask = pipeline.Prefetcher.__call__

  def patched(self, at):
    if at == step:
      action()
    return ask(self, at)

  pipeline.Prefetcher.__call__ = patched


def fill_disk(workdir: str, free_kib: int) -> None:
  """Fills the file system of `workdir` with `<workdir>/../filler`, leaving `free_kib` KiB free."""
  path = os.path.join(os.path.dirname(os.path.abspath(workdir)), 'filler')
  with open(path, 'wb', buffering=0) as f:
    try:
      while f.write(b'\1' * (1 << 20)):
        pass
    except OSError:  # ENOSPC: the file system is full
      pass
    f.truncate(max(0, os.fstat(f.fileno()).st_size - free_kib * 1024))


def kill_in_checkpoint_write(step: int) -> None:
  """SIGKILL when orbax is about to complete checkpoint `step` by renaming its temporary folder."""
  finalize = atomicity.AtomicRenameTemporaryPath.finalize

  async def patched(self, *args, **kwargs):
    if self.get_final().name == str(step):
      os.kill(os.getpid(), signal.SIGKILL)
    return await finalize(self, *args, **kwargs)

  atomicity.AtomicRenameTemporaryPath.finalize = patched


if __name__ == '__main__':
  fault = sys.argv.pop(1)
  if fault != 'none':
    kind, step = fault.split('@')
    if kind == 'checkpoint':
      kill_in_checkpoint_write(int(step))
    elif kind == 'diskfull':
      at, free_kib = step.split(':')
      workdir = next(a.split('=', 1)[1] for a in sys.argv if a.startswith('--workdir='))
      at_loop_batch(int(at), lambda: fill_disk(workdir, int(free_kib)))
    else:
      at_loop_batch(int(step), lambda: os.kill(os.getpid(), SIGNALS[kind]))
  app.run(main.main)
