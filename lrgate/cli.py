"""The ``lrgate`` command line.

Errors that lrgate raises on purpose (a bad file, a curve that cannot be read) become one line on stderr
and exit status 1; usage errors exit 2, as argparse does.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path

from lrgate.core.errors import LrgateError
from lrgate.core.suggest import BOWL, BOWL_MARGIN, DEFAULT_MARGIN, DEFAULT_METHOD, DEFAULT_NOISE, INFLECTION, METHODS


def _suggest(args: argparse.Namespace) -> int:
    from lrgate.core.curve_file import read_curve_csv
    from lrgate.core.suggest import format_choices, suggest

    lrs, losses = read_curve_csv(args.curve)
    if args.plot:
        for out in (Path(args.plot), Path(args.plot).with_suffix(".csv")):
            if out.exists() and os.path.samefile(out, args.curve):
                raise OverInput(
                    f"--plot {args.plot} would write {out} over the input curve {args.curve}: name the plot otherwise"
                )
    s = suggest(lrs, losses, args.state, method=args.method, noise=args.noise, margin=args.margin)
    if args.plot:
        from lrgate.core.plot import save_review

        save_review(s, args.plot, show_maxima=args.maxima)
    if args.json:
        print(json.dumps(s.to_dict()))
    else:
        print(format_choices(s))
        if args.plot:
            print(f"plot: {args.plot} (data beside it, .csv)")
    return 0


def _run(args: argparse.Namespace) -> int:
    from lrgate.core.config import load_config
    from lrgate.core.run_dir import RUN_FILE

    cfg = load_config(args.config)  # a bad config fails here, in one line, before Prefect starts
    if args.resume is not None and not (args.resume / RUN_FILE).is_file():
        raise RunNotFound(f"{args.resume}: not an lrgate run folder (no {RUN_FILE})")
    check_writable(args.resume or args.out or cfg.output_dir)  # so does a folder it cannot write
    quiet_offline_prefect()
    from lrgate.flows.pipeline import pipeline

    out = args.resume or args.out
    with temporary_server():
        state = pipeline(str(args.config), str(out) if out else None, return_state=True)
    if state.is_cancelled():
        print(f"lrgate: {state.message}", file=sys.stderr)
        return 3
    summary = state.result()  # raises the stage's error when the run failed
    print(f"run {summary['run_id']}: {summary['run_dir']}" + (" (resumed)" if summary["resumed"] else ""))
    for gate, d in summary["decisions"].items():
        print(f"gate {gate}: {d['value']} ({d['action']} by {d['reviewer']}, {d['source']})")
    print(f"report: {summary['report']}\nmodel: {summary['model']}")
    return 0


@contextlib.contextmanager
def temporary_server():
    """Without ``PREFECT_API_URL``, start Prefect's temporary server here, tied to this process (a SIGKILL of
    ``lrgate run`` takes it along), and watch it: if it dies mid-run (its PREFECT_HOME removed, killed), say so in
    one line and exit 1 at once. Prefect's clients would wait on the dead address for about 15 minutes, and the
    flow cannot report anything without its server; every file of the run folder is written whole, so what
    finished stays. With ``PREFECT_API_URL`` set, nothing to do: that server is someone else's."""
    from prefect.settings import get_current_settings

    settings = get_current_settings()
    if settings.api.url or not settings.server.ephemeral.enabled:
        yield
        return
    from lrgate.operations.local_server import ServerWatch, start_tied_server

    def died(message: str) -> None:
        sys.stderr.write(f"lrgate: error: {message}\n")
        sys.stderr.flush()
        os._exit(1)  # the engine's threads wait on the dead server: no clean way through them

    watch = ServerWatch(start_tied_server(), died)
    try:
        yield
    finally:
        watch.stop()


def check_writable(folder: Path) -> None:
    """Raise :class:`~lrgate.core.outputs.OutputError` naming ``folder`` if a file cannot be made in it, or in the
    nearest folder above it that exists (the run creates the rest): read-only, or not this user's to write."""
    import tempfile

    from lrgate.core.outputs import writing

    existing = folder.resolve()
    while not existing.exists():
        existing = existing.parent
    with writing(folder), tempfile.TemporaryFile(dir=existing):
        pass


def _fleet(args: argparse.Namespace) -> int:
    from lrgate.core.fleet_config import load_fleet

    load_fleet(args.fleet)  # a bad fleet file, or a bad config in it, fails here in one line before Prefect starts
    quiet_offline_prefect()
    from prefect.settings import get_current_settings

    if not get_current_settings().api.url:
        raise NoServer(
            "lrgate fleet starts its runs on workers: set PREFECT_API_URL to the server they poll "
            "(README: Outgrowing one machine)"
        )
    import asyncio

    from lrgate.flows.fleet import fleet

    state = asyncio.run(fleet(str(args.fleet), return_state=True))
    result = state.result(raise_on_failure=False)
    if isinstance(result, BaseException):
        raise result  # the fleet could not start (an LrgateError becomes one line)
    for r in result["rows"]:
        print(f"{r['run']}  {r['state']}  {r['config']}  accuracy {r['accuracy']}  {r['message']}")
    print(f"report: {result['report']}")
    if state.is_failed():
        print(f"lrgate: {state.message}", file=sys.stderr)
        return 1
    return 0


def _pending(args: argparse.Namespace) -> int:
    from lrgate.operations.review import pending

    runs = pending()
    if args.json:
        print(json.dumps(runs))
        return 0
    if not runs:
        print("no run waits at a gate")
    for r in runs:
        suggested = f"nothing (curve unreadable: {r['error']})" if r["error"] else r["suggestion"]
        print(f"{r['run_id']}  {r['name']}  gate {r['gate']}  suggested {suggested}  since {r['since']}")
        print(f"    plot: {r['plot']}" + "".join(f"\n    warning: {w}" for w in r["warnings"]))
        if r["override_range"]:
            lo, hi = r["override_range"]
            print(f"    an override may be {lo:.3g} .. {hi:.3g} (the lrs its range test and race tried)")
    return 0


def _parse_slice(text: str) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LO,HI (two numbers), got {text!r}") from None
    return lo, hi


def _approve(args: argparse.Namespace) -> int:
    from lrgate.operations.review import answer

    sent = answer(args.run_id, lr=args.lr, slice_=args.slice, reviewer=args.reviewer)
    what = "override" if sent["decision"] == "override" else "approved the suggestion"
    print(f"gate {sent['gate']} of run {args.run_id}: {what} as {sent['reviewer']}")
    return 0


def _reject(args: argparse.Namespace) -> int:
    from lrgate.operations.review import answer

    sent = answer(args.run_id, reject=args.reason, reviewer=args.reviewer)
    print(f"gate {sent['gate']} of run {args.run_id}: rejected as {sent['reviewer']}")
    return 0


def quiet_offline_prefect() -> None:
    """lrgate runs offline: Prefect's server would try (and fail, with an error line) to send telemetry."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


class OverInput(LrgateError):
    """An output (the plot, or the data beside it) that would be written over the input curve."""


class RunNotFound(LrgateError):
    """--resume names a folder that holds no run."""


class NoServer(LrgateError):
    """A command that needs a Prefect server with workers (``lrgate fleet``) found no PREFECT_API_URL."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lrgate",
        description="Learning-rate gates for fastai fine-tunes: read an LR range test into an lr or a slice.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = commands.add_parser(
        "suggest",
        help="suggest an lr or a slice from a recorded range-test curve",
        description="Read an LR range test (a CSV with a header row 'lr,loss') and suggest a learning rate "
        "(--frozen) or a discriminative slice (--freeze-to, --unfrozen).",
    )
    p.add_argument("curve", metavar="CURVE.csv", help="range-test curve: columns lr,loss with a header row")
    state = p.add_mutually_exclusive_group(required=True)
    state.add_argument(
        "--frozen", dest="state", action="store_const", const="frozen", help="only the head trains: one lr"
    )
    state.add_argument(
        "--freeze-to",
        dest="state",
        action="store_const",
        const="freeze_to",
        help="some body groups train too (freeze_to(n)): a slice",
    )
    state.add_argument(
        "--unfrozen", dest="state", action="store_const", const="unfrozen", help="every group trains: a slice"
    )
    p.add_argument(
        "--method",
        default=DEFAULT_METHOD,
        choices=sorted(METHODS),
        help=f"suggestion rule (default: {DEFAULT_METHOD}; {INFLECTION} is the forum post's method as stated)",
    )
    p.add_argument(
        "--noise",
        type=int,
        default=DEFAULT_NOISE,
        help=f"extrema filter order; higher filters spikes harder (default: {DEFAULT_NOISE})",
    )
    p.add_argument(
        "--margin",
        type=float,
        default=None,
        metavar="DECADES",
        help=f"ignore points within this many decades of the upturn (default: {DEFAULT_MARGIN:g}; "
        f"{BOWL_MARGIN:.2f} for {BOWL} on a frozen model)",
    )
    p.add_argument(
        "--plot",
        metavar="OUT.png",
        help="write the review plot here, and its data as OUT.csv (refused if either is CURVE.csv itself)",
    )
    p.add_argument("--maxima", action="store_true", help="mark maxima (green) on the plot too")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the choices table")
    p.set_defaults(run=_suggest)

    p = commands.add_parser(
        "run",
        help="run the pipeline: lr-suggest -> train-frozen -> unfreeze -> lr-suggest -> fine-tune",
        description="Run the whole transfer-learning stage as a Prefect flow (Prefect's embedded server when "
        "PREFECT_API_URL is not set). Outputs go to a new folder under the config's output_dir, or to --out.",
    )
    p.add_argument("config", type=Path, metavar="CONFIG.yaml", help="run config (see configs/demo.yaml)")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--out", type=Path, metavar="DIR", help="run folder; one that holds this config's run resumes")
    where.add_argument("--resume", type=Path, metavar="RUN_DIR", help="resume this run from its last finished stage")
    p.set_defaults(run=_run)

    p = commands.add_parser(
        "fleet",
        help="run every config of a fleet file through a deployment, wait for all, report them together",
        description="Start one pipeline run per config of FLEET.yaml through its deployment (workers of the "
        "server in PREFECT_API_URL run them), wait for all, and write the fleet report. Exits 1 when any run failed.",
    )
    p.add_argument("fleet", type=Path, metavar="FLEET.yaml", help="fleet file (see configs/fleet.example.yaml)")
    p.set_defaults(run=_fleet)

    p = commands.add_parser("pending", help="list runs waiting at a gate (Prefect API in PREFECT_API_URL)")
    p.add_argument("--json", action="store_true", help="print one JSON list")
    p.set_defaults(run=_pending)

    p = commands.add_parser("approve", help="approve a waiting gate's suggestion, or override it")
    p.add_argument("run_id", metavar="RUN_ID", help="the flow run id (see lrgate pending)")
    override = p.add_mutually_exclusive_group()
    override.add_argument("--lr", type=float, help="train with this lr instead (gate 1)")
    override.add_argument(
        "--slice", type=_parse_slice, metavar="LO,HI", help="train with slice(LO, HI) instead (gate 2)"
    )
    p.add_argument("--reviewer", help="who decides (default: your user name; an empty name is refused)")
    p.set_defaults(run=_approve)

    p = commands.add_parser("reject", help="reject a waiting gate: the run stops, with the reason recorded")
    p.add_argument("run_id", metavar="RUN_ID", help="the flow run id (see lrgate pending)")
    p.add_argument("--reason", required=True, help="why (recorded in the run report)")
    p.add_argument("--reviewer", help="who decides (default: your user name)")
    p.set_defaults(run=_reject)
    return parser


# Options that take numbers: a value after them that starts with "-" is that value, not an option.
NUMBER_OPTIONS = ("--lr", "--slice", "--margin")


def attach_negative_values(argv: Sequence[str]) -> list[str]:
    """``--slice -1e-5,1e-4`` as ``--slice=-1e-5,1e-4``: argparse reads a value that starts with "-" as an option
    unless it is a plain negative number (``-1``, ``-.5``), so ``-1e-5`` or ``-1e-5,1e-4`` never reached the checks
    that say what is wrong with it ("expected one argument" instead)."""
    out: list[str] = []
    for arg in argv:
        if out and out[-1] in NUMBER_OPTIONS and re.fullmatch(r"-[0-9.][0-9.eE+,-]*", arg):
            out[-1] = f"{out[-1]}={arg}"
        else:
            out.append(arg)
    return out


def _unplug_stdout() -> None:
    """After standard output refused a write (a full disk), Python would try it again at exit and print a
    traceback: send what is left to /dev/null instead."""
    try:
        sys.stdout.flush()
    except OSError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def main(argv: Sequence[str] | None = None) -> int:
    from lrgate.core.outputs import OutputError, writing

    args = build_parser().parse_args(attach_negative_values(sys.argv[1:] if argv is None else argv))
    # What a command prints is held and written at its end, so that a full disk under standard output is told
    # apart from the command's own errors and said in one line (the commands print their results last anyway).
    printed = io.StringIO()
    error = None
    try:
        with contextlib.redirect_stdout(printed):
            code = args.run(args)
    except LrgateError as e:
        code, error = 1, e
    finally:
        try:
            with writing("standard output"):
                sys.stdout.write(printed.getvalue())
                sys.stdout.flush()
        except OutputError as e:
            _unplug_stdout()
            code, error = 1, error or e
    if error is not None:
        print(f"lrgate: error: {error}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
