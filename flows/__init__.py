"""Prefect flows of lrgate (installed as ``lrgate.flows``): they compose the tasks and the gates.

The pipeline flow (lr-suggest -> train-frozen -> unfreeze -> lr-suggest -> fine-tune) lands here.
"""
