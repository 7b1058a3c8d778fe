"""The whole Prefect flow on a tiny config, on a real (embedded) Prefect API."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from fastai.learner import load_learner
from fastai.torch_core import even_mults
from PIL import Image

from lrgate.core.config import load_config
from lrgate.core.errors import CurveError
from lrgate.core.race_plan import candidate_lrs
from lrgate.flows.pipeline import pipeline
from lrgate.training.data import DataError
from tests.conftest import make_image_folder, tiny_config


@pytest.fixture(scope="module")
def finished(prefect_api, tmp_path_factory):
    folder = tmp_path_factory.mktemp("pipeline")
    return pipeline(str(tiny_config(folder, race=True)), str(folder / "run"))


def gate_json(summary, gate: str) -> dict:
    return json.loads((summary_dir(summary) / f"gate-{gate}" / "suggestion.json").read_text())


def summary_dir(summary):
    return Path(summary["run_dir"])


def test_train_frozen_fits_with_exactly_gate_1s_lr(finished):
    suggested = gate_json(finished, "frozen")
    assert suggested["state"] == "frozen" and suggested["slice"] is None
    frozen = finished["metrics"]["train-frozen"]
    assert frozen["fit_lr"] == suggested["lr"] == finished["decisions"]["frozen"]["value"]
    # What the optimizer really saw: the head group peaks at that lr (one-cycle's peak, sampled per batch).
    assert suggested["lr"] * 0.9 <= frozen["peak_lrs"][-1] <= suggested["lr"] * (1 + 1e-9)


def test_fine_tune_fits_with_exactly_gate_2s_slice(finished):
    suggested = gate_json(finished, "unfrozen")
    assert suggested["state"] == "unfrozen"
    tuned = finished["metrics"]["fine-tune"]
    assert tuned["fit_lr"] == suggested["slice"] == finished["decisions"]["unfrozen"]["value"]
    expected = even_mults(*suggested["slice"], 4)  # fastai spreads a slice over the 4 groups geometrically
    assert np.allclose(tuned["peak_lrs"], expected, rtol=0.1)
    assert all(p <= e * (1 + 1e-9) for p, e in zip(tuned["peak_lrs"], expected, strict=True))


def test_every_output_exists_and_reads_back(finished):
    run = summary_dir(finished)
    for gate in ("frozen", "unfrozen"):
        with Image.open(run / f"gate-{gate}" / "review.png") as im:
            assert im.format == "PNG"
        # the summary names each gate's files; no GPU limit here, so no slot was taken
        recorded = finished["range_tests"][gate]
        assert Path(recorded["plot"]) == run / f"gate-{gate}" / "review.png" and recorded["gpu_slot"] is None
        frame = pd.read_csv(run / f"gate-{gate}" / "review.csv")
        assert {"loss", "loss_grad", "lrs", "min_grad"} <= set(frame.columns)
        curve = pd.read_csv(run / f"gate-{gate}" / "curve.csv")
        assert list(curve.columns) == ["lr", "loss"] and len(curve) >= 7  # 2 * noise + 1
    for name in ("0-initial", "1-frozen", "2-unfrozen", "3-fine-tuned"):
        assert (run / "checkpoints" / f"{name}.pth").stat().st_size > 1e6
    metrics = json.loads((run / "metrics-fine-tune.json").read_text())
    assert {"train_loss", "valid_loss", "accuracy"} <= set(metrics["epochs"][0])
    report = (run / "report.md").read_text()
    assert "## Gate 1: frozen" in report and "## Gate 2: unfrozen" in report
    assert "](gate-frozen/review.png)" in report and "model.pkl" in report
    # whether the model became the config's latest, and why, in the report as in summary.json
    assert finished["promotion"]["promoted"] and f"- latest model: this run ({finished['promotion']['why']})" in report
    assert set(finished["stage_states"].values()) == {"Completed"}


@pytest.mark.filterwarnings("ignore:load_learner` uses Python's insecure pickle")
def test_exported_model_loads_and_predicts(finished):
    learn = load_learner(finished["model"])
    image = next((summary_dir(finished).parent / "runs" / ".data" / "digits-12" / "3").glob("*.png"))
    label, _, probs = learn.predict(image)
    assert label in learn.dls.vocab and probs.shape == (10,)


def test_each_gate_publishes_a_review_artifact_and_the_run_a_metrics_table(finished):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    name = load_config(summary_dir(finished) / "config.yaml").name  # the run's own copy of its config
    with get_client(sync_client=True) as client:
        keys = [f"{name}-gate-frozen", f"{name}-gate-unfrozen", f"{name}-metrics"]
        artifacts = {
            a.key: a for a in client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=keys)))
        }
    assert set(artifacts) == set(keys)
    gate = artifacts[f"{name}-gate-unfrozen"]
    assert gate.type == "markdown" and "data:image/png;base64," in gate.data and "gradient" in gate.data
    assert "**Race** (ranked by accuracy;" in gate.data and "- rung 0: slice hi " in gate.data
    assert artifacts[f"{name}-metrics"].type == "table"


def test_both_gates_race_by_default_and_show_the_race_to_the_reviewer(finished):
    run = summary_dir(finished)
    report = (run / "report.md").read_text()
    for gate in ("frozen", "unfrozen"):
        s = gate_json(finished, gate)
        race = s["race"]
        top = s["lr"] if gate == "frozen" else s["slice"][1]
        assert race["winner"] == top and top in race["candidates"]
        assert "bowl" in race["rule_picks"] and race["score"] == "accuracy"
        assert len(race["trials"]) >= len(race["candidates"]) >= 4
        # after unfreeze the candidates lie around the lr the head trained with (race_plan.HEAD_SPAN_DECADES)
        head = finished["decisions"]["frozen"]["value"] if gate == "unfrozen" else None
        assert race["head_lr"] == head
        if head is not None:  # a decade either side of it, the lattice's five points
            assert np.allclose(race["candidates"], candidate_lrs([head], (1e-7, 10.0), sliced=True, head_lr=head))
        # a stage of 6 batches on this tiny data: the budget is two range tests (2 x 24 iterations)
        cost = race["cost"]
        assert cost["iterations"] <= cost["budget_iterations"] == 48 and cost["trainings"] > 1 and cost["seconds"] > 0
    assert report.count("**Race** (ranked by accuracy;") == 1  # after unfreeze; before it short rungs rank by loss
    assert report.count("**Race** (ranked by accuracy, a rung shorter than the stage by valid_loss;") == 1
    assert "(winner)** |" in report  # a table in the report
    assert f"candidates around the frozen stage's lr, {gate_json(finished, 'frozen')['lr']:.2e}." in report


def test_race_off_reads_the_curve_alone(prefect_api, tmp_path):
    summary = pipeline(str(tiny_config(tmp_path)), str(tmp_path / "run"))  # race: off
    for gate in ("frozen", "unfrozen"):
        assert "race" not in gate_json(summary, gate)


def test_pinned_values_are_trained_with_and_the_suggestion_kept_beside(prefect_api, tmp_path):
    pins = "gates:\n  frozen: {lr: 0.003}\n  unfrozen: {slice: [1.0e-5, 1.0e-3]}\n"
    summary = pipeline(str(tiny_config(tmp_path, pins, race=True)), str(tmp_path / "run"))
    assert summary["metrics"]["train-frozen"]["fit_lr"] == 0.003
    assert summary["metrics"]["fine-tune"]["fit_lr"] == [1e-5, 1e-3]
    assert summary["decisions"]["frozen"]["source"] == "pinned lr"
    # The gates still ran their range tests and kept what they read beside the pinned values (gate 2 of this
    # tiny model may find nothing to read: then the run goes on with its pin, the reason recorded).
    assert gate_json(summary, "frozen")["lr"] > 0
    assert (summary_dir(summary) / "gate-unfrozen" / "curve.csv").exists()
    assert summary["decisions"]["unfrozen"]["source"] == "pinned slice"
    assert "race" not in gate_json(summary, "frozen")  # a pinned gate trains with its pin: no race


UNREADABLE = "suggest: {noise: 20}\n"  # the extrema filter needs 41 points; the tiny range test records 24


def test_an_unattended_gate_whose_curve_cannot_be_read_fails_with_the_reason_and_keeps_the_graph(prefect_api, tmp_path):
    with pytest.raises(CurveError, match=r"gate frozen: noise=20 needs at least 41 finite points, the curve has 24"):
        pipeline(str(tiny_config(tmp_path, UNREADABLE)), str(tmp_path / "run"))
    gate = tmp_path / "run" / "gate-frozen"
    with Image.open(gate / "review.png") as im:  # the recorded curve, for a person to look at
        assert im.format == "PNG"
    assert len(pd.read_csv(gate / "curve.csv")) == 24
    assert not (tmp_path / "run" / "checkpoints" / "1-frozen.pth").exists()


def test_corrupt_images_fail_before_any_training(prefect_api, tmp_path):
    root = make_image_folder(tmp_path / "img")
    (root / "circle" / "bad.png").write_text("not an image")
    config = tiny_config(tmp_path).read_text().replace("{source: demo, per_class: 12}", "{source: folder, path: img}")
    (tmp_path / "tiny.yaml").write_text(config)
    with pytest.raises(DataError, match="bad.png"):
        pipeline(str(tmp_path / "tiny.yaml"), str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()
