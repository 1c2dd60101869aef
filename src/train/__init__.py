"""Training: stacked fold x seed models (trainer), their inputs (inputs) and optimiser (optim)."""
