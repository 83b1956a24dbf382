"""The docs resolve inside the repo: every Markdown link (file and anchor) of the README and docs/,
and every repo path that a docstring, comment or page names (`docs/methods/hal.md`,
`polyseg/nn/layers.py`, ...)."""

import re

from conftest import REPO

PAGES = [REPO / 'README.md', *sorted((REPO / 'docs').rglob('*.md'))]
SOURCES = [
  p
  for folder in ('polyseg', 'configs', 'benchmarks', 'tests')
  for p in (REPO / folder).rglob('*.py')
  if p.name != 'test_docs.py'  # its own examples name paths that do not exist
]
# A repo path as text: a top folder, then folders and a file name with an extension.
REPO_PATH = re.compile(
  r'(?<![\w./-])((?:docs|polyseg|configs|benchmarks|tests)/[\w/.-]*\w\.(?:md|py))\b'
)


def slug(heading: str) -> str:
  """GitHub's anchor of a Markdown heading."""
  return re.sub(r'[^\w\- ]', '', heading.strip().lower()).replace(' ', '-')


def anchors(text: str) -> set[str]:
  found, fence = set(), False
  for line in text.split('\n'):
    if line.startswith('```'):
      fence = not fence
    elif not fence and re.match(r'#{1,6} ', line):
      found.add(slug(line.lstrip('#')))
  return found


def broken_links(page) -> list[str]:
  broken = []
  for link in re.findall(r'\]\(([^)\s]+)\)', page.read_text()):
    if re.match(r'[a-z]+://', link):
      continue
    path, _, anchor = link.partition('#')
    target = (page.parent / path).resolve() if path else page
    if not target.exists():
      broken.append(f'{link}: no such file')
    elif anchor and target.suffix == '.md' and anchor not in anchors(target.read_text()):
      broken.append(f'{link}: no such heading')
  return broken


def test_markdown_links_resolve():
  broken = {str(p.relative_to(REPO)): broken_links(p) for p in PAGES}
  assert not {k: v for k, v in broken.items() if v}


def test_named_repo_paths_exist():
  missing = sorted(
    f'{source.relative_to(REPO)}: {path}'
    for source in [*SOURCES, *PAGES]
    for path in REPO_PATH.findall(source.read_text())
    if '<' not in path and not (REPO / path).exists()
  )
  assert not missing, '\n'.join(missing)


def test_the_checks_catch_a_dead_link_and_a_dead_path(tmp_path):
  page = tmp_path / 'page.md'
  page.write_text('# Title\n\n[ok](#title) [gone](#nowhere) [file](missing.md)\n')
  assert broken_links(page) == ['#nowhere: no such heading', 'missing.md: no such file']
  assert REPO_PATH.findall('see docs/methods/x.md and polyseg/nn/layers.py.') == [
    'docs/methods/x.md',
    'polyseg/nn/layers.py',
  ]
