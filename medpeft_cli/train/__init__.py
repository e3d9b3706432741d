"""Training and evaluation: the Accelerate loop, metrics and saved weights."""
