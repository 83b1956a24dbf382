"""Metric tables as aligned text: the rows of an evaluation, one column per metric."""

from collections.abc import Iterable
from collections.abc import Sequence

TABLE_COLUMNS = ('Acc', 'Jaccard', 'Edit', 'F1@10', 'F1@25', 'F1@50')


def table_columns(rows: Iterable[dict[str, float]]) -> tuple[str, ...]:
  """The TABLE_COLUMNS some row has, then every other metric in order of appearance (e.g. mAP; an
  alignment row's MoF, IoU, IoD)."""
  seen = dict.fromkeys(k for values in rows for k in values)
  return (*(k for k in TABLE_COLUMNS if k in seen), *(k for k in seen if k not in TABLE_COLUMNS))


def format_table(rows: dict[str, dict[str, float]], columns: Sequence[str] | None = None) -> str:
  """Aligned text table, one line per row name, values with 1 decimal, columns 2 spaces apart.

  columns: default `table_columns`, with '-' where a row has no value; given columns must be in
  every row.
  """
  if columns is None:
    columns = table_columns(rows.values())
  else:
    for name, values in rows.items():
      missing = [column for column in columns if column not in values]
      if missing:
        raise ValueError(f'table row {name!r} has no value for columns {missing}')
  cells = [['', *columns]] + [
    [name, *(f'{values[c]:.1f}' if c in values else '-' for c in columns)]
    for name, values in rows.items()
  ]
  return '\n'.join(align_columns(cells))


def align_columns(cells: Sequence[Sequence[str]]) -> list[str]:
  """Rows of cells as lines, columns 2 spaces apart: the first left-aligned, the others right."""
  widths = [max(len(row[i]) for row in cells) for i in range(len(cells[0]))]
  return [
    '  '.join(
      [row[0].ljust(widths[0]), *(c.rjust(w) for c, w in zip(row[1:], widths[1:]))]
    ).rstrip()
    for row in cells
  ]
