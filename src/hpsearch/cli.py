"""The `hpsearch` command. Every command takes the study file first.

Exit status: 0 success; 2 bad usage or invalid study file; 1 any other failure; 130 after a clean
stop on Ctrl-C or SIGTERM (the current state is checkpointed; running again continues).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

from hpsearch.console import BARS_ENV
from hpsearch.errors import HpsearchError, UsageError

if TYPE_CHECKING:
    from hpsearch.config import StudySettings
    from hpsearch.search.placement import Placement
    from hpsearch.search.session import Session
    from hpsearch.search.summary import Summary


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="hpsearch",
        description="Hyperparameter search for PyTorch that forks Optuna trials from checkpoints.",
    )
    from hpsearch import __version__

    p.add_argument("--version", action="version", version=f"hpsearch {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def cmd(name: str, help: str) -> argparse.ArgumentParser:
        c = sub.add_parser(name, help=help, description=help)
        c.add_argument("study", metavar="STUDY.yaml", help="the study file")
        return c

    def common(c: argparse.ArgumentParser) -> None:
        c.add_argument("--storage", help="Optuna storage URL (overrides the study file)")
        c.add_argument(
            "--no-fork",
            dest="classic",
            action="store_true",
            help="the classic search: every trial trains from scratch (study '<name>-classic')",
        )

    def nproc(c: argparse.ArgumentParser) -> None:
        c.add_argument(
            "--nproc-per-trial", type=int, dest="processes",
            help="processes (ranks) that train each trial, data-parallel (replaces "
                 "trials.processes; with device: cuda, one GPU each)",
        )  # fmt: skip

    for name, help in (
        (
            "run",
            "create or continue the study until it is done (its tree grown, its budget "
            "spent or its trials finished)",
        ),
        ("resume", "continue an existing study (an error if it does not exist)"),
    ):
        c = cmd(name, help)
        c.add_argument("--trials", type=int, help="finished trials in total (not N more)")
        c.add_argument(
            "--budget", type=float,
            help="full runs from scratch to spend (replaces trials.budget; sizes a fork tree)",
        )  # fmt: skip
        c.add_argument("--workers", type=int, default=1, help="worker processes on this machine")
        nproc(c)
        c.add_argument("--gpus", help="with device: cuda, the GPUs for the workers, e.g. 0,1,3")
        c.add_argument("--debug", action="store_true",
                       help="print each failed attempt's traceback as it happens (every one "
                            "is kept in <run dir>/logs/ anyway)")  # fmt: skip
        common(c)
    c = cmd("worker", "one extra worker for a study in a shared database")
    c.add_argument("--trials", type=int, help="finished trials in total (not N more)")
    nproc(c)
    c.add_argument(
        "--ranks-listen", metavar="HOST:PORT",
        help="with trials.processes > 1: wait here for follower ranks a launcher starts "
             "(`hpsearch rank --connect HOST:PORT`), instead of starting them on this machine",
    )  # fmt: skip
    c.add_argument("--debug", action="store_true", help="print failed attempts' tracebacks")
    c.add_argument(
        "--budget", type=float,
        help="full runs from scratch to spend (replaces trials.budget; sizes a fork tree)",
    )  # fmt: skip
    common(c)
    c = cmd("status", "a table of the study's trials")
    c.add_argument("--wide", action="store_true", help="full params, ids and notes: no shortening")
    common(c)
    c = cmd("tree", "the checkpoint tree as indented text")
    c.add_argument("--all", dest="show_all", action="store_true", help="deleted checkpoints too")
    common(c)
    c = cmd("plot", "the branch plot of the study")
    c.add_argument("-o", "--output", help="FILE.png, .svg or .pdf (default: <run dir>/<name>.png)")
    c.add_argument(
        "--x",
        choices=("epochs", "samples"),
        default="epochs",
        help="the horizontal axis: training in epochs (default) or in samples",
    )
    common(c)
    c = cmd("export", "one row per trial as CSV, Parquet or JSON")
    c.add_argument("-o", "--output", help="FILE.csv, .parquet or .json (default: CSV on stdout)")
    c.add_argument("--evaluations", action="store_true",
                   help="one row per evaluation of every trial, with every metric")  # fmt: skip
    common(c)
    c = cmd("best", "the best trial's params and checkpoint")
    c.add_argument("--export", metavar="DIR", help="write model.safetensors and params.json")
    c.add_argument("--force", action="store_true",
                   help="with --export: replace files there an export did not write")  # fmt: skip
    common(c)
    c = cmd("replay", "retrain the best trial's recipe from scratch in one run")
    c.add_argument("--trial", type=int, help="another trial than the best")
    common(c)
    c = cmd("gc", "apply the retention rules now")
    c.add_argument("--dry-run", action="store_true", help="only print what would be deleted")
    common(c)
    common(cmd("verify", "re-hash every committed checkpoint"))
    c = cmd("rank", "a follower rank of a worker's trials, started by a launcher on any machine")
    c.add_argument("--connect", metavar="HOST:PORT", required=True,
                   help="the worker's --ranks-listen address")  # fmt: skip
    c.add_argument("--rank", type=int, required=True, help="this rank: 1 .. processes-1")
    c.add_argument("--local-rank", type=int,
                   help="its GPU on this machine with device: cuda (default: LOCAL_RANK, "
                        "SLURM_LOCALID, else 0)")  # fmt: skip
    c.add_argument(
        "--patience",
        type=float,
        default=600.0,
        help="seconds to wait for a team to join before leaving (default 600)",
    )
    nproc(c)
    c = cmd("check-resume", "self-test of exact resume on your task")
    c.add_argument("--steps", type=int, default=20, help="steps before and after the checkpoint")
    c.add_argument("--debug", action="store_true", help="show the traceback of a task that fails")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # hpsearch prints its own lines
    try:
        return _dispatch(args)
    except UsageError as exc:
        print(f"hpsearch: error: {exc}", file=sys.stderr)
        return 2
    except HpsearchError as exc:
        from hpsearch.search.control import Interrupted

        if isinstance(exc, Interrupted):
            print(
                f"\nhpsearch: {exc}; state checkpointed. Run the same command again to continue.",
                file=sys.stderr,
            )
            return 130
        print(f"hpsearch: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nhpsearch: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `hpsearch status x.yaml | head`
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - silence the flush at exit
        return 0


def _dispatch(args: argparse.Namespace) -> int:
    if not os.path.exists(args.study):
        raise UsageError(f"{args.study}: no such study file")
    return globals()["_cmd_" + args.command.replace("-", "_")](args)


def _cmd_run(args: argparse.Namespace, *, must_exist: bool = False) -> int:
    from hpsearch.config import load_study_file  # no torch: the first line comes at once

    settings = load_study_file(args.study, budget=args.budget, processes=args.processes)
    if args.trials is not None and args.trials < 1:
        raise UsageError(f"--trials must be >= 1, got {args.trials}")
    if args.workers < 1:
        raise UsageError(f"--workers must be >= 1, got {args.workers}")
    # on stdout, with the run's other lines: stderr is for warnings and errors
    print(f"{args.study}: opening the study and loading the task {settings.task} ...", flush=True)
    from hpsearch.search.session import Session  # imports torch: seconds on a cold start
    from hpsearch.search.summary import format_summary

    if must_exist:
        Session.open(args.study, storage=args.storage, classic=args.classic, create=False).close()
    summary, extra = run_with_workers(args, settings)
    ckpt_dir = os.path.join(settings.checkpoints.dir, summary.study)
    print(format_summary(summary, ckpt_dir))
    check_workers(extra, summary)
    return 1 if summary.failed else 0  # 0 only when every trial finished as planned


def check_workers(extra: Sequence[subprocess.Popen[bytes]], summary: Summary) -> None:
    """Raise if a started worker failed for a reason of its own (its message is above it); a
    worker exits 1 for the study's failed trials too, which the summary already lists."""
    failed = [f"worker {p.pid} exited with {p.returncode}" for p in extra
              if p.returncode and not (p.returncode == 1 and summary.failed)]  # fmt: skip
    if failed:  # the study itself may be fine
        raise HpsearchError("; ".join(failed) + " (see its messages above)")


def run_with_workers(
    args: argparse.Namespace, settings: StudySettings
) -> tuple[Summary, list[subprocess.Popen[bytes]]]:
    """Run the study in this process as worker 0 and start `args.workers - 1` more `hpsearch
    worker` processes, each on its GPU when the study runs on CUDA (`_placement`); returns the
    summary once all have ended, and the started workers (their exit codes)."""
    from hpsearch.search.placement import CUDA_ENV, worker_env
    from hpsearch.search.runner import run_study

    label = ""
    # this process's environment is put back afterwards: `main()` may be called in a process
    # that goes on (a test, a notebook) and starts other runs, which would inherit no bars
    saved = {k: os.environ.get(k) for k in (BARS_ENV, CUDA_ENV)}
    if args.workers > 1:  # one terminal, several workers: prefixed lines, no bars
        os.environ[BARS_ENV] = "0"
        label = f"[worker {os.getpid()}] "
    extra: list[subprocess.Popen[bytes]] = []

    def wait_for_workers() -> None:
        for proc in extra:
            proc.wait()

    try:
        plan = _placement(args, settings)
        extra = [_spawn_worker(args, worker_env(plan, i)) for i in range(1, args.workers)]
        if plan is not None:  # this process is worker 0; CUDA reads the variable when it starts
            os.environ[CUDA_ENV] = plan.devices[0]
        with _debug(args.debug):
            summary = run_study(
                args.study, trials=args.trials, storage=args.storage, classic=args.classic,
                label=label, after=wait_for_workers, budget=args.budget,
                processes=args.processes,
            )  # fmt: skip
    finally:
        wait_for_workers()  # after a stop too: they got the same signal
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    return summary, extra


def _placement(args: argparse.Namespace, settings: StudySettings) -> Placement | None:
    from hpsearch.search.placement import CUDA_ENV, parse_gpus, place_workers

    gpus = parse_gpus(args.gpus) if args.gpus else settings.gpus
    plan = place_workers(args.workers, device=settings.device, gpus=gpus,
                         inherited=os.environ.get(CUDA_ENV),
                         per_worker=settings.trials.processes)  # fmt: skip
    if plan is not None:
        print(plan.describe(), flush=True)
        if plan.warning:
            print(plan.warning, file=sys.stderr)
    return plan


def _spawn_worker(
    args: argparse.Namespace, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """`hpsearch worker` for the same study, in `env` (None: this process's environment)."""
    cmd = [sys.executable, "-m", "hpsearch", "worker", args.study]
    if args.storage:
        cmd += ["--storage", args.storage]
    if args.classic:
        cmd.append("--no-fork")
    if args.trials is not None:
        cmd += ["--trials", str(args.trials)]
    if args.debug:
        cmd.append("--debug")
    if args.budget is not None:
        cmd += ["--budget", repr(args.budget)]
    if args.processes is not None:
        cmd += ["--nproc-per-trial", str(args.processes)]
    return subprocess.Popen(cmd, env=env)


def _cmd_resume(args: argparse.Namespace) -> int:
    return _cmd_run(args, must_exist=True)


def _cmd_worker(args: argparse.Namespace) -> int:
    from hpsearch.search.runner import run_study

    listen = _address(args.ranks_listen, "--ranks-listen") if args.ranks_listen else None
    with _debug(args.debug):
        summary = run_study(args.study, trials=args.trials, storage=args.storage,
                            classic=args.classic, label=f"[worker {os.getpid()}] ",
                            budget=args.budget, say_plan=False,
                            processes=args.processes, listen=listen)  # fmt: skip
    return 1 if summary.failed else 0


def _address(text: str, flag: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"{flag} {text}: must be HOST:PORT, e.g. 10.0.0.5:29500")
    return host, int(port)


def _cmd_rank(args: argparse.Namespace) -> int:
    from hpsearch.search.ranks import follow

    return follow(args.study, _address(args.connect, "--connect"), args.rank,
                  local_rank=args.local_rank, patience_s=args.patience,
                  processes=args.processes)  # fmt: skip


@contextlib.contextmanager
def _debug(on: bool) -> Iterator[None]:
    """`--debug`: failed attempts print their tracebacks (the workers it starts inherit it)."""
    from hpsearch.search.trail import DEBUG_ENV

    saved = os.environ.get(DEBUG_ENV)
    if on:
        os.environ[DEBUG_ENV] = "1"
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop(DEBUG_ENV, None)
        else:
            os.environ[DEBUG_ENV] = saved


def _open(args: argparse.Namespace) -> Session:
    from hpsearch.search.session import Session

    session = Session.open(args.study, storage=args.storage, classic=args.classic, create=False)
    _say_damaged(session)
    return session


def _say_damaged(session: Session) -> None:
    """Say (on stderr, once a command) which nodes of a fork tree record a place that is not
    valid: every view leaves them out of the tree and of the winner rather than fail on them."""
    from hpsearch.search.scheduler.registry import strategy

    if not strategy(session).nodes:
        return
    from hpsearch.search.tree_nodes import check_nodes

    damaged = check_nodes(session.study.get_trials(deepcopy=False), session.settings.tree).damaged
    for number, why in sorted(damaged.items()):
        print(f"hpsearch: warning: trial {number}: its place in the fork tree is damaged "
              f"({why}); left out of the tree and of the winner", file=sys.stderr)  # fmt: skip


def _cmd_status(args: argparse.Namespace) -> int:
    from hpsearch.report.status import study_view
    from hpsearch.report.table import format_status_table

    session = _open(args)
    try:
        print(format_status_table(study_view(session), wide=args.wide))
    finally:
        session.close()
    return 0


def _cmd_tree(args: argparse.Namespace) -> int:
    from hpsearch.report.status import format_tree

    session = _open(args)
    try:
        print(format_tree(session, show_all=args.show_all))
    finally:
        session.close()
    return 0


def _cmd_plot(args: argparse.Namespace) -> int:
    from hpsearch.report.plot import plot_study
    from hpsearch.report.status import study_view

    session = _open(args)
    try:
        out = args.output or os.path.join(session.settings.run_dir, f"{session.study_name}.png")
        if os.path.splitext(out)[1].lower() not in (".png", ".svg", ".pdf"):
            raise UsageError(f"-o {out}: the plot is written as .png, .svg or .pdf")
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
        plot_study(study_view(session), out, x=args.x)
    finally:
        session.close()
    print(f"wrote {out}")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from hpsearch.report.export import evaluations_dataframe, trials_dataframe, write_export
    from hpsearch.report.status import study_view

    session = _open(args)
    try:
        table = evaluations_dataframe if args.evaluations else trials_dataframe
        df = table(study_view(session))
    finally:
        session.close()
    if not args.output:
        df.to_csv(sys.stdout, index=False)
        return 0
    if os.path.splitext(args.output)[1].lower() not in (".csv", ".parquet", ".json"):
        raise UsageError(f"-o {args.output}: export to .csv, .parquet or .json")
    write_export(df, args.output)
    print(f"wrote {args.output} ({len(df)} {'evaluations' if args.evaluations else 'trials'})")
    return 0


def _cmd_best(args: argparse.Namespace) -> int:
    from hpsearch.report.best import check_export_dir, export_best
    from hpsearch.report.recipe import format_recipe
    from hpsearch.report.status import study_view
    from hpsearch.search.replay import recipe

    if args.force and not args.export:
        raise UsageError("--force goes with --export DIR (it lets the export replace files there)")
    if args.export:  # before anything is read: a bad target is a mistake in the command
        check_export_dir(args.export, force=args.force)
    session = _open(args)
    try:
        view = study_view(session)
        best = view.best()  # the study's winner (`hpsearch.search.winner`)
        if best is None:
            raise HpsearchError(f"study {session.study_name} has no completed trial yet")
        print(f"best trial: {best.number}  {view.metric}={best.value:.6g}")
        for k, v in best.params.items():
            print(f"  {k}: {v}")
        segments = recipe(session, best.number)
        if len(segments) > 1:
            print("recipe (hpsearch replay retrains it from scratch):")
            print("\n".join(format_recipe(segments, view.samples_per_epoch)))
        if best.final_checkpoint_deleted is not None:
            print(f"checkpoint: {best.final_checkpoint_deleted} was deleted by garbage "
                  "collection (see checkpoints.keep_best)")  # fmt: skip
        elif best.final_checkpoint is None:
            print("checkpoint: none kept (see checkpoints.keep_best)")
        else:
            print(f"checkpoint: {session.store.url}/{best.final_checkpoint}")
        if args.export:
            export_best(session, best, args.export)
            files = [os.path.join(args.export, f) for f in ("model.safetensors", "params.json")]
            print(f"wrote {files[0]} and {files[1]}")
    finally:
        session.close()
    return 0


def _cmd_replay(args: argparse.Namespace) -> int:
    from hpsearch.report.recipe import format_recipe, format_replay
    from hpsearch.search.replay import recipe, replay, winner

    session = _open(args)
    try:
        number = args.trial
        if number is None:
            won = winner(session)
            if won is None:
                raise HpsearchError(f"study {session.study_name} has no completed trial yet")
            number = won.number
        print(f"recipe of trial {number}:")
        print("\n".join(format_recipe(recipe(session, number), session.samples_per_epoch())))
        _, result = replay(session, number)
        print("\n".join(format_replay(result, session.settings.objective.metric)))
    finally:
        session.close()
    return 0 if result.exact else 1


def _cmd_gc(args: argparse.Namespace) -> int:
    import secrets

    from hpsearch.console import human_bytes
    from hpsearch.search.collect import collect_garbage, recover

    session = _open(args)
    token = secrets.token_hex(8)  # holds the GC lease while this command collects
    try:
        if not args.dry_run:
            recover(session, token)
        doomed = collect_garbage(session, token, dry_run=args.dry_run, wait=True)
        verb = "would delete" if args.dry_run else "deleted"
        for d in doomed:
            print(f"{verb} {d.id}  ({d.kind}, {human_bytes(d.nbytes)}): {d.reason}")
        total = sum(d.nbytes for d in doomed)
        print(f"{verb} {len(doomed)} checkpoints, {human_bytes(total)} freed")
    finally:
        session.close()
    return 0


def _cmd_verify(args: argparse.Namespace) -> int:
    """Re-hash every checkpoint the tree says is committed (and any other on disk). A committed
    one that is missing, unreadable or in a newer format, an invalid id, and a base the study
    names but the tree does not hold are failures: each means the study cannot continue."""
    from hpsearch.errors import CheckpointNotFound

    session = _open(args)
    bad = 0
    try:
        rows = session.lineage.checkpoints(statuses=("committed",))
        committed = {r.id for r in rows}
        ids = [r.id for r in rows]
        try:
            ids += [i.id for i in session.store.list() if i.id not in committed]
        except Exception as exc:  # an unlistable store: the tree's rows are still checked
            bad += 1
            print(f"UNREADABLE  {session.store.url}: {type(exc).__name__}: {exc}")
        for bad_id in session.lineage.invalid_ids():
            bad += 1
            print(f"INVALID  {bad_id[:100]!r}: the database lists it, but it is no checkpoint id")
        base = session.attr("base_checkpoint")
        if base is not None and base not in committed:
            bad += 1
            print(f"MISSING  {str(base)[:100]!r}: the study's base checkpoint is not committed")
        for ckpt_id in ids:
            try:
                session.store.verify(ckpt_id)
                print(f"ok       {ckpt_id}")
            except CheckpointNotFound as exc:
                bad += 1
                print(f"MISSING  {ckpt_id}: {exc}")
            except Exception as exc:  # corrupt, newer format, unreadable, out of memory
                bad += 1
                print(f"CORRUPT  {ckpt_id}: {type(exc).__name__}: {exc}")
        print(f"{len(ids)} checkpoints verified, {bad} failed")
    finally:
        session.close()
    return 1 if bad else 0


def _cmd_check_resume(args: argparse.Namespace) -> int:
    from hpsearch.search.selfcheck import TaskFailed, check_resume

    if args.steps < 1:
        raise UsageError(f"--steps must be at least 1, got {args.steps}")
    try:
        status, report = check_resume(args.study, steps=args.steps)
    except TaskFailed as exc:
        if args.debug and exc.trace:
            print(exc.trace, file=sys.stderr)
        print(f"hpsearch: error: {exc}", file=sys.stderr)
        if not args.debug:
            print("(hpsearch check-resume --debug shows the traceback)", file=sys.stderr)
        return 1
    print(report)
    return status


if __name__ == "__main__":
    sys.exit(main())
