"""The pure core: reading a range test, the rules, curve files, review plots, the race's plan, configs and run
folders. It imports neither fastai nor torch nor Prefect (tests/test_layout.py checks), so ``lrgate suggest`` starts
in a second and a notebook can read curves without a model.
"""
