"""Pure tensor operations on the device: attacks, perturbations, metrics."""
