"""The engine: train, evaluate and predict for any task, with checkpoints, logging and outputs.

Reads top to bottom: workdir and logging, data and task, optimizer and state, the jitted update step,
checkpoint restore, the loop (progress bar, log, eval, checkpoint), and the outputs written at the end
(predictions, metrics table, timelines, curves). Nothing here is method-specific: the caller hands
the engine a method (a module with the interface of `polyseg.engine.task`), which supplies the data,
the model, the loss and the per-video prediction.
"""

import contextlib
import dataclasses
import functools
import json
import os
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import tqdm
from jax.sharding import PartitionSpec

from polyseg.data import dataset as dataset_lib
from polyseg.data import formats
from polyseg.data import pipeline
from polyseg.engine import checkpoint as checkpoint_lib
from polyseg.engine import config as engine_config
from polyseg.engine import fused_random
from polyseg.engine import metric_writer
from polyseg.engine import parallel
from polyseg.engine import workdir as workdir_lib
from polyseg.nn import layers
from polyseg.report import plots
from polyseg.report import segment_files
from polyseg.report import tables


class NonFiniteError(FloatingPointError):
  """A loss term or the gradient became NaN/Inf; names the step and the term."""


class Interrupted(Exception):
  """Training stopped on SIGTERM or SIGINT (Ctrl-C) after saving a checkpoint of `step`."""

  def __init__(self, signum: int, step: int, directory: str):
    self.signum, self.step = signum, step
    super().__init__(
      f'{signal.Signals(signum).name} received: stopped after step {step} and saved its checkpoint '
      f'in {directory}; run the same command again to resume'
    )


NONFINITE_MODES = ('stop', 'skip')
TORCH_INIT_STREAM = 1  # fold_in tag of the rng that model.init='torch' redraws the parameters from


def stop_training(signum: int, step: int, state: Any, ckpt) -> None:
  """Saves `state` as checkpoint `step` (unless the loop just did), closes the checkpointer and
  raises Interrupted."""
  ckpt.save(step, state)
  ckpt.close()
  raise Interrupted(signum, step, ckpt.directory)


class StopSignals:
  """Context manager: the first SIGTERM or SIGINT (Ctrl-C) asks the training loop to stop after
  the step it is running (it then saves a checkpoint and raises Interrupted) instead of killing
  the process mid-step. Handling it restores the previous handlers, so a second signal acts as it
  would without us (Ctrl-C twice: KeyboardInterrupt at once). Outside the main thread, where Python
  cannot install handlers, it does nothing."""

  def __enter__(self):
    self.received, self.previous = 0, {}
    if threading.current_thread() is threading.main_thread():
      for signum in (signal.SIGTERM, signal.SIGINT):
        self.previous[signum] = signal.signal(signum, self._handle)
    return self

  def _handle(self, signum, frame) -> None:
    del frame
    self.received = signum
    self._restore()

  def _restore(self) -> None:
    for signum, handler in self.previous.items():
      signal.signal(signum, handler)
    self.previous = {}

  def __exit__(self, *exc) -> None:
    self._restore()

  def requested(self, at_log_step: bool) -> int:
    """The signal to stop on (0 = none). With several processes, a signal that reached any of them
    stops all of them at the same step: they agree at log steps only (one host collective)."""
    if jax.process_count() == 1:
      return self.received
    return parallel.max_over_processes(self.received) if at_log_step else 0


def write_json(path: str, obj: Any) -> None:
  formats.write_atomic(path, json.dumps(obj, indent=2, sort_keys=True).encode())


def read_data_info(path: str) -> dataset_lib.DataInfo:
  with open(path) as f:
    return dataset_lib.DataInfo(**json.load(f))


def is_main_process() -> bool:
  return jax.process_index() == 0


# ---------------------------------------------------------------------------------------------
# Optimizer and state.


def make_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """Adam with torch-style L2 weight decay (added to the gradient), optional accumulation."""
  tx = optax.chain(
    optax.add_decayed_weights(config.optim.weight_decay), optax.adam(config.optim.learning_rate)
  )
  if config.optim.grad_accum_steps > 1:
    tx = optax.MultiSteps(tx, every_k_schedule=config.optim.grad_accum_steps)
  return tx


@functools.lru_cache(maxsize=1)
def _state_init(task, tx):
  """rng -> the train state (`init_state`'s function, not jitted). The same function for the same
  task and optimizer, so that `abstract_state` and `init_state` share one trace of it (jax caches
  traces by function): a run traces its model's initialisation once."""
  init_kind = task.parameter_init
  if init_kind not in layers.INITS:
    raise ValueError(f'model.init={init_kind!r}; choose one of {layers.INITS}')

  def init(rng):
    params = task.init(rng, task.example_batch())
    if init_kind == 'torch':
      params = layers.torch_default_init(params, jax.random.fold_in(rng, TORCH_INIT_STREAM))
    state = {'step': jnp.zeros((), jnp.int32), 'params': params, 'opt_state': tx.init(params)}
    task_state = task.initial_task_state()
    return state if task_state is None else {**state, 'task_state': task_state}

  return init


def init_state(task, tx, rng: jax.Array, shardings: Any = None) -> dict[str, Any]:
  """The train state: {'step': int32 [], 'params', 'opt_state'} and, for a task that has one,
  'task_state' (every leaf a jax.Array), created directly with `shardings` (a matching pytree of
  shardings, e.g. `parallel.state_shardings`)."""
  # Every parameter's draw fused into a few threefry calls: the same values, a program that compiles
  # in about half the time (polyseg/engine/fused_random.py).
  init = fused_random.fuse_random_draws(_state_init(task, tx))
  return jax.jit(init, out_shardings=shardings)(rng)


def abstract_state(task, tx) -> dict[str, Any]:
  """The shapes and dtypes of `init_state`'s state (jax.ShapeDtypeStruct leaves): traced, not
  compiled."""
  return jax.eval_shape(_state_init(task, tx), jax.random.PRNGKey(0))


def state_shardings(task, tx, mesh, config) -> Any:
  """The shardings of the train state on `mesh` (`parallel.state_shardings` of its shapes)."""
  return parallel.state_shardings(abstract_state(task, tx), mesh, config)


def global_norm(tree: Any) -> jax.Array:
  """The L2 norm of all of `tree`'s leaves together, taken over their concatenation: a handful of
  XLA kernels, where a norm per leaf then summed (`optax.tree.norm`) makes about two per leaf
  (DiffAct's GTEA-size train step, both norms: 4,189 -> 3,160 fusions, a tenth less compile time,
  the same step time). For arrays whole on each device: concatenating FSDP-split leaves would
  gather them first."""
  leaves = [jnp.ravel(x).astype(jnp.float32) for x in jax.tree.leaves(tree)]
  return jnp.sqrt(jnp.sum(jnp.square(jnp.concatenate(leaves))))


def norm_for(state_shardings: Any) -> Callable[[Any], jax.Array]:
  """The train step's norm of params and gradients: `global_norm`, or `optax.tree.norm` (a norm per
  leaf, each where its shards are) when `state_shardings` splits any leaf over devices."""
  specs = [s.spec for s in jax.tree.leaves(state_shardings) if hasattr(s, 'spec')]
  return optax.tree.norm if any(spec != PartitionSpec() for spec in specs) else global_norm


def make_train_step(task, tx, base_rng: jax.Array, mesh=None, state_shardings: Any = None):
  """One jitted program: rng = fold_in(base, step), loss + grads, update; state is donated.

  With a `mesh`, the batch is split over its devices and the state kept in `state_shardings`
  (replicated params by default); XLA inserts the gradient all-reduce. The result equals the
  single-device step on the same global batch.

  A non-finite loss or gradient leaves params and optimizer state unchanged and is reported in the
  returned metrics (`finite` = 0), so the host can stop at the next log interval naming the step.
  The update is a `lax.cond` on finiteness, and `param_norm` is the norm after the step: nothing
  reads the donated params or optimizer state besides the update, so XLA updates them in place
  (a `where(finite, new, old)` per leaf, or a norm of the old params, made it copy every leaf
  first: a tenth of a Breakfast-size step's instruction time, `docs/benchmarks.md`).
  """

  norm = norm_for(state_shardings)

  def apply_update(grads, params, opt_state):
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  def step_fn(state, batch):
    rng = jax.random.fold_in(base_rng, state['step'])
    task_state = {'task_state': state['task_state']} if 'task_state' in state else {}
    loss_fn = lambda params: task.loss(params, batch, rng, **task_state)
    (loss, terms), grads = jax.value_and_grad(loss_fn, has_aux=True)(state['params'])
    grad_norm = norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    params, opt_state = jax.lax.cond(
      finite,
      apply_update,
      lambda _, params, opt_state: (params, opt_state),
      grads,
      state['params'],
      state['opt_state'],
    )
    new_state = {**state, 'step': state['step'] + 1, 'params': params, 'opt_state': opt_state}
    metrics = {
      'loss': loss,
      **terms,
      'grad_norm': grad_norm,
      'param_norm': norm(params),
      'finite': finite,
    }
    return new_state, metrics

  if mesh is None:
    return jax.jit(step_fn, donate_argnums=(0,))
  state_shardings = state_shardings or parallel.replicated(mesh)
  return jax.jit(
    step_fn,
    in_shardings=(state_shardings, parallel.batch_sharding(mesh)),
    out_shardings=(state_shardings, parallel.replicated(mesh)),
    donate_argnums=(0,),
  )


def compile_on_every_process(train_step, state, batch):
  """With several processes: compiles `train_step` for `batch`'s shapes (every batch has them: one
  padded length) and waits for every process to finish compiling before the first step runs its
  collectives. Returns the compiled step (the jitted one with a single process)."""
  if jax.process_count() == 1:
    return train_step
  compiled = train_step.lower(state, batch).compile()
  parallel.barrier('polyseg-train-step-compiled')
  return compiled


def nonfinite_message(step: int, metrics: dict[str, np.ndarray]) -> str:
  """'step 7: encoder_ce, loss (encoder_ce=nan, loss=nan)': the step and its non-finite terms."""
  bad = [k for k, v in metrics.items() if k != 'finite' and not np.isfinite(v)]
  return f'step {step}: {", ".join(bad)} ({", ".join(f"{k}={metrics[k]}" for k in bad)})'


def check_finite(first_step: int, history: list[dict[str, np.ndarray]]) -> None:
  """Raises NonFiniteError for the first step in `history` whose loss or gradient is not finite."""
  for offset, metrics in enumerate(history):
    if not metrics['finite']:
      raise NonFiniteError(
        f'non-finite values at {nonfinite_message(first_step + offset, metrics)}; params were not '
        'updated at that step and the latest checkpoint is the last good one (or set '
        "train.nonfinite='skip' to skip such steps and go on)"
      )


def mean_metrics(history: list[dict[str, np.ndarray]]) -> dict[str, float]:
  """The means of the finite steps of `history` (every step's when none is finite)."""
  finite = [m for m in history if m['finite']] or history
  return {f'train/{k}': float(np.mean([m[k] for m in finite])) for k in finite[0] if k != 'finite'}


class StepLog:
  """The train steps' metrics since the last log step, kept on device (no host sync per step).
  `write(step)` fetches them, handles non-finite steps, writes their means (`train/*`, with
  `train/steps_per_sec`) and shows the loss on the progress bar.

  A non-finite step (its update was not applied, see `make_train_step`) raises NonFiniteError
  naming it with `nonfinite='stop'`; with 'skip' it is reported, counted (`train/nonfinite_steps`
  per log interval, `self.nonfinite_steps` in all) and training goes on, until more than
  `max_nonfinite_steps` were skipped since this process started.
  """

  def __init__(
    self,
    writer: metric_writer.MetricWriter,
    bar: tqdm.tqdm,
    step: int,
    nonfinite: str = 'stop',
    max_nonfinite_steps: int = 0,
  ):
    if nonfinite not in NONFINITE_MODES:
      raise ValueError(f'train.nonfinite={nonfinite!r}; choose one of {list(NONFINITE_MODES)}')
    self.writer, self.bar = writer, bar
    self.nonfinite, self.max_nonfinite_steps = nonfinite, max_nonfinite_steps
    self.nonfinite_steps = 0
    self.history, self.first_step, self.t0 = [], step + 1, time.time()

  def add(self, metrics: dict[str, jax.Array]) -> None:
    self.history.append(metrics)

  def write(self, step: int) -> None:
    if not self.history:
      return
    history = jax.device_get(self.history)
    summary = mean_metrics(history)
    if self.nonfinite == 'stop':
      check_finite(self.first_step, history)
    else:
      self.skip_nonfinite(history, summary)
    summary['train/steps_per_sec'] = len(history) / (time.time() - self.t0)
    self.writer.write(step, summary)
    self.bar.set_postfix(loss=f'{summary["train/loss"]:.4f}')
    self.history, self.first_step, self.t0 = [], step + 1, time.time()

  def skip_nonfinite(self, history: list[dict[str, np.ndarray]], summary: dict) -> None:
    bad = [(self.first_step + i, m) for i, m in enumerate(history) if not m['finite']]
    summary['train/nonfinite_steps'] = len(bad)
    self.nonfinite_steps += len(bad)
    for step, metrics in bad:
      tqdm.tqdm.write(f'skipped the update of non-finite {nonfinite_message(step, metrics)}')
    if self.nonfinite_steps > self.max_nonfinite_steps:
      raise NonFiniteError(
        f'{self.nonfinite_steps} non-finite steps skipped since this run started, more than '
        f'train.max_nonfinite_steps={self.max_nonfinite_steps}; the last at '
        f'{nonfinite_message(*bad[-1])}'
      )

  def restart_clock(self) -> None:
    """After an evaluation: steps/s measures training only."""
    self.t0 = time.time()


def train_loop(
  state: dict[str, Any],
  train_step: Callable,
  batch_of: Callable[[int], Any],
  settings: ml_collections.ConfigDict,
  *,
  ckpt: checkpoint_lib.Checkpointer,
  writer: metric_writer.MetricWriter,
  evaluate: Callable[[int, dict[str, Any]], tuple[dict[str, Any], Any]],
  desc: str,
  early_stop: Callable[[int], bool] = lambda step: False,
  show: bool = True,
) -> tuple[dict[str, Any], int | None]:
  """The training loop of every trainer (the engine, Polyphony's stages 1 and 2).

  Runs `state, metrics = train_step(state, batch_of(step))` from `state['step']` to
  `settings.num_steps` under a progress bar (`desc`; hidden where `show` is False). Every
  `settings.log_every` steps the metrics are logged (`StepLog`: means, steps/s and the non-finite
  guard of `settings.nonfinite` / `max_nonfinite_steps` when set, before any checkpoint). Every
  `settings.eval_every` steps and at the last, `evaluate(step, state) -> (state, ranking)` and a
  checkpoint ranked by `ranking` (the checkpointer's best metric: a dict; None: unranked); a plain
  checkpoint every `settings.checkpoint_every` steps. SIGTERM / Ctrl-C stops after the running step
  with a checkpoint (`Interrupted`); `early_stop(step)` ends the loop sooner (stage 2's patience).
  Returns (state, the step of the last evaluation, None if none ran).

  At most one step waits behind the running one: after dispatching a step the host waits for the
  step before it, so the progress bar counts steps the device has run (to within one), a stop
  request is served after the running step, and queued batches do not pile up in device memory.
  (Unbounded, the bar showed the dispatch rate, then stood still at each log step while the queue
  drained.)"""
  num_steps, log_every = settings.num_steps, settings.log_every
  eval_every, checkpoint_every = settings.eval_every, settings.checkpoint_every
  nonfinite = settings.get('nonfinite', 'stop')
  max_nonfinite_steps = settings.get('max_nonfinite_steps', 0)
  step = int(state['step'])
  evaluated = None
  with (
    tqdm.tqdm(total=num_steps, initial=step, desc=desc, unit='step', disable=not show) as bar,
    StopSignals() as signals,
  ):
    log = StepLog(writer, bar, step, nonfinite, max_nonfinite_steps)
    previous = None  # the metrics of the step dispatched before this one
    while step < num_steps and not early_stop(step):
      state, metrics = train_step(state, batch_of(step))
      jax.block_until_ready(previous)
      previous = metrics
      log.add(metrics)
      step += 1
      bar.update(1)
      log_due = step % log_every == 0 or step == num_steps
      eval_due = step % eval_every == 0 or step == num_steps
      checkpoint_due = step % checkpoint_every == 0
      stop = signals.requested(log_due) if step < num_steps else 0
      if log_due or eval_due or stop or checkpoint_due:
        log.write(step)  # before any checkpoint: a non-finite step stops the run first
      if eval_due:
        state, ranking = evaluate(step, state)
        evaluated = step
        ckpt.save(step, state, metrics=ranking)
        log.restart_clock()
      elif stop or checkpoint_due:
        ckpt.save(step, state)
      if stop:
        stop_training(stop, step, state, ckpt)
  return state, evaluated


# ---------------------------------------------------------------------------------------------
# Evaluation and outputs.


def run_predictions(
  task, params, videos: list[formats.Video], rng: jax.Array, desc: str
) -> dict[str, dict[str, np.ndarray]]:
  """{video name: {row name: per-frame class ids [T]}} for every video, with a progress bar."""
  predictions = {}
  for index, video in enumerate(
    tqdm.tqdm(videos, desc=desc, unit='video', leave=False, disable=not is_main_process())
  ):
    predictions[video.name] = task.predict(params, video, jax.random.fold_in(rng, index))
  return predictions


def score(
  task, videos: list[formats.Video], predictions: dict[str, dict[str, np.ndarray]]
) -> dict[str, dict[str, float]]:
  """{row name: {metric: value}} over the videos that carry labels, with the task's summary rows."""
  per_row = {}
  for video in videos:
    for row, pred in predictions[video.name].items():
      per_row.setdefault(row, task.new_metrics(row)).add(pred, task.row_labels(video, row))
  return task.summarize({row: m.result() for row, m in per_row.items()})


def timeline_rows(task, video, predictions: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """The bars of a video's timeline: its ground truth, then each row's prediction; when the rows
  have ground truths of their own (`task.row_labels`, Polyphony's hands), each row's ground truth
  just above its prediction. Class ids [T] or multi-hot [T, C] (`task.timeline`)."""
  if video.labels is None:
    return {row: task.timeline(pred) for row, pred in predictions.items()}
  truths = {row: task.row_labels(video, row) for row in predictions}
  if all(truth is video.labels for truth in truths.values()):
    return {'ground truth': video.labels, **{r: task.timeline(p) for r, p in predictions.items()}}
  rows = {}
  for row, pred in predictions.items():
    rows[f'{row} ground truth'] = truths[row]
    rows[row] = task.timeline(pred)
  return rows


def write_outputs(
  task,
  outdir: str,
  videos: list,
  predictions: dict[str, dict[str, np.ndarray]],
  num_timelines: int,
) -> None:
  """Per-video predictions in the ground-truth text format, every video's timeline rows as
  segments.json (for `python -m polyseg.report`) and PNG timelines for a few videos."""
  pred_dir = os.path.join(outdir, 'predictions')
  os.makedirs(pred_dir, exist_ok=True)
  for video in videos:
    for row, pred in predictions[video.name].items():
      path = os.path.join(pred_dir, task.prediction_file(video.name, row))
      os.makedirs(os.path.dirname(path), exist_ok=True)
      formats.write_labels(path, task.label_lines(pred))
  timelines = [
    (video.name, timeline_rows(task, video, predictions[video.name])) for video in videos
  ]
  segment_files.write_segments(
    os.path.join(outdir, 'segments.json'), timelines, task.classes, background=task.background
  )
  plot_dir = os.path.join(outdir, 'timelines')
  os.makedirs(plot_dir, exist_ok=True)
  for name, rows in timelines[:num_timelines]:
    plots.plot_timelines(
      os.path.join(plot_dir, f'{name}.png'),
      [(name, rows)],
      task.classes,
      background=task.background,
    )


EVAL_SPLITS = {'test': 'eval', 'val': 'eval_val'}
"""Split -> its output folder under the workdir (and, for val, its metric prefix in the logs)."""


def evaluate_and_write(
  task,
  params,
  videos,
  config,
  outdir: str,
  step: int,
  writer: metric_writer.MetricWriter | None = None,
  split: str = 'test',
  selection: dict | None = None,
) -> dict[str, dict[str, float]]:
  """Predicts `videos`, scores them, writes predictions/timelines/results (with `selection`, how
  the checkpoint was chosen, in results.json); returns the results."""
  rng = jax.random.PRNGKey(config.eval.seed)
  predictions = run_predictions(task, params, videos, rng, desc=f'{split} @ {step}')
  results = score(task, videos, predictions)
  if is_main_process():
    write_outputs(task, outdir, videos, predictions, config.eval.num_timelines)
    record = {'step': step, 'split': split, 'results': results}
    write_json(
      os.path.join(outdir, 'results.json'), record | ({'selection': selection} if selection else {})
    )
    table = tables.format_table(results)
    formats.write_atomic(os.path.join(outdir, 'results.txt'), f'step {step}\n{table}\n'.encode())
    print(f'\n{split} results at step {step} ({len(videos)} videos):\n{table}\n', flush=True)
    if writer is not None:
      main_row = results[task.main_row]
      writer.write(step, {f'{EVAL_SPLITS[split]}/{k}': v for k, v in main_row.items()})
  return results


def evaluate_val(task, params, data, config, outdir: str, step: int, writer=None):
  """Evaluates the val split; a task that `calibrates` first fits its choices on it (e.g. 2s-DAS's
  fusion weights), which then hold for what is predicted next (the test split, at the end).
  Returns (results, what the task chose: {} for most)."""
  chosen = {}
  if task.calibrates:
    chosen = task.calibrate(params, data.val, jax.random.PRNGKey(config.eval.seed), outdir)
  results = evaluate_and_write(task, params, data.val, config, outdir, step, writer, 'val')
  return results, chosen


def evaluate_splits(task, params, data, config, outdir_of, step: int, selection: dict):
  """Evaluates val, then reads and evaluates test (`data.read_test()`), into `outdir_of(split)`;
  {split: results}. `selection` (with what the task chose on val) goes into test's results.json."""
  val, chosen = evaluate_val(task, params, data, config, outdir_of('val'), step)
  selection = selection | ({'chosen': chosen} if chosen else {})
  test = evaluate_and_write(
    task, params, data.read_test(), config, outdir_of('test'), step, None, 'test', selection
  )
  return {'val': val, 'test': test}


TEST_CHECKPOINTS = ('best', 'latest')


def selection_message(task, data, config) -> str:
  """The start-up line that says what the val split chooses and when test is read."""
  which = config.eval.test_checkpoint
  chosen = (
    f'the best checkpoint by val {task.main_row} {config.train.best_metric}'
    if which == 'best'
    else 'nothing (eval.test_checkpoint=latest)'
  )
  return (
    f'model selection on the val split ({len(data.val)} videos): {chosen}; the test split is '
    'read and scored once, after training'
  )


def select_checkpoint(ckpt, config, last_step: int, row: str) -> tuple[int, dict]:
  """(step, selection record) of the checkpoint the test split is scored with:
  `eval.test_checkpoint`='best' (by val `train.best_metric` of the task's main `row`) or 'latest'
  (`last_step`)."""
  which = config.eval.test_checkpoint
  if which not in TEST_CHECKPOINTS:
    raise ValueError(f'eval.test_checkpoint={which!r}; choose one of {list(TEST_CHECKPOINTS)}')
  best = ckpt.best_step() if which == 'best' else None
  step = last_step if best is None else best
  return step, {
    'split': 'val',
    'checkpoint': which if best is not None or which == 'latest' else 'latest (no val metrics)',
    'row': row,
    'metric': config.train.best_metric,
    'step': step,
    'last_step': last_step,
  }


# ---------------------------------------------------------------------------------------------
# Entry points.


def make_train_loader(task, videos: list, config, mesh) -> pipeline.TrainLoader:
  """This process's loader of its `videos` (`process_share`): batch_size / P rows, and with several
  processes one padded length for all (agreed once, here)."""
  local_batch_size = parallel.check_batch_size(config.train.batch_size, mesh)
  pad_to = None
  if jax.process_count() > 1:
    longest = pipeline.longest_crop(videos, config.data.sample_rate, config.data.max_train_len)
    pad_to = pipeline.bucket_length(parallel.max_over_processes(longest))
  return task.train_loader(videos, batch_size=local_batch_size, pad_to=pad_to)


def process_share(data: dataset_lib.Data) -> list:
  """This process's training videos: every P-th from its index (P processes)."""
  index, count = jax.process_index(), jax.process_count()
  if data.train_shard == (index, count):
    share = data.train
  elif data.train_shard == (0, 1):
    share = data.train[index::count]
  else:
    raise ValueError(f'data holds training share {data.train_shard}, not {(index, count)}')
  if not share:
    raise formats.DataError(f'no training videos for process {index} of {count}')
  return share


def prepare_stages(method, config: ml_collections.ConfigDict, workdir: str, mode: str):
  """The config the engine runs, after a multi-stage task's earlier stages (its optional
  module-level `prepare(config, workdir, mode)`: e.g. Polyphony's stages 1 and 2 write the features
  the segmenter reads). None when the engine has nothing left to do (only earlier stages asked)."""
  if not hasattr(method, 'prepare'):
    return config
  return method.prepare(config, workdir_lib.prepare_workdir(workdir), mode)


def setup(method, config: ml_collections.ConfigDict, workdir: str, with_data: bool = True):
  """Workdir check, data (validated before anything runs; `data.train` is this process's share),
  task. Returns (workdir, data, task)."""
  workdir = workdir_lib.prepare_workdir(workdir)
  info_path = os.path.join(workdir, 'data.json')
  if with_data:
    data = method.load_data(config)
    data = dataclasses.replace(
      data,
      train=process_share(data),
      train_shard=(jax.process_index(), jax.process_count()),
    )
    if os.path.exists(info_path):
      saved = read_data_info(info_path)
      if saved != data.info:
        raise formats.DataError(
          f'{workdir} holds a run on different data ({info_path}: {saved}); '
          f'this config reads {data.info}. Use another --workdir.'
        )
    elif is_main_process():
      write_json(info_path, dataclasses.asdict(data.info))
    info = data.info
  else:
    if not os.path.exists(info_path):
      raise FileNotFoundError(f'{info_path} not found: --mode=predict needs a trained workdir')
    data, info = None, read_data_info(info_path)
  task = method.Task(config, info, train_videos=data.train if data else None)
  return workdir, data, task


def train_and_evaluate(method, config: ml_collections.ConfigDict, workdir: str) -> dict[str, dict]:
  """Trains `config.task` (resuming from the newest intact checkpoint in `workdir`), evaluating the
  val split every `eval_every` steps (the best checkpoint is kept by it); then reads the test split
  once and scores the checkpoint `eval.test_checkpoint` chose on val ('best', or 'latest').
  Returns those test results ({} when the config asks only for a multi-stage task's earlier
  stages). The workdir has this one writer (`workdir.Lock`: WorkdirBusy before anything is read or
  written when another process trains in it); a disk that fills ends the run with one DiskFull error."""
  engine_config.check(config)
  with (
    workdir_lib.Lock(workdir, 'train', enabled=is_main_process()),
    workdir_lib.disk_full_reported(workdir),
  ):
    return _train_and_evaluate(method, config, workdir)


def _train_and_evaluate(method, config: ml_collections.ConfigDict, workdir: str) -> dict[str, dict]:
  config = prepare_stages(method, config, workdir, 'train')
  if config is None:
    return {}
  workdir, data, task = setup(method, config, workdir)
  if is_main_process():
    write_json(os.path.join(workdir, 'config.json'), json.loads(config.to_json_best_effort()))
  outdir_of = lambda split: os.path.join(workdir, EVAL_SPLITS[split])

  mesh = parallel.make_mesh(config)
  loader = make_train_loader(task, data.train, config, mesh)
  tx = make_optimizer(config)
  base_rng = jax.random.PRNGKey(config.seed)
  init_rng, step_rng = jax.random.split(base_rng)
  shardings = state_shardings(task, tx, mesh, config)
  state = init_state(task, tx, init_rng, shardings)
  if is_main_process():
    print(
      f'{config.task}: {layers.count_params(state["params"]):,} parameters, '
      f'{len(data.train)} training videos; {mesh.size} device(s) in {jax.process_count()} '
      f'process(es), mesh {dict(mesh.shape)}\n{selection_message(task, data, config)}',
      flush=True,
    )
    lengths = loader.padded_lengths()
    print(
      f'{len(lengths)} length bucket(s) in training ({", ".join(map(str, lengths))} frames after '
      'the sample rate): the train step compiles once for each',
      flush=True,
    )

  workdir_lib.check_free_space(workdir, state, config.train.keep_checkpoints)
  ckpt = checkpoint_lib.Checkpointer(
    workdir,
    keep=config.train.keep_checkpoints,
    best_metric=config.train.best_metric,
    owner=True,
  )
  state, resumed = ckpt.resume(state)
  if resumed:
    print(f'Resumed from {ckpt.directory} at step {int(state["step"])}', flush=True)
  step = int(state['step'])
  writer = metric_writer.MetricWriter(
    workdir, enabled=is_main_process(), resume_step=step if resumed else None
  )
  train_step = compile_on_every_process(
    make_train_step(task, tx, step_rng, mesh, shardings),
    state,
    parallel.global_batch(loader.batch(step), mesh),
  )

  update_task_state = jax.jit(
    task.update_task_state, out_shardings=shardings.get('task_state'), donate_argnums=(0,)
  )

  def evaluate(step, state):
    val, _ = evaluate_val(task, state['params'], data, config, outdir_of('val'), step, writer)
    if 'task_state' in state:
      state['task_state'] = update_task_state(state['task_state'], val)
    return state, val[task.main_row]

  batch_of = loader.batch
  if config.data.get('prefetch', 0):  # absent in runs saved before it
    batch_of = pipeline.Prefetcher(batch_of, config.train.num_steps, ahead=config.data.prefetch)
  state, val_step = train_loop(  # val_step: the step whose val evaluation this process did last
    state,
    train_step,
    lambda step: parallel.global_batch(batch_of(step), mesh),
    config.train,
    ckpt=ckpt,
    writer=writer,
    evaluate=evaluate,
    desc='train',
    show=is_main_process(),
  )
  results = final_test(task, state, ckpt, data, config, outdir_of, val_step)
  ckpt.close()
  if is_main_process():
    plots.plot_curves(os.path.join(workdir, 'metrics.jsonl'), os.path.join(workdir, 'curves.png'))
  return results


def final_test(task, state, ckpt, data, config, outdir_of, val_step: int | None):
  """After training: the checkpoint `select_checkpoint` picks on val and its val outputs (evaluated
  again unless this process just did, `val_step`, and the task has nothing to calibrate), then the
  test split, read and scored here for the first time. Returns the test results."""
  step, selection = select_checkpoint(ckpt, config, int(state['step']), task.main_row)
  params = state['params']
  if step != int(state['step']):
    params = ckpt.restore(state, step)['params']
  print(
    f'Testing the checkpoint of step {step} ({selection["checkpoint"]} on val '
    f'{selection["row"]} {selection["metric"]})',
    flush=True,
  )
  if step == val_step and not task.calibrates:
    return evaluate_and_write(
      task, params, data.read_test(), config, outdir_of('test'), step, None, 'test', selection
    )
  return evaluate_splits(task, params, data, config, outdir_of, step, selection)['test']


def require_checkpoints(workdir: str) -> None:
  """FileNotFoundError, before anything is read or written, when `workdir` has no checkpoints
  (--mode=eval / predict of a run that was never trained)."""
  directory = os.path.join(os.path.abspath(os.path.expanduser(workdir)), 'checkpoints')
  if not os.path.isdir(directory):
    raise FileNotFoundError(f'no checkpoint in {directory}: train first (--mode=train)')


def restore_params(task, config, workdir: str, which: str | int = 'latest'):
  """Restores the params of the latest or best checkpoint, or of step `which` (an int); returns
  (step, params)."""
  require_checkpoints(workdir)
  tx = make_optimizer(config)
  abstract = abstract_state(task, tx)
  shardings = parallel.state_shardings(abstract, parallel.make_mesh(config), config)
  abstract = jax.tree.map(
    lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings
  )
  ckpt = checkpoint_lib.Checkpointer(
    workdir, keep=config.train.keep_checkpoints, best_metric=config.train.best_metric
  )
  step = {'best': ckpt.best_step, 'latest': ckpt.latest_step}.get(which, lambda: which)()
  if step is None:
    raise FileNotFoundError(f'no checkpoint in {ckpt.directory}: train first (--mode=train)')
  state = ckpt.restore(abstract, step)
  ckpt.close()
  return step, state['params']


def evaluate(method, config: ml_collections.ConfigDict, workdir: str, which: str | int = 'latest'):
  """Evaluates the latest (or best on val, or step `which`) checkpoint of `workdir` on the val and
  test splits; outputs go to `eval_<which>/` (and `eval_<which>_val/`), which this process holds
  (`workdir.Lock`). Returns the test results."""
  engine_config.check(config)
  require_checkpoints(workdir)
  outdir = os.path.join(os.path.abspath(os.path.expanduser(workdir)), f'eval_{which}')
  with workdir_lib.Lock(outdir, 'eval', enabled=is_main_process()):
    return _evaluate(method, config, workdir, which)


def _evaluate(method, config: ml_collections.ConfigDict, workdir: str, which: str | int):
  config = prepare_stages(method, config, workdir, 'eval')
  workdir, data, task = setup(method, config, workdir)
  step, params = restore_params(task, config, workdir, which)
  outdir_of = lambda split: os.path.join(
    workdir, EVAL_SPLITS[split].replace('eval', f'eval_{which}')
  )
  selection = {
    'split': 'val',
    'checkpoint': which,
    'row': task.main_row,
    'metric': config.train.best_metric,
    'step': step,
  }
  return evaluate_splits(task, params, data, config, outdir_of, step, selection)['test']


def read_config(workdir: str) -> ml_collections.ConfigDict:
  """The config the run in `workdir` was trained with (its config.json; JSON lists become tuples,
  as the config files write them)."""
  path = os.path.join(os.path.abspath(os.path.expanduser(workdir)), 'config.json')
  if not os.path.exists(path):
    raise FileNotFoundError(f'{path} not found: is {workdir} the workdir of a training run?')

  def as_tuples(value):
    if isinstance(value, list):
      return tuple(map(as_tuples, value))
    if isinstance(value, dict):
      return {k: as_tuples(v) for k, v in value.items()}
    return value

  with open(path) as f:
    return ml_collections.ConfigDict(as_tuples(json.load(f)))


def predict_videos(
  method,
  config: ml_collections.ConfigDict,
  workdir: str,
  which: str = 'latest',
  outdir: str | None = None,
) -> dict[str, dict[str, np.ndarray]]:
  """{video: {row: prediction}} of the latest (or best) checkpoint on the unlabelled inputs of
  `config.predict.features` (the task says what they are: a folder of `<vid>.npy`, or a dataset
  folder without labels), with a progress bar. With `outdir`, the predictions (in the
  ground-truth format) and timelines are also written there, its one writer (`workdir.Lock`,
  taken before anything is read)."""
  engine_config.check(config)
  lock = workdir_lib.Lock(outdir, 'predict', enabled=is_main_process()) if outdir else None
  with lock or contextlib.nullcontext():
    if not config.predict.features:
      raise ValueError('prediction needs inputs: --config.predict.features=DIR')
    config = prepare_stages(method, config, workdir, 'predict')
    require_checkpoints(workdir)
    workdir, _, task = setup(method, config, workdir, with_data=False)
    videos = method.load_unlabelled(config, task.info)
    if not videos:
      raise formats.DataError(f'{config.predict.features}: no videos to predict')
    step, params = restore_params(task, config, workdir, which)
    if task.calibrates:  # its choices for this checkpoint come from the val split
      val = method.load_data(config).val
      task.calibrate(params, val, jax.random.PRNGKey(config.eval.seed), outdir)
    predictions = run_predictions(
      task, params, videos, jax.random.PRNGKey(config.eval.seed), desc='predict'
    )
    if outdir is not None and is_main_process():
      write_outputs(task, outdir, videos, predictions, config.eval.num_timelines)
      print(f'Wrote predictions of {len(videos)} videos (checkpoint step {step}) to {outdir}')
    return predictions


def predict(
  method, config: ml_collections.ConfigDict, workdir: str, which: str | int = 'latest'
) -> str:
  """--mode=predict: `predict_videos` written to `config.predict.output` (default
  <workdir>/predict); returns that folder."""
  outdir = config.predict.output or os.path.join(os.path.abspath(workdir), 'predict')
  predict_videos(method, config, workdir, which, outdir)
  return outdir
