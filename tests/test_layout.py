"""The package's layering: every import of a polyseg module points down the layers (or within its
own folder, without a cycle), so the data layer never reaches the engine and the engine never looks a
method up."""

import ast
import os
import pathlib
import subprocess
import sys

import pytest
from conftest import REPO

PACKAGE = REPO / 'polyseg'
# Bottom to top; a module may import its own layer's modules and those of the layers below.
LAYERS = (
  ('polyseg.configlib',),
  ('polyseg.core',),
  ('polyseg.nn',),
  ('polyseg.data',),
  ('polyseg.report',),
  ('polyseg.engine',),
  ('polyseg.methods',),
  ('polyseg.main',),  # the command line
)
ENTRY = 'polyseg'  # the package's own functions (polyseg.train_and_evaluate, ...): the top, too


def module_name(path: pathlib.Path, root: pathlib.Path = REPO) -> str:
  parts = path.relative_to(root).with_suffix('').parts
  return '.'.join(parts[:-1] if parts[-1] == '__init__' else parts)


def layer_of(module: str) -> int:
  if module == ENTRY:
    return len(LAYERS)
  for level, prefixes in reversed(list(enumerate(LAYERS))):
    for prefix in prefixes:
      if module == prefix or module.startswith(prefix + '.'):
        return level
  raise AssertionError(f'{module}: in no layer')


def polyseg_imports(path: pathlib.Path, root: pathlib.Path = REPO) -> set[str]:
  """The polyseg modules `path` imports anywhere (functions included): `from polyseg.x import y`
  counts as polyseg.x.y when that is a module, else polyseg.x."""
  found = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      found.update(a.name for a in node.names if a.name.split('.')[0] == 'polyseg')
    elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith('polyseg'):
      for alias in node.names:
        full = f'{node.module}.{alias.name}'
        where = root / full.replace('.', '/')
        is_module = where.with_suffix('.py').exists() or (where / '__init__.py').exists()
        found.add(full if is_module else node.module)
  return found


def import_graph() -> dict[str, set[str]]:
  return {module_name(p): polyseg_imports(p) for p in sorted(PACKAGE.rglob('*.py'))}


def test_imports_point_down_the_layers():
  upward = [
    f'{module} ({layer_of(module)}) imports {target} ({layer_of(target)})'
    for module, targets in import_graph().items()
    for target in targets
    if layer_of(target) > layer_of(module)
  ]
  assert not upward, '\n'.join(upward)


def test_no_import_cycles():
  graph = import_graph()
  state = {}

  def visit(module, path):
    if state.get(module) == 'done':
      return
    if state.get(module) == 'open':
      pytest.fail('import cycle: ' + ' -> '.join(path[path.index(module) :] + [module]))
    state[module] = 'open'
    for target in sorted(graph.get(module, ())):
      visit(target, path + [module])
    state[module] = 'done'

  for module in graph:
    visit(module, [])


def test_the_checker_sees_an_upward_import(tmp_path):
  """The layering test can fail: a data module importing the engine inside a function, and
  importing a name from an engine module, are both flagged."""
  bad = tmp_path / 'polyseg' / 'data' / 'bad.py'
  bad.parent.mkdir(parents=True)
  bad.write_text(
    'def f():\n  from polyseg.engine import train\n  from polyseg.report.plots import x\n'
  )
  (tmp_path / 'polyseg' / 'engine').mkdir()
  (tmp_path / 'polyseg' / 'engine' / 'train.py').write_text('')
  found = polyseg_imports(bad, tmp_path)
  assert found == {'polyseg.engine.train', 'polyseg.report.plots'}
  module = module_name(bad, tmp_path)
  assert module == 'polyseg.data.bad'
  assert all(layer_of(target) > layer_of(module) for target in found)


def test_the_methods_load_without_tensorflow_datasets_or_torch(tmp_path):
  """TFDS is imported only when a TFDS dataset is converted or read (it takes a second); PyTorch
  never, even where it is installed (here a stand-in `torch` package first on the path: importable
  whether or not the real one is installed)."""
  (tmp_path / 'torch').mkdir()
  (tmp_path / 'torch' / '__init__.py').write_text('')
  code = (
    'import sys; import polyseg.main; from polyseg import methods; '
    '[methods.get(name) for name in methods.REGISTRY]; '
    "print(sorted({'tensorflow_datasets', 'torch'} & set(sys.modules)))"
  )
  path = os.pathsep.join([str(tmp_path), str(REPO), os.environ.get('PYTHONPATH', '')])
  done = subprocess.run(
    [sys.executable, '-c', code],
    capture_output=True,
    text=True,
    timeout=300,
    check=False,
    env=dict(os.environ, PYTHONPATH=path),
  )
  assert done.returncode == 0, done.stderr[-2000:]
  assert done.stdout.strip() == '[]'


def test_importing_polyseg_leaves_xla_flags_alone():
  """Importing the library (every method too) leaves XLA_FLAGS as the user set it (here: unset);
  the entry point adds its one XLA flag when it starts."""
  code = (
    'import os, polyseg, polyseg.main; from polyseg import methods; '
    '[methods.get(name) for name in methods.REGISTRY]; print(os.environ.get("XLA_FLAGS"))'
  )
  env = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}
  done = subprocess.run(
    [sys.executable, '-c', code], capture_output=True, text=True, timeout=300, check=False, env=env
  )
  assert done.returncode == 0, done.stderr[-2000:]
  assert done.stdout.strip() == 'None'
