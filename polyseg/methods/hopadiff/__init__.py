"""HopaDIFF: referring action segmentation, holistic and partial branches (`task.py`, `model.py`,
`xlstm.py`)."""
