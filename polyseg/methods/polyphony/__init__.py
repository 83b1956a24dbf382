"""Polyphony: both hands at once in three stages (`stage1.py`, `stage2.py`, `task.py`)."""
