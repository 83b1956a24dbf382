"""Network pieces every method shares: masked layers, the ASFormer-style encoder and decoder of
DiffAct, the MiniLM text encoder."""
