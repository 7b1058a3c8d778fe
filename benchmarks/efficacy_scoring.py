"""Score lr suggestions against an oracle grid, from the efficacy benchmark's saved data (no training, seconds).

The data (``benchmarks/efficacy/``, written by ``benchmarks/efficacy.py record``):

- ``grid.csv``: one row per training, ``task, seed, stage, lr, accuracy, ...``; the unfrozen stage trained
  ``slice(lr / 10, lr)``, so its ``lr`` is the slice's upper end;
- ``range_tests.csv`` and ``curves/<task>__s<seed>__<stage>.csv``: the fastai ``lr_find`` record of each task, seed
  and stage (the unfrozen one from the same frozen checkpoint as that seed's unfrozen grid);
- ``split.json``: which (task, seed) curves are held out.

An lr is scored by the task's accuracy at that lr (mean over seeds, interpolated linearly in log10(lr) between grid
points, held at the end value outside the grid); a slice by its upper end. Regret = the grid's best mean accuracy
minus that score, in accuracy points (percent).
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from lrgate.operations.report import markdown_table

GRID_FILE = "grid.csv"
RANGE_FILE = "range_tests.csv"
RACE_FILE = "races.csv"  # the race's winner and cost per curve and budget (benchmarks/efficacy.py race)
RACE_TRIALS_FILE = "race_trials.jsonl"  # each race's whole record (its trials by rung), a line per races.csv row
SPLIT_FILE = "split.json"
# Later held-out splits, each fixed in its file before what it judges was chosen: the key it is read under, its file.
LATER_SPLITS = {
    "fresh": "split-fresh.json",  # fixed after the 0.2 default was chosen
    "third": "split-third.json",  # fixed before the race's parameters were chosen
    "fourth": "split-fourth.json",  # fixed before it was recorded, with 0.4.0's race unchanged
    "fifth": "split-fifth.json",  # fixed before any change to 0.4.0's race was chosen; the first judge of 0.6.0
    "sixth": "split-sixth.json",  # fixed after 0.6.0 was judged, before any later change was chosen
    "seventh": "split-seventh.json",  # fixed after 0.7.0 was judged, before any later change was chosen
    "eighth": "split-eighth.json",  # fixed after 0.8.0's change was committed, before any later change was chosen
    "ninth": "split-ninth.json",  # fixed after 0.9.0 was judged, before any later change was chosen
    "tenth": "split-tenth.json",  # fixed after 0.10.0 was judged, before any later change was chosen
    "eleventh": "split-eleventh.json",  # fixed with the tenth recorded, before any change after 0.10.0 was chosen
    "twelfth": "split-twelfth.json",  # fixed with the eleventh recorded, before any change after 0.11.0 was chosen
    "thirteenth": "split-thirteenth.json",  # fixed with 0.13.0 chosen, before the twelfth was raced or any later change
    "fourteenth": "split-fourteenth.json",  # fixed before the thirteenth was read or any change after 0.13.0
}
STAGES = ("frozen", "unfrozen")


def curve_name(task: str, seed: int, stage: str) -> str:
    return f"{task}__s{seed}__{stage}.csv"


def grid_frame(rows: list[dict] | pd.DataFrame) -> pd.DataFrame:
    """The grid rows with numeric columns."""
    frame = pd.DataFrame(rows, columns=["task", "seed", "stage", "lr", "accuracy"]) if isinstance(rows, list) else rows
    frame = frame.copy()
    frame["seed"] = frame["seed"].astype(int)
    frame["lr"] = frame["lr"].astype(float)
    frame["accuracy"] = frame["accuracy"].astype(float)
    return frame


def mean_accuracy(grid: pd.DataFrame, task: str, stage: str, seeds: Iterable[int] | None = None) -> pd.Series:
    """Accuracy against lr (the index: the lrs as ``grid.csv`` writes them, 6 significant digits), mean over ``seeds``
    (default: all) among those that have every lr."""
    sub = grid[(grid["task"] == task) & (grid["stage"] == stage)]
    if seeds is not None:
        sub = sub[sub["seed"].isin(list(seeds))]
    if sub.empty:
        return pd.Series(dtype=float)
    table = sub.pivot_table(index="lr", columns="seed", values="accuracy").dropna(axis=1)
    return table.mean(axis=1).sort_index()


@dataclass(frozen=True)
class Benchmark:
    """The saved benchmark: grid outcomes, range-test costs, curves by (task, seed, stage), and the split."""

    grid: pd.DataFrame
    ranges: pd.DataFrame
    curves: dict[tuple[str, int, str], tuple[np.ndarray, np.ndarray]]
    split: dict

    def pairs(self, split: str) -> list[tuple[str, int]]:
        """The (task, seed) curves of ``split``: ``tuning``, ``held_out`` (everything not tuning), ``new_tasks``
        (the held-out split's whole tasks only), ``all`` (the first six tasks), ``fresh`` (the tasks of
        ``split-fresh.json``, recorded after the default was fixed), ``third`` (``split-third.json``, recorded
        after the race's parameters were fixed), ``fourth`` (``split-fourth.json``, likewise), ``fifth``
        (``split-fifth.json``), ``sixth`` to ``fourteenth`` (``split-sixth.json`` and so on)."""
        every = [(t, s) for t in self.split["tasks"] for s in self.split["seeds"]]
        tuning = [(t, s) for t in self.split["tuning"]["tasks"] for s in self.split["tuning"]["seeds"]]
        new = [(t, s) for t, s in every if t in self.split["held_out"]["tasks"]]
        later = {
            key: [(t, s) for t in self.split[key]["tasks"] for s in self.split[key]["seeds"]]
            for key in LATER_SPLITS
            if key in self.split
        }
        chosen = {
            "all": every,
            "tuning": tuning,
            "held_out": [p for p in every if p not in tuning],
            "new_tasks": new,
            **later,
        }[split]
        return [(t, s) for t, s in chosen if all((t, s, stage) in self.curves for stage in STAGES)]


def load_benchmark(folder: str | Path) -> Benchmark:
    """Read the benchmark's data files (see the module docstring)."""
    from lrgate.core.curve_file import read_curve_csv

    folder = Path(folder)
    grid = grid_frame(pd.read_csv(folder / GRID_FILE))
    ranges = pd.read_csv(folder / RANGE_FILE)
    curves = {}
    for row in ranges.itertuples():
        lrs, losses = read_curve_csv(folder / "curves" / curve_name(row.task, row.seed, row.stage))
        curves[(row.task, int(row.seed), row.stage)] = (np.asarray(lrs, float), np.asarray(losses, float))
    return Benchmark(grid, ranges, curves, read_split(folder))


def read_split(folder: str | Path) -> dict:
    """``split.json``, with each later split's file (when there) under its key of :data:`LATER_SPLITS`."""
    folder = Path(folder)
    split = json.loads((folder / SPLIT_FILE).read_text())
    for key, name in LATER_SPLITS.items():
        if (folder / name).exists():
            split[key] = json.loads((folder / name).read_text())
    return split


def accuracy_at(curve: pd.Series, lr: float) -> float:
    """The mean accuracy at ``lr``: linear in log10(lr) between grid points, the end value outside the grid."""
    return float(np.interp(np.log10(lr), np.log10(curve.index.to_numpy(float)), curve.to_numpy(float)))


# A method maps a curve and its stage to one lr: the lr (frozen) or the slice's upper end (unfrozen).
Method = Callable[[np.ndarray, np.ndarray, str], float]


@dataclass(frozen=True)
class Recorded:
    """A method whose choices were recorded by training (the race, a sweep): its lr and its cost in trainings of
    the stage, by ``(task, seed, stage)``."""

    lrs: dict[tuple[str, int, str], float]
    costs: dict[tuple[str, int, str], float]

    def covers(self, pairs: Iterable[tuple[str, int]]) -> bool:
        return all((t, s, stage) in self.lrs for t, s in pairs for stage in STAGES)


# A method's name in the tables: the race at each budget, and an Optuna sweep of N full trainings.
RACE_NAME = "race (budget {:g})"
SWEEP_NAME = "Optuna TPE sweep ({} trainings)"


def race_methods(folder: str | Path) -> dict[str, Recorded]:
    """The races of ``races.csv`` as methods, one per budget: ``race (budget 1)``, ..."""
    path = Path(folder) / RACE_FILE
    if not path.exists():
        return {}
    races = pd.read_csv(path)
    out = {}
    for budget, rows in races.groupby("budget"):
        keys = list(zip(rows["task"], rows["seed"].astype(int), rows["stage"], strict=True))
        out[RACE_NAME.format(budget)] = Recorded(
            dict(zip(keys, rows["winner"].astype(float), strict=True)),
            dict(zip(keys, rows["trainings"].astype(float), strict=True)),
        )
    return out


OWN_GRID = "own seed's whole grid (one run's best possible)"


def own_seed_grid(bench: Benchmark, split: str) -> Recorded:
    """The floor of any decision that rests on one run's own trainings: each curve's own seed's best grid lr,
    scored like every method against the split's mean over seeds; it costs the whole grid."""
    lrs, costs = {}, {}
    for task, s in bench.pairs(split):
        for stage in STAGES:
            own = mean_accuracy(bench.grid, task, stage, [s])
            lrs[(task, s, stage)] = float(own.idxmax())
            costs[(task, s, stage)] = float(len(own))
    return Recorded(lrs, costs)


def sweep_method(bench: Benchmark, split: str, n_trials: int, seed: int = 0) -> Recorded:
    """What a user would run instead of a gate: an Optuna TPE sweep of ``n_trials`` full trainings per curve over
    log lr, each trial's accuracy read from that seed's own grid (interpolated), the best trial's lr kept."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    lrs, costs = {}, {}
    for task, s in bench.pairs(split):
        for stage in STAGES:
            own = mean_accuracy(bench.grid, task, stage, [s])
            lo, hi = float(own.index.min()), float(own.index.max())
            study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed))
            study.optimize(
                lambda t, own=own, lo=lo, hi=hi: accuracy_at(own, t.suggest_float("lr", lo, hi, log=True)),
                n_trials=n_trials,
            )
            lrs[(task, s, stage)] = float(study.best_params["lr"])
            costs[(task, s, stage)] = float(n_trials)
    return Recorded(lrs, costs)


def lrgate_method(name: str) -> Method:
    """A method of :data:`lrgate.core.suggest.METHODS` as lrgate runs it (cutoff, fallbacks; slice -> its upper end)."""
    from lrgate.core.suggest import suggest

    def method(lrs: np.ndarray, losses: np.ndarray, stage: str) -> float:
        return suggest(lrs, losses, stage, method=name).lr

    return method


def fastai_method(name: str, num_it: int = 100) -> Method:
    """fastai's own rule as ``lr_find`` applies it: the record's ``[num_it // 10 : -5]``, cut at the first NaN."""
    from lrgate.core import peers

    def method(lrs: np.ndarray, losses: np.ndarray, stage: str) -> float:
        lrs, losses = lrs[num_it // 10 : -5], losses[num_it // 10 : -5]
        finite = ~np.isnan(losses)
        end = len(losses) if finite.all() else int(np.argmin(finite))
        return peers.FASTAI[name](lrs[:end], losses[:end])

    return method


def lightning_method(lrs: np.ndarray, losses: np.ndarray, stage: str) -> float:
    from lrgate.core import peers

    return peers.lightning(lrs, losses)


def fixed(frozen_lr: float, unfrozen_hi: float) -> Method:
    """A rule that ignores the curve."""
    return lambda lrs, losses, stage: frozen_lr if stage == "frozen" else unfrozen_hi


def methods() -> dict[str, Method]:
    """Every method the benchmark scores, by the name its table shows (the fixed lr in hindsight is added later)."""
    from lrgate.core.suggest import DEFAULT_METHOD, INFLECTION

    return {
        f"lrgate default ({DEFAULT_METHOD})": lrgate_method(DEFAULT_METHOD),
        "post's method (inflection)": lrgate_method(INFLECTION),
        "fastai valley (its default)": fastai_method("valley"),
        "fastai minimum": fastai_method("minimum"),
        "fastai steep": fastai_method("steep"),
        "fastai slide": fastai_method("slide"),
        "Lightning (steepest gradient)": lightning_method,
        "fastai fine_tune defaults": fixed(2e-3, 1e-3),
    }


HINDSIGHT = "fixed lr in hindsight"
CARRIED = "fixed lr carried over (the first six tasks' hindsight lr)"


def _split_accuracies(bench: Benchmark, split: str, stage: str) -> dict[str, pd.Series]:
    """Each task's grid accuracy at ``stage``, the mean over the split's own seeds of it."""
    pairs = bench.pairs(split)
    return {t: mean_accuracy(bench.grid, t, stage, [s for t2, s in pairs if t2 == t]) for t, _ in pairs}


def hindsight_lr(bench: Benchmark, split: str, stage: str) -> float:
    """The single grid lr with the best mean accuracy over the split's curves at ``stage``."""
    pairs, accs = bench.pairs(split), _split_accuracies(bench, split, stage)
    grid_lrs = sorted(set().union(*(a.index for a in accs.values())))
    return max(grid_lrs, key=lambda lr: np.mean([accuracy_at(accs[t], lr) for t, _ in pairs]))


def carried_over(bench: Benchmark) -> dict[str, Method]:
    """For the fresh split: the fixed lr a team would carry over to new tasks, the hindsight lr per stage of the
    first six tasks (split ``all``), as an extra method for :func:`score_table`."""
    return {CARRIED: fixed(hindsight_lr(bench, "all", "frozen"), hindsight_lr(bench, "all", "unfrozen"))}


def score_table(
    bench: Benchmark, split: str = "held_out", extra: dict[str, Method | Recorded] | None = None
) -> pd.DataFrame:
    """One row per method, stage, task and seed: the lr it chose, the accuracy there, the regret in points, and
    the cost in trainings of the stage beyond the range test (0 for a curve rule; a :class:`Recorded` method's
    own; the grid's size for the oracle).

    A task's accuracy is the mean over the split's own seeds of it, so no score of one split rests on another's
    trainings. A curve a method cannot read (it raises, or gives no finite positive lr) counts as the task's worst
    grid accuracy (a gate that fails the run). The fixed lr in hindsight is the single grid lr per stage with the
    best mean accuracy over the split.
    """
    pairs = bench.pairs(split)
    rows = []
    for stage in STAGES:
        accs = _split_accuracies(bench, split, stage)
        rules = {
            **methods(),
            **{k: v for k, v in (extra or {}).items() if not isinstance(v, Recorded) or v.covers(pairs)},
        }
        best_fixed = hindsight_lr(bench, split, stage)
        rules[HINDSIGHT] = fixed(best_fixed, best_fixed)
        for name, rule in rules.items():
            for task, seed in pairs:
                acc = accs[task]
                lrs, losses = bench.curves[(task, seed, stage)]
                cost = 0.0
                if isinstance(rule, Recorded):
                    lr, cost = rule.lrs[(task, seed, stage)], rule.costs[(task, seed, stage)]
                else:
                    try:
                        lr = float(rule(lrs, losses, stage))
                    except Exception:  # noqa: BLE001  (any rule's failure is a failed gate, scored as such)
                        lr = float("nan")
                score = accuracy_at(acc, lr) if np.isfinite(lr) and lr > 0 else float(acc.min())
                rows.append(
                    {
                        "method": name,
                        "stage": stage,
                        "task": task,
                        "seed": seed,
                        "lr": lr,
                        "accuracy": score,
                        "regret": 100 * (float(acc.max()) - score),
                        "best_lr": float(acc.idxmax()),
                        "cost": cost,
                    }
                )
    return pd.DataFrame(rows)


def summary(table: pd.DataFrame) -> pd.DataFrame:
    """Mean, median and worst regret (accuracy points) and median cost (trainings of the stage beyond the range
    test) per method and stage, methods in the table's order."""
    order = list(dict.fromkeys(table["method"]))
    if "cost" not in table:  # a table scored before costs were recorded
        table = table.assign(cost=0.0)
    out = table.groupby(["method", "stage"]).agg(
        mean=("regret", "mean"), median=("regret", "median"), worst=("regret", "max"), cost=("cost", "median")
    )
    out = out.unstack("stage")
    out.columns = [f"{stage} {stat}" for stat, stage in out.columns]
    cols = [f"{stage} {stat}" for stage in STAGES for stat in ("mean", "median", "worst", "cost")]
    return out.loc[order, cols]


def format_table(table: pd.DataFrame, split: str) -> str:
    """The regret table as text (markdown), with the split's size and the fixed lrs in hindsight."""
    s = summary(table)
    n = table[["task", "seed"]].drop_duplicates().shape[0]
    lines = [
        f"Accuracy regret in points against the oracle grid ({split} split: {n} curves per stage, "
        f"{table['task'].nunique()} tasks); lower is better.",
        "",
        *markdown_table(
            ["method", *s.columns],
            ([name, *(f"{v:.1f}" for v in row)] for name, row in s.iterrows()),
            "l" + "r" * len(s.columns),
        ),
    ]
    lines += [
        "",
        "cost: median trainings of the stage beyond the range test (the race's own record; a sweep's "
        "trial count); the oracle grid costs one training per grid lr",
    ]
    hind = table[table["method"] == HINDSIGHT].groupby("stage")["lr"].first()
    lines += ["", "fixed lr in hindsight: " + ", ".join(f"{st} {hind[st]:.2g}" for st in STAGES if st in hind)]
    best = table.drop_duplicates(["task", "stage"]).pivot(index="task", columns="stage", values="best_lr")
    lines += [
        "oracle best lr per task: "
        + "; ".join(f"{t} {r['frozen']:.2g} / {r['unfrozen']:.2g}" for t, r in best.iterrows())
    ]
    return "\n".join(lines)


def format_costs(bench: Benchmark) -> str:
    """What a range test costs against one stage's training and against the grid that replaces it (medians of
    CPU seconds; the ratio's range over tasks beside it, since epochs and batch sizes differ by task)."""
    grid = bench.grid.assign(seconds=bench.grid["seconds"].astype(float))
    ranges = bench.ranges.assign(seconds=bench.ranges["seconds"].astype(float))
    rows = []
    for stage in STAGES:
        rt = ranges[ranges["stage"] == stage].groupby("task")["seconds"].median()
        g = grid[grid["stage"] == stage]
        one = g.groupby("task")["seconds"].median()
        per_curve = g.groupby(["task", "seed"])["seconds"].sum().groupby("task").median()
        ratio = rt / one
        rows.append(
            [
                stage,
                f"{rt.median():.1f}",
                f"{one.median():.1f}",
                f"{ratio.median():.2f} ({ratio.min():.2f} to {ratio.max():.1f})",
                f"{per_curve.median():.0f}",
                f"{(per_curve / rt).median():.0f}x",
            ]
        )
    header = ["stage", "range test (s)", "one training (s)", "ratio (over tasks)", "grid per curve (s)"]
    lines = markdown_table([*header, "grid / range test"], rows, "lrrrrr")
    total = grid["seconds"].sum() + ranges["seconds"].sum()
    lines.append(f"\nThe whole benchmark: {len(grid)} trainings and {len(ranges)} range tests, {total / 60:.0f} min.")
    return "\n".join(lines)


def regret_plot(table: pd.DataFrame, path: str | Path, title: str = "") -> Path:
    """Mean (bar) and worst (marker) regret per method, one panel per stage; written atomically as PNG."""
    from matplotlib.figure import Figure

    from lrgate.core.outputs import write_atomic

    s = summary(table)
    fig = Figure(figsize=(10, 0.45 * len(s) + 1.6), layout="constrained")
    axes = fig.subplots(1, len(STAGES), sharey=True)
    y = np.arange(len(s))[::-1]
    for ax, stage in zip(axes, STAGES, strict=True):
        ax.barh(y, s[f"{stage} mean"], color="tab:blue", label="mean")
        ax.plot(s[f"{stage} worst"], y, "o", color="tab:red", label="worst")
        ax.plot(s[f"{stage} median"], y, "|", color="black", markersize=12, label="median")
        ax.set_title(f"{stage} stage")
        ax.set_xlabel("accuracy regret (points below the grid's best)")
        ax.grid(axis="x", alpha=0.3)
    axes[0].set_yticks(y, s.index)
    axes[-1].legend(loc="lower right")
    if title:
        fig.suptitle(title)
    return write_atomic(path, lambda f: fig.savefig(f, format="png", dpi=110))


def cost_plot(table: pd.DataFrame, path: str | Path, grid_size: dict[str, int], title: str = "") -> Path:
    """Mean regret against median cost in trainings of the stage, one panel per stage, written atomically as PNG.

    Names go in each panel's legend, not beside the points (the race's budgets lie close together): the race's
    budgets as one green line, each point marked with its budget (points of one cost: a column of labels, in the
    points' order); the sweeps likewise, marked with their trainings; of the rules that cost nothing the best two by
    name and the rest grey; the own seed's grid and the oracle grid (zero regret, its size) in black. The dashed line
    is the target's mean."""
    from matplotlib.figure import Figure

    from lrgate.core.outputs import write_atomic

    s = summary(table)
    fig = Figure(figsize=(12, 5.5), layout="constrained")
    axes = fig.subplots(1, len(STAGES), sharey=True)
    for ax, stage in zip(axes, STAGES, strict=True):
        cost, mean = s[f"{stage} cost"], s[f"{stage} mean"]
        free = s[cost == 0].index
        best_free = list(mean[free].nsmallest(2).index)
        grey = [n for n in free if n not in best_free]
        ax.plot(cost[grey], mean[grey], "o", color="0.7", label="the other curve rules (cost 0)")
        for name, marker in zip(best_free, ("o", "^"), strict=False):
            ax.plot(cost[name], mean[name], marker, color="tab:blue", label=name)
        lines = {RACE_NAME: ("tab:green", "race, budget"), SWEEP_NAME: ("tab:purple", "Optuna TPE sweep, trainings")}
        prefixes = tuple(template.split("{")[0] for template in lines)  # "race (budget ", "Optuna TPE sweep ("
        for prefix, (color, label) in zip(prefixes, lines.values(), strict=True):
            names = sorted((n for n in s.index if n.startswith(prefix)), key=lambda n: cost[n])
            if not names:
                continue
            ax.plot(cost[names], mean[names], "-o", color=color, label=label)
            for n in names:  # points of one cost (budgets on the two-range-test floor) label as a column, in order
                same = sorted((m for m in names if cost[m] == cost[n]), key=lambda m: (mean[m], m))
                rank = same.index(n) - (len(same) - 1) / 2  # 0 alone; -1, 0, 1 for three, lowest regret lowest
                ax.annotate(
                    n[len(prefix) :].split()[0].rstrip(")"),  # "0.5", "3"
                    (cost[n], mean[n]),
                    fontsize=7,
                    color=color,
                    xytext=(5, -3 + 8 * rank),
                    textcoords="offset points",
                    ha="left",
                )
        rest = [n for n in s.index if n not in free and not n.startswith(prefixes)]
        for name, marker in zip(rest, itertools.cycle("DvPX")):  # every one drawn, however many
            ax.plot(cost[name], mean[name], marker, color="black", label=name)
        ax.plot(grid_size[stage], 0, "s", color="black", label=f"oracle grid ({grid_size[stage]} trainings)")
        ax.axhline(1, color="tab:red", lw=0.8, ls="--")
        ax.set_xscale("symlog", linthresh=1)
        ax.margins(x=0.08)  # the grids' markers at the right end stay inside
        ax.set_xlabel("median cost: trainings of the stage beyond the range test")
        ax.set_title(f"{stage} stage")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper right")
    axes[0].set_ylabel("mean accuracy regret (points); dashed: the target")
    if title:
        fig.suptitle(title)
    return write_atomic(path, lambda f: fig.savefig(f, format="png", dpi=110))
