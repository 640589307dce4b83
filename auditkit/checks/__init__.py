"""Audit checks: each is a small class whose ``run(model, data, engine=...)`` returns a typed result."""
