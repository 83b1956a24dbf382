"""Helpers of the config files (configs/<method>.py): parse `get_config(arg)`, load a config by name.

`arg` is the part after ':' in `--config=configs/<method>.py:<arg>`, a comma-separated list of
`key=value`.
"""

import importlib.util
import pathlib
import re
import sys
from collections.abc import Collection
from collections.abc import Sequence

from absl import app

CONFIG_DIR = pathlib.Path(__file__).resolve().parents[1] / 'configs'


def parse_arg(arg: str | None, known: Collection[str]) -> dict[str, str]:
  """'a=1,b=x' -> {'a': '1', 'b': 'x'}; keys must be in `known`."""
  pairs = [p for p in (arg or '').split(',') if p]
  bad = [p for p in pairs if '=' not in p]
  if bad:
    raise ValueError(f'config arg entries must be key=value, got {bad}')
  args = dict(p.split('=', 1) for p in pairs)
  unknown = set(args) - set(known)
  if unknown:
    raise ValueError(f'unknown config arg(s) {sorted(unknown)}; known: {sorted(known)}')
  return args


def choice(args: dict[str, str], key: str, choices: Collection[str], default: str) -> str:
  """args[key] (or `default`), which must be one of `choices`."""
  value = args.get(key, default)
  if value not in choices:
    raise ValueError(f'{key}={value!r}; choose one of {list(choices)}')
  return value


def flag(args: dict[str, str], key: str) -> bool:
  """args[key] read as a boolean (1/true/yes); False when absent."""
  return args.get(key, 'False').lower() in ('1', 'true', 'yes')


def load_config(name: str, arg: str | None = None):
  """`get_config(arg)` of `configs/<name>.py` (for notebooks, tests, benchmarks and other configs)."""
  path = CONFIG_DIR / f'{name}.py'
  if not path.exists():
    raise FileNotFoundError(f'no config {path}')
  spec = importlib.util.spec_from_file_location(f'polyseg_config_{name}', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


def parse_flags(argv: Sequence[str]) -> list[str]:
  """absl's flag parsing (`app.run(main, flags_parser=parse_flags)`) where an override of a field
  the config does not have (`--config.train.num_stepz=3`) fails like any other bad flag: one
  'FATAL Flags parsing error' naming the flag on stderr, exit status 1, instead of the KeyError /
  AttributeError traceback ml_collections raises while parsing."""
  try:
    return app.parse_flags_with_usage(argv)
  except (AttributeError, KeyError) as e:
    reason = e
    while isinstance(reason, BaseException) and reason.args:  # AttributeError(KeyError(text))
      reason = reason.args[0]
    key, _, hint = str(reason).partition('\n')  # "'num_stepz'", 'Did you mean ...?'
    flag = next((a for a in argv[1:] if key.strip('\'"') in _override_path(a)), None)
    if flag is None:  # not an override's field: a bug, keep its traceback
      raise
    sys.stderr.write(
      f'FATAL Flags parsing error: flag {flag}: the config has no field {key}'
      f'{"; " + hint if hint else ""}\nPass --helpshort or --helpfull to see help on flags.\n'
    )
    sys.exit(1)


def _override_path(arg: str) -> list[str]:
  """'--config.train.num_steps=3' -> ['train', 'num_steps']; [] for other arguments."""
  match = re.match(r'--?\w+\.([^=]+)', arg)
  return match.group(1).split('.') if match else []
