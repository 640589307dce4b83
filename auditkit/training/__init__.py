"""Training: the one fit loop (standard, PGD, fast FGSM, TRADES, rotations) and harden."""
