"""Inputs: model files and specs (trust policy, presets, output contract), datasets (class contract,
preprocessing, IDX and torchvision sources) and image helpers."""
