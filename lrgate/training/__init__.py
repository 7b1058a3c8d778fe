"""The fastai side: the range test on a Learner, its freeze state and snapshot, the race's trials, models, data,
the pipeline's stages as plain functions and their distributed launches. It never imports Prefect."""
