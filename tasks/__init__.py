"""Prefect tasks of lrgate (installed as ``lrgate.tasks``): thin wrappers over fastai operations.

Each task wraps a plain function that a notebook can call too (:mod:`lrgate.training.stage_functions`).
"""
