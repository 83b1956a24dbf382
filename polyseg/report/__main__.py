r"""The HTML report of a workdir, from the command line:

python -m polyseg.report --workdir=DIR [--output=DIR/report.html] [--max_videos=12]
"""

import sys

from absl import app
from absl import flags

from polyseg.data import formats
from polyseg.report import html

FLAGS = flags.FLAGS


def main(argv):
  """python -m polyseg.report --workdir=DIR: writes DIR/report.html (see polyseg.report.html)."""
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  try:
    path = html.write_report(FLAGS.workdir, FLAGS.output, FLAGS.max_videos)
  except (formats.DataError, OSError) as error:  # the user's input, not a bug
    sys.exit(f'polyseg.report: {type(error).__name__}: {error}')
  print(f'Wrote {path}')


if __name__ == '__main__':
  flags.DEFINE_string('workdir', None, 'A run folder, or a folder of runs, to report on.')
  flags.DEFINE_string('output', None, 'The HTML file to write; default <workdir>/report.html.')
  flags.DEFINE_integer(
    'max_videos', 12, 'Timelines of at most this many videos per output folder.', lower_bound=0
  )
  flags.mark_flag_as_required('workdir')
  app.run(main)
