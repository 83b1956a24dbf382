"""DiffAct: the ASFormer-style encoder and the label-denoising decoder (`task.py`)."""
