"""HAL: weak supervision from ordered transcripts (`task.py`, `pyramid.py`, `align.py`)."""
