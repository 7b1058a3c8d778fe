"""The efficacy benchmark: scoring from the saved data (seconds), the held-out verdict, and resumable recording."""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import lrgate
from benchmarks import efficacy_scoring as efficacy
from lrgate.core.race_plan import Trial, race_winner
from lrgate.core.suggest import DEFAULT_METHOD

DATA = Path(__file__).resolve().parents[1] / "benchmarks" / "efficacy"
DEFAULT = f"lrgate default ({DEFAULT_METHOD})"


@pytest.fixture(scope="module")
def bench() -> efficacy.Benchmark:
    return efficacy.load_benchmark(DATA)


@pytest.fixture(scope="module")
def held_out(bench) -> pd.DataFrame:
    return efficacy.score_table(bench, "held_out")


def test_held_out_split_never_overlaps_the_tuning_split(bench):
    tuning, held = set(bench.pairs("tuning")), set(bench.pairs("held_out"))
    assert tuning and held and not tuning & held
    assert tuning | held == set(bench.pairs("all"))
    whole = set(bench.split["held_out"]["tasks"])
    assert len(whole) >= 2 and not whole & {t for t, _ in tuning}


def test_the_fresh_split_is_new_tasks_only_and_fully_recorded(bench):
    fresh = bench.split["fresh"]
    assert len(fresh["tasks"]) >= 2 and not set(fresh["tasks"]) & set(bench.split["tasks"])
    assert len(bench.pairs("fresh")) == len(fresh["tasks"]) * len(fresh["seeds"])  # every curve is there
    for stage in efficacy.STAGES:
        counts = bench.grid[(bench.grid["stage"] == stage) & bench.grid["task"].isin(fresh["tasks"])]
        counts = counts.groupby(["task", "seed"]).size()
        assert len(counts) == len(bench.pairs("fresh")) and counts.min() == counts.max() >= 13, stage


def test_saved_data_covers_every_task_seed_and_grid_point(bench):
    assert len(bench.pairs("all")) == len(bench.split["tasks"]) * len(bench.split["seeds"])
    for stage in efficacy.STAGES:
        counts = bench.grid[bench.grid["stage"] == stage].groupby(["task", "seed"]).size()
        assert counts.min() == counts.max() >= 13, stage  # half-decade steps over at least six decades


def test_tasks_best_lrs_lie_at_least_two_decades_apart(bench):
    for stage in efficacy.STAGES:
        best = [efficacy.mean_accuracy(bench.grid, t, stage).idxmax() for t in bench.split["tasks"]]
        assert np.log10(max(best) / min(best)) >= 2, stage


@pytest.mark.parametrize("stage", efficacy.STAGES)
def test_default_beats_fastais_valley_on_held_out_mean_regret(held_out, stage):
    mean = efficacy.summary(held_out)
    assert mean.loc[DEFAULT, f"{stage} mean"] < mean.loc["fastai valley (its default)", f"{stage} mean"]


@pytest.mark.parametrize("stage", efficacy.STAGES)
def test_default_beats_the_fixed_lr_in_hindsight_on_held_out_mean_regret(held_out, stage):
    mean = efficacy.summary(held_out)
    assert mean.loc[DEFAULT, f"{stage} mean"] < mean.loc[efficacy.HINDSIGHT, f"{stage} mean"]


@pytest.mark.parametrize("stage", efficacy.STAGES)
def test_on_the_fresh_split_the_default_beats_valley_and_a_fixed_lr_carried_over(bench, stage):
    # Tasks recorded after the default was fixed (split-fresh.json); the carried-over lr is the first six tasks'
    # hindsight lr. (The fresh split's own hindsight lr beats the default after unfreeze there: README.)
    mean = efficacy.summary(efficacy.score_table(bench, "fresh", extra=efficacy.carried_over(bench)))
    default = mean.loc[DEFAULT, f"{stage} mean"]
    assert default < mean.loc["fastai valley (its default)", f"{stage} mean"]
    assert default < mean.loc[efficacy.CARRIED, f"{stage} mean"]


def test_table_lists_every_method_for_both_stages(held_out):
    text = efficacy.format_table(held_out, "held_out")
    for name in [*efficacy.methods(), efficacy.HINDSIGHT]:
        assert f"| {name} |" in text
    assert "frozen mean" in text and "unfrozen worst" in text


def test_each_split_is_scored_against_its_own_seeds_only(bench):
    # seed 2 of a tuning task is held out: its score must not rest on the tuning seeds' trainings, nor theirs on it
    task = bench.split["tuning"]["tasks"][0]
    held = efficacy.score_table(bench, "held_out")
    best = held[(held["task"] == task) & (held["stage"] == "frozen")]["best_lr"].iloc[0]
    assert best == efficacy.mean_accuracy(bench.grid, task, "frozen", [2]).idxmax()


def test_accuracy_is_interpolated_in_log_lr_and_held_outside_the_grid():
    curve = pd.Series([0.2, 0.8, 0.4], index=[1e-4, 1e-3, 1e-2])
    assert efficacy.accuracy_at(curve, 1e-3) == pytest.approx(0.8)
    assert efficacy.accuracy_at(curve, 10**-3.5) == pytest.approx(0.5)  # half way in log10(lr)
    assert efficacy.accuracy_at(curve, 1e-6) == pytest.approx(0.2)
    assert efficacy.accuracy_at(curve, 1.0) == pytest.approx(0.4)


@pytest.mark.parametrize("result", [ValueError("cannot read"), IndexError("short window"), float("nan"), 0.0])
def test_a_method_that_cannot_read_a_curve_scores_the_worst_grid_accuracy(bench, result):
    def broken(lrs, losses, stage):
        if isinstance(result, Exception):
            raise result
        return result

    table = efficacy.score_table(bench, "tuning", extra={"broken": broken})
    rows = table[table["method"] == "broken"]
    assert len(rows) == 2 * len(bench.pairs("tuning"))
    for row in rows.itertuples():
        acc = efficacy.mean_accuracy(bench.grid, row.task, row.stage, bench.split["tuning"]["seeds"])
        assert row.regret == pytest.approx(100 * (acc.max() - acc.min()))


def test_regret_plot_is_a_png(held_out, tmp_path):
    out = efficacy.regret_plot(held_out, tmp_path / "regret.png", title="held out")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _benchmark_script():
    path = DATA.parent / "efficacy.py"
    spec = importlib.util.spec_from_file_location("efficacy_benchmark", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


def test_recording_runs_in_chunks_and_resumes_without_redoing_results(trains, tmp_path):
    script = _benchmark_script()
    data = tmp_path / "data"
    data.mkdir()
    shutil.copy(DATA / efficacy.SPLIT_FILE, data)
    args = ["record", "--tasks", "digits-cnn-adam-bs64", "--seeds", "0", "--data", str(data)]
    args += ["--work", str(tmp_path / "work")]
    # A chunk whose time is up at once still trains once (chunks always progress), then stops.
    script.main([*args, "--max-minutes", "0"])
    curve = data / "curves" / efficacy.curve_name("digits-cnn-adam-bs64", 0, "frozen")
    first = pd.read_csv(data / efficacy.GRID_FILE)
    stamp = curve.stat().st_mtime_ns
    assert len(first) == 1
    script.main([*args, "--max-minutes", "0"])
    second = pd.read_csv(data / efficacy.GRID_FILE)
    assert len(second) == 2
    assert not second.duplicated(["task", "seed", "stage", "lr"]).any()
    assert curve.stat().st_mtime_ns == stamp  # the range test was not run again
    assert second.iloc[: len(first)].equals(first)  # earlier results kept as they were
    assert json.loads((data / efficacy.SPLIT_FILE).read_text())["tasks"]


# ---------------------------------------------------------------- the race, and the third split (split-third.json)

RACE = "race (budget 1)"
HELD_OUT_SPLITS = ("held_out", "fresh", "third")  # the first three, as 0.4.0 was first judged
EVERY_HELD_OUT_SPLIT = (
    *HELD_OUT_SPLITS,
    "fourth",
    "fifth",
    "sixth",
    "seventh",
    "eighth",
    "ninth",
    "tenth",
    "eleventh",
    "twelfth",
    "thirteenth",
)


@pytest.fixture(scope="module")
def raced(bench) -> dict[str, pd.DataFrame]:
    """Each raced held-out split's table, scored once for every test that reads it."""
    extra = efficacy.race_methods(DATA)
    return {split: efficacy.score_table(bench, split, extra=extra) for split in EVERY_HELD_OUT_SPLIT}


@pytest.mark.parametrize(
    "key",
    [
        "third",
        "fourth",
        "fifth",
        "sixth",
        "seventh",
        "eighth",
        "ninth",
        "tenth",
        "eleventh",
        "twelfth",
        "thirteenth",
        "fourteenth",
    ],
)
def test_a_later_split_is_new_tasks_and_new_seeds_only_and_fully_recorded(bench, key):
    split = bench.split[key]
    before = list(efficacy.LATER_SPLITS)[: list(efficacy.LATER_SPLITS).index(key)]  # fresh, third, ...
    earlier = set(bench.split["tasks"]) | {t for k in before for t in bench.split[k]["tasks"]}
    assert len(split["tasks"]) >= 3 and not set(split["tasks"]) & earlier
    assert not set(split["seeds"]) & (set(bench.split["seeds"]) | {s for k in before for s in bench.split[k]["seeds"]})
    assert len(bench.pairs(key)) == len(split["tasks"]) * len(split["seeds"])
    for stage in efficacy.STAGES:
        counts = bench.grid[(bench.grid["stage"] == stage) & bench.grid["task"].isin(split["tasks"])]
        counts = counts.groupby(["task", "seed"]).size()
        assert len(counts) == len(bench.pairs(key)) and counts.min() == counts.max() >= 13, stage


def test_the_race_is_recorded_for_every_held_out_curve_with_its_cost(bench):
    race = efficacy.race_methods(DATA)[RACE]
    for split in (*EVERY_HELD_OUT_SPLIT, "tuning"):
        assert race.covers(bench.pairs(split)), split
    assert all(cost > 0 for cost in race.costs.values())


def test_cost_plot_is_a_png_with_the_race_and_without_it(raced, held_out, tmp_path):
    grid_size = {"frozen": 13, "unfrozen": 15}
    for name, table in (("tenth", raced["tenth"]), ("curve rules only", held_out)):
        out = efficacy.cost_plot(table, tmp_path / f"{name}.png", grid_size, title=name)
        assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name


def test_every_race_of_the_tables_was_run_by_one_lrgate():
    # a change to the race re-races every curve (the older races move to races-VERSION.csv): no table mixes two
    races = pd.read_csv(DATA / efficacy.RACE_FILE)
    assert races["lrgate"].nunique() == 1 and not races.duplicated(["task", "seed", "stage", "budget"]).any()


def test_every_race_keeps_its_whole_record_and_its_winner_is_the_record_s():
    races = pd.read_csv(DATA / efficacy.RACE_FILE, dtype={"budget": str})
    lines = (DATA / efficacy.RACE_TRIALS_FILE).read_text().splitlines()
    records = {(r["task"], r["seed"], r["stage"], r["budget"]): r for r in map(json.loads, lines)}
    assert len(records) == len(lines) == len(races)  # one line per race, none left from an earlier run
    for row in races.itertuples():
        record = records[(row.task, row.seed, row.stage, row.budget)]
        assert record["lrgate"] == row.lrgate and float(f"{record['winner']:.6g}") == row.winner
        assert record["cost"]["iterations"] == row.iterations == sum(t["iterations"] for t in record["trials"])


def test_every_recorded_winner_is_this_lrgates_pick_from_its_trials():
    # a change to the pick that is not raced again (or picked again: `efficacy.py repick`) fails here
    script = _benchmark_script()
    for record in map(json.loads, (DATA / efficacy.RACE_TRIALS_FILE).read_text().splitlines()):
        if "error" in record:
            continue
        trials = [Trial.from_dict(t) for t in record["trials"]]
        n_valid, sliced = script.TASKS[record["task"]].n_valid, record["slice_ratio"] is not None
        winner, _ = race_winner(trials, record["score"], n_valid, record["cost"]["stage_iterations"], sliced)
        assert winner == record["winner"], (record["task"], record["seed"], record["stage"], record["budget"])


def test_repick_picks_an_older_versions_races_again_from_their_trials_and_leaves_the_rest(tmp_path):
    races = pd.read_csv(DATA / efficacy.RACE_FILE, dtype=str)
    lines = (DATA / efficacy.RACE_TRIALS_FILE).read_text().splitlines()
    records = {(r["task"], str(r["seed"]), r["stage"], r["budget"]): r for r in map(json.loads, lines)}
    # the third split's letters-cnn-adam-bs64-e1 seed 4 after unfreeze: 0.7.0's rule (no lean at the pick) picks
    # 0.32 from these trials, a lean of three standard errors picks 1; beside it a frozen race left as it is
    keys = [("letters-cnn-adam-bs64-e1", "4", "unfrozen", "1"), ("letters-cnn-adam-bs64-e1", "4", "frozen", "1")]
    rows = races.set_index(["task", "seed", "stage", "budget"]).loc[keys].reset_index()[races.columns]
    unpicked = [{f: v for f, v in records[k].items() if f != "trials_by"} for k in keys]  # as a race first wrote it
    old = [
        {**r, "lrgate": "0.7.0", "winner": 0.316228 if k[2] == "unfrozen" else r["winner"]}
        for k, r in zip(keys, unpicked, strict=True)
    ]
    old[1]["lrgate"] = rows.loc[1, "lrgate"] = "0.6.0"  # another version's race: left as it is
    rows.loc[0, ["lrgate", "winner"]] = ["0.7.0", "0.316228"]
    data = tmp_path / "data"
    data.mkdir()
    rows.to_csv(data / efficacy.RACE_FILE, index=False)
    (data / efficacy.RACE_TRIALS_FILE).write_text("".join(json.dumps(r) + "\n" for r in old))
    _benchmark_script().main(["repick", "--trials-by", "0.7.0", "--data", str(data)])
    after = pd.read_csv(data / efficacy.RACE_FILE)
    assert list(after["lrgate"]) == [lrgate.__version__, "0.6.0"]
    assert after["winner"].iloc[0] == pytest.approx(1.0) and after["winner"].iloc[1] == float(rows.loc[1, "winner"])
    new = [json.loads(line) for line in (data / efficacy.RACE_TRIALS_FILE).read_text().splitlines()]
    assert new[0]["trials_by"] == "0.7.0" and new[0]["winner"] == pytest.approx(1.0, rel=1e-5)
    assert new[0]["trials"] == old[0]["trials"] and new[1] == old[1]


def _curve_rules() -> list[str]:
    """Every method that reads the curve alone (and fine_tune's fixed defaults), as the tables name them."""
    return list(efficacy.methods())


@pytest.mark.parametrize("stage", efficacy.STAGES)
def test_on_the_third_split_the_race_beats_every_curve_rule(raced, stage):
    # split-third.json was committed before 0.4.0's race parameters were chosen; 0.6.0's change was chosen on it
    # and 0.7.0's too (README: tuned on since 0.6.0)
    mean = efficacy.summary(raced["third"])[f"{stage} mean"]
    assert mean[RACE] < min(mean[name] for name in _curve_rules())


def test_on_the_third_split_the_race_beats_the_fixed_lr_in_hindsight_on_both_stages(raced):
    # README, "How far from the target" (tuned on: 0.6.0's and 0.7.0's changes were chosen there)
    mean = efficacy.summary(raced["third"])
    for stage in efficacy.STAGES:
        assert mean.loc[RACE, f"{stage} mean"] < mean.loc[efficacy.HINDSIGHT, f"{stage} mean"], stage


@pytest.mark.parametrize(
    "split", ["fourth", "fifth", "sixth", "seventh", "eighth", "ninth", "tenth", "eleventh", "twelfth", "thirteenth"]
)
def test_on_the_fourth_to_thirteenth_splits_the_race_beats_every_curve_rule_and_the_hindsight_lr_on_both_stages(
    raced, split
):
    # split-fourth.json was committed before it was recorded, with 0.4.0's race; 0.9.0 to 0.12.0 were chosen with
    # it raced (README: tuned on; before 0.12.0 the hindsight lr beat the race there after unfreeze).
    # split-fifth.json was committed before 0.6.0's change was chosen and first judged it; 0.7.0's loss guard was
    # chosen on it (README: tuned on since 0.7.0; 0.6.0 lost 33.5 points on a photos curve before unfreeze here).
    # split-sixth.json first judged 0.7.0. split-seventh.json was committed before 0.8.0's change was chosen,
    # recorded before it was committed and raced after: the first split that judges 0.8.0; the eighth judged 0.9.0,
    # the ninth 0.10.0, the tenth 0.11.0 (each tuned on for the changes after it). split-eleventh.json was committed
    # and recorded before 0.12.0's change was chosen, and raced after it was committed: the first that judges 0.12.0;
    # split-twelfth.json likewise before 0.12.0, and raced after 0.13.0 was committed: the first that judges 0.13.0;
    # split-thirteenth.json was committed after 0.13.0 and raced with it (no later change found): the second; 0.14.0
    # was chosen on the tuning to twelfth splits, with the thirteenth's 0.13.0 races read
    mean = efficacy.summary(raced[split])
    for stage in efficacy.STAGES:
        assert mean.loc[RACE, f"{stage} mean"] < min(mean.loc[n, f"{stage} mean"] for n in _curve_rules()), stage
        assert mean.loc[RACE, f"{stage} mean"] < mean.loc[efficacy.HINDSIGHT, f"{stage} mean"], stage


@pytest.mark.parametrize(
    ("split", "met"), [("tenth", {"frozen"}), ("eleventh", set()), ("twelfth", set()), ("thirteenth", {"unfrozen"})]
)
def test_the_target_is_met_on_a_judging_split_only_where_the_readme_says(bench, raced, split, met):
    # README, "How far from the target": mean regret <= 1 and worst <= 3 per stage at the default budget (one
    # training of the stage, or two range tests where one training is shorter, as the issue sets it). The tenth, the
    # first judge of 0.11.0, meets it before unfreeze only; the eleventh, the first judge of 0.12.0, met it after
    # unfreeze with 0.12.0 (0.2 / 2.4) and misses it with 0.13.0 and 0.14.0, chosen with it raced (0.4 / 3.1, then
    # 0.8 / 8.7: letters with SGD, seeds 28 and 27); before unfreeze digits with Adam loses 6.5 points on seed 28. The
    # twelfth, the first judge of 0.13.0, on neither (1.4 / 6.7 and 1.5 / 6.0 with 0.13.0; 1.1 / 6.0 after unfreeze
    # with 0.14.0: photos and textures with Lite0); the thirteenth, its second judge, on neither with 0.13.0 (1.4 / 4.3
    # and 0.9 / 6.6: letters seed 35 after unfreeze), and after unfreeze with 0.14.0 (0.4 / 2.6), whose choice read
    # 0.13.0's races there (README: seen)
    table = raced[split]
    race = table[table["method"] == RACE]
    for stage in efficacy.STAGES:
        regret = race[race["stage"] == stage]["regret"]
        assert (regret.mean() <= 1 and regret.max() <= 3) == (stage in met), stage
    records = map(json.loads, (DATA / efficacy.RACE_TRIALS_FILE).read_text().splitlines())
    pairs = {(task, seed) for task, seed in bench.pairs(split)}
    costs = [r["cost"] for r in records if (r["task"], r["seed"]) in pairs and r["budget"] == "1"]
    assert len(costs) == 2 * len(pairs) and all(c["iterations"] <= c["budget_iterations"] for c in costs)


@pytest.mark.parametrize("stage", efficacy.STAGES)
def test_over_all_thirteen_held_out_splits_the_race_beats_every_curve_rule_and_the_hindsight_lr(bench, raced, stage):
    pooled = pd.concat(raced[split] for split in EVERY_HELD_OUT_SPLIT)
    pooled = pooled[pooled["stage"] == stage]
    assert (pooled["method"] == RACE).sum() == sum(len(bench.pairs(split)) for split in EVERY_HELD_OUT_SPLIT) == 181
    mean = pooled.groupby("method")["regret"].mean()  # each split's own hindsight lr, pooled like the race
    assert mean[RACE] < min(mean[name] for name in [*_curve_rules(), efficacy.HINDSIGHT])


@pytest.mark.parametrize("stage", efficacy.STAGES)
def test_over_every_held_out_curve_the_race_beats_every_curve_rule(bench, raced, stage):
    # the first three held-out splits (31 curves), as 0.4.0 was first judged
    pooled = pd.concat(raced[split] for split in HELD_OUT_SPLITS)
    pooled = pooled[pooled["stage"] == stage]
    assert (pooled["method"] == RACE).sum() == sum(len(bench.pairs(split)) for split in HELD_OUT_SPLITS)
    mean = pooled.groupby("method")["regret"].mean()
    assert mean[RACE] < min(mean[name] for name in _curve_rules())


def _race_data(tmp_path: Path) -> tuple[Path, list[str]]:
    """A copy of the benchmark's data with one pair's curves (digits-cnn-adam-bs64, seed 0), and the arguments that
    race it one curve a call."""
    data = tmp_path / "data"
    (data / "curves").mkdir(parents=True)
    for name in (efficacy.SPLIT_FILE, efficacy.GRID_FILE, efficacy.RANGE_FILE):
        shutil.copy(DATA / name, data)
    for stage in efficacy.STAGES:
        name = efficacy.curve_name("digits-cnn-adam-bs64", 0, stage)
        shutil.copy(DATA / "curves" / name, data / "curves")
    ranges = pd.read_csv(data / efficacy.RANGE_FILE)
    ranges[(ranges["task"] == "digits-cnn-adam-bs64") & (ranges["seed"] == 0)].to_csv(
        data / efficacy.RANGE_FILE, index=False
    )
    return data, [
        "race",
        "--split",
        "tuning",
        "--data",
        str(data),
        "--work",
        str(tmp_path / "work"),
        "--max-minutes",
        "0",
    ]


def test_the_race_records_in_chunks_and_resumes(trains, tmp_path):
    script = _benchmark_script()
    data, args = _race_data(tmp_path)
    script.main(args)  # a chunk whose time is up at once still races once
    first = pd.read_csv(data / efficacy.RACE_FILE, dtype=str)  # as written: a column's type follows its values
    assert len(first) == 1 and float(first["trainings"].iloc[0]) > 0
    script.main(args)
    assert pd.read_csv(data / efficacy.RACE_FILE, dtype=str).iloc[:1].equals(first)  # the first row is kept as it was
    second = pd.read_csv(data / efficacy.RACE_FILE)
    assert len(second) == 2
    assert set(second["stage"]) == set(efficacy.STAGES)
    records = [json.loads(line) for line in (data / efficacy.RACE_TRIALS_FILE).read_text().splitlines()]
    assert [(r["stage"], float(f"{r['winner']:.6g}")) for r in records] == list(
        zip(second["stage"], second["winner"], strict=True)
    )
    assert all(r["trials"] and r["cost"]["iterations"] == sum(t["iterations"] for t in r["trials"]) for r in records)
    # the unfrozen race spans the lrs around the frozen race's winner, as gate 2 does around gate 1's lr
    assert records[0]["head_lr"] is None and records[1]["head_lr"] == second["winner"].iloc[0]


def test_a_curve_nothing_can_read_is_recorded_as_a_failed_gate_with_no_winner_and_no_cost(tmp_path):
    # scoring counts a method's NaN lr as the task's worst grid accuracy (score_table), the race's as a rule's
    script = _benchmark_script()
    data, args = _race_data(tmp_path)
    curve = data / "curves" / efficacy.curve_name("digits-cnn-adam-bs64", 0, "frozen")
    curve.write_text("\n".join(curve.read_text().splitlines()[:3]) + "\n")
    script.main(args)
    (row,) = pd.read_csv(data / efficacy.RACE_FILE).itertuples()
    assert row.stage == "frozen" and np.isnan(row.winner) and row.trainings == 0 and row.stage_iterations > 0
    (record,) = (json.loads(line) for line in (data / efficacy.RACE_TRIALS_FILE).read_text().splitlines())
    assert "needs at least 7 finite points" in record["error"]
    race = efficacy.race_methods(data)["race (budget 1)"]
    assert np.isnan(race.lrs[("digits-cnn-adam-bs64", 0, "frozen")])


def test_the_own_seed_grid_is_each_curves_own_best_and_costs_the_whole_grid(bench):
    own = efficacy.own_seed_grid(bench, "tuning")
    task, seed = bench.pairs("tuning")[0]
    best = efficacy.mean_accuracy(bench.grid, task, "frozen", [seed]).idxmax()
    assert own.lrs[(task, seed, "frozen")] == best and own.costs[(task, seed, "frozen")] >= 13
    table = efficacy.score_table(bench, "tuning", extra={efficacy.OWN_GRID: own})
    assert (table[table["method"] == efficacy.OWN_GRID]["regret"] >= 0).all()


def test_an_optuna_sweep_of_n_trainings_costs_n_and_stays_on_the_grid(bench):
    sweep = efficacy.sweep_method(bench, "tuning", 3)
    assert sweep.covers(bench.pairs("tuning")) and set(sweep.costs.values()) == {3.0}
    assert all(1e-6 <= lr <= 10 for lr in sweep.lrs.values())
    assert sweep.lrs == efficacy.sweep_method(bench, "tuning", 3).lrs  # a seeded sampler: the same on every run
