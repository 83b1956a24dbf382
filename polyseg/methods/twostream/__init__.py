"""2s-DAS: RGB and flow DiffAct streams with weighted late fusion (`task.py`, `late_fusion.py`)."""
