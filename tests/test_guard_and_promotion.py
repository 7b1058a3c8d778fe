"""The guard of unattended gates and the promotion of the latest model (pure rules, then one real run)."""

from __future__ import annotations

import json

import pytest

from lrgate.core.config import GuardConfig, load_config
from lrgate.operations.guard import guard_problem, last_value, remember
from lrgate.operations.promotion import promote, should_promote
from tests.conftest import suggestion_record, tiny_config

CLEAN = {"lr": 1e-3, "slice": None, "warnings": []}
GUARD = GuardConfig(lr_range=(1e-5, 1e-1), max_decades_from_last=1.0)


@pytest.mark.parametrize(
    ("suggestion", "last", "problem"),
    [
        (CLEAN, None, None),
        (CLEAN, 3e-3, None),
        ({**CLEAN, "warnings": ["no valid gradient minimum: ..."]}, None, "raised 1 warning(s)"),
        ({**CLEAN, "lr": 1e-6}, None, "outside the allowed range"),
        ({**CLEAN, "slice": [1e-6, 1e-3]}, None, "outside the allowed range"),
        (CLEAN, 1e-1, "2.0 decades from the last value"),
        ({**CLEAN, "slice": [1e-4, 1e-3]}, [1e-6, 2e-3], None),  # a slice compares its upper end
    ],
)
def test_guard_rules(suggestion, last, problem):
    got = guard_problem(suggestion_record(**suggestion), GUARD, last)
    assert got is None if problem is None else problem in got


def test_history_remembers_the_last_value_per_gate(tmp_path):
    cfg = load_config(tiny_config(tmp_path))
    assert last_value(cfg, "frozen") is None
    remember(cfg, "frozen", 1e-3, "r1", "t1")
    remember(cfg, "frozen", 2e-3, "r2", "t2")
    remember(cfg, "unfrozen", [1e-5, 1e-4], "r2", "t2")
    assert last_value(cfg, "frozen") == 2e-3 and last_value(cfg, "unfrozen") == [1e-5, 1e-4]


def _remember_many(config: str, tag: str, n: int, start) -> None:
    cfg = load_config(config)
    start.wait()  # all at once, as runs of a fleet that finish together
    for i in range(n):
        remember(cfg, "frozen", 1e-3, f"{tag}-{i}", "t")


def test_runs_of_one_config_finishing_together_keep_every_history_entry(tmp_path):
    import json
    import multiprocessing

    from lrgate.operations.guard import history_path

    config = tiny_config(tmp_path)
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Barrier(3)
    procs = [ctx.Process(target=_remember_many, args=(str(config), tag, 100, start)) for tag in ("a", "b", "c")]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(60)
    assert [proc.exitcode for proc in procs] == [0, 0, 0]
    entries = json.loads(history_path(load_config(config)).read_text())["frozen"]
    assert len(entries) == 300 and len({e["run_id"] for e in entries}) == 300


def test_promotion_rule():
    assert should_promote(0.90, None, "accuracy", 0.01)
    assert should_promote(0.895, 0.90, "accuracy", 0.01) and not should_promote(0.88, 0.90, "accuracy", 0.01)
    assert should_promote(0.31, 0.30, "valid_loss", 0.02) and not should_promote(0.40, 0.30, "valid_loss", 0.02)


def test_latest_moves_only_to_a_run_that_is_no_worse(tmp_path):
    cfg = load_config(tiny_config(tmp_path))
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    assert promote(cfg, tmp_path / "a", "a/model.pkl", 0.90, "a")["promoted"]
    link = cfg.output_dir / f"{cfg.name}-latest"
    assert link.resolve() == (tmp_path / "a").resolve()
    kept = promote(cfg, tmp_path / "b", "b/model.pkl", 0.80, "b")
    assert not kept["promoted"] and "stays latest" in kept["why"]
    assert link.resolve() == (tmp_path / "a").resolve()
    assert json.loads((cfg.output_dir / f"{cfg.name}.latest.json").read_text())["run_id"] == "a"


def test_the_guard_fails_an_unattended_run_whose_suggestion_is_out_of_range(prefect_api, tmp_path):
    from lrgate.flows.pipeline import pipeline
    from lrgate.operations.gate_policy import GuardStop

    guard = "guard: {lr_range: [1.0e-12, 1.0e-11], on_fail: fail}\n"
    with pytest.raises(GuardStop, match="outside the allowed range"):
        pipeline(str(tiny_config(tmp_path, guard)), str(tmp_path / "run"))
    assert not (tmp_path / "run" / "metrics-train-frozen.json").exists()  # it stopped at gate 1


def test_the_guard_stops_an_unattended_gate_whose_curve_cannot_be_read(prefect_api, tmp_path):
    from lrgate.flows.pipeline import pipeline
    from lrgate.operations.gate_policy import GuardStop

    guard = "guard: {lr_range: [1.0e-7, 1.0], on_fail: fail}\nsuggest: {noise: 20}\n"  # 41 points needed, 24 recorded
    with pytest.raises(GuardStop, match="gate frozen: the guard stopped the suggestion: the range test cannot be read"):
        pipeline(str(tiny_config(tmp_path, guard)), str(tmp_path / "run"))
    assert (tmp_path / "run" / "gate-frozen" / "review.png").is_file()
    assert not (tmp_path / "run" / "metrics-train-frozen.json").exists()
