r"""The command line (`python -m polyseg.main`) with one fault injected, for tests/engine/test_faults.py.

python tests/engine/fault_driver.py FAULT [polyseg.main flags...]

FAULT is 'none' or KIND@STEP, where the fault strikes when the training loop asks for the batch of
STEP (that is, after STEP steps are done; the batch the first step is compiled for does not count):
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


def strike_at_batch(signum: int, step: int) -> None:
  """Sends `signum` to this process when the loop asks for the batch of `step`."""
  batch, calls = pipeline.TrainLoader.batch, []

  def patched(self, at):
    calls.append(at)
    if at == step and len(calls) > 1:  # calls[0] is the batch the step is compiled for
      os.kill(os.getpid(), signum)
    return batch(self, at)

  pipeline.TrainLoader.batch = patched


def fill_disk_at_batch(step: int, free_kib: int, workdir: str) -> None:
  """Fills the file system of `workdir` when the loop asks for the batch of `step`, leaving
  `free_kib` KiB free."""
  batch, calls = pipeline.TrainLoader.batch, []

  def patched(self, at):
    calls.append(at)
    if at == step and len(calls) > 1:
      path = os.path.join(os.path.dirname(os.path.abspath(workdir)), 'filler')
      with open(path, 'wb', buffering=0) as f:
        try:
          while f.write(b'\1' * (1 << 20)):
            pass
        except OSError:  # ENOSPC: the file system is full
          pass
        f.truncate(max(0, os.fstat(f.fileno()).st_size - free_kib * 1024))
    return batch(self, at)

  pipeline.TrainLoader.batch = patched


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
      fill_disk_at_batch(int(at), int(free_kib), workdir)
    else:
      strike_at_batch(SIGNALS[kind], int(step))
  app.run(main.main)
