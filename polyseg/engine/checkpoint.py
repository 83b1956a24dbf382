"""Orbax checkpoints of the train state: keep the last N, keep the best by an eval metric, resume."""

import os
from typing import Any

import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as policies


class Checkpointer:
  """Saves `{'step', 'params', 'opt_state'}` pytrees under `<workdir>/checkpoints/<step>`.

  Keeps the `keep` latest checkpoints plus the best one by `best_metric` (higher is better).
  Every write is atomic (orbax writes to a temporary folder and renames it when complete), so a
  run killed mid-write resumes from the last complete checkpoint. `remove_partial_writes` deletes
  the temporary folders such a kill left behind: only for the process that trains (an evaluation
  running beside it would delete the write in progress).
  """

  def __init__(
    self,
    workdir: str,
    keep: int = 3,
    best_metric: str = 'F1@50',
    remove_partial_writes: bool = False,
  ):
    self.directory = os.path.join(os.path.abspath(workdir), 'checkpoints')
    self.best_metric = best_metric
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
      cleanup_tmp_directories=remove_partial_writes,
      create=True,
    )
    self.manager = ocp.CheckpointManager(self.directory, options=options)

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def best_step(self) -> int | None:
    return self.manager.best_step()

  def save(self, step: int, state: Any, metrics: dict[str, float] | None = None) -> None:
    """Writes `state` as checkpoint `step` (overwrites nothing: a step already saved is skipped)."""
    if step in self.manager.all_steps():
      return
    self.manager.save(step, args=ocp.args.StandardSave(state), metrics=metrics, force=True)
    self.manager.wait_until_finished()

  def restore(self, target: Any, step: int | None = None) -> Any:
    """Restores checkpoint `step` (default: the latest) into the structure of `target`."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f'no checkpoint in {self.directory}')
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
    return self.manager.restore(step, args=ocp.args.StandardRestore(abstract))

  def close(self) -> None:
    self.manager.close()
