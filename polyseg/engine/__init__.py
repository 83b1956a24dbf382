"""The engine: the task interface, the training loop, checkpoints, devices and the metric log. It
is handed a method (`polyseg.methods.get`) and runs it; nothing here is method-specific."""
