"""Does Optuna's gRPC storage proxy cut the database load of many workers? A measurement.

    python benchmarks/grpc_proxy.py [--trials 1000] [--clients 1 8] [--rounds 10]

A study on PostgreSQL (a throwaway server, tests/pgserver.py) holding `--trials` finished
trials; each client process does what an hpsearch worker does with Optuna for one trial,
`--rounds` times: ask with TPE (3 params, which reads every trial), 4 reports each followed by
MedianPruner's decision (which reads every trial), 3 user attributes, tell. Once with Optuna's
storage straight on the database (`RDBStorage`, behind Optuna's cache, as hpsearch opens it),
once through `GrpcStorageProxy` to one `run_grpc_proxy_server` on the same database. Reported:
the median time of a trial's Optuna calls, and the server connections at the end (every client's
pool, or the proxy's alone).

hpsearch's lineage (attempts, checkpoints, pins, leases) still needs SQL beside the proxy: the
proxy carries only Optuna's calls, so a worker keeps its own small pool either way.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import random
import statistics
import sys
import threading
import time

import optuna

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))

SPACE = {
    "lr": optuna.distributions.FloatDistribution(1e-4, 3e-2, log=True),
    "dropout": optuna.distributions.FloatDistribution(0.0, 0.5),
    "batch_size": optuna.distributions.CategoricalDistribution([32, 64, 128]),
}


def _fill(url: str, n: int) -> None:
    rng = random.Random(0)
    study = optuna.create_study(study_name="proxy", storage=url, direction="maximize")
    trials = []
    for _ in range(n):
        curve = [0.1 + 0.8 * rng.random() * (k + 1) / 4 for k in range(4)]
        trials.append(optuna.trial.create_trial(
            params={"lr": 10 ** rng.uniform(-4, -1.6), "dropout": rng.uniform(0, 0.5),
                    "batch_size": rng.choice([32, 64, 128])},
            distributions=SPACE, value=curve[-1], intermediate_values=dict(enumerate(curve)),
            user_attrs={"hpsearch.final_checkpoint": "x", "hpsearch.steps_trained": 7},
        ))  # fmt: skip
    study.add_trials(trials)


def _client(target: str, rounds: int, seed: int, out: mp.Queue) -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if target.startswith("grpc:"):
        host, port = target[len("grpc:") :].split(":")
        storage = optuna.storages.GrpcStorageProxy(host=host, port=int(port))
    else:
        from hpsearch.lineage import engine_kwargs
        from hpsearch.lineage.schema import database_url

        url = database_url(target)
        storage = optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs(url))
    study = optuna.load_study(study_name="proxy", storage=storage,
                              sampler=optuna.samplers.TPESampler(seed=seed),
                              pruner=optuna.pruners.MedianPruner())  # fmt: skip
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        trial = study.ask(SPACE)
        for step in range(4):
            trial.report(0.5 + 0.1 * step, step)
            trial.should_prune()
        for key in ("a", "b", "c"):
            trial.set_user_attr(key, 1)
        study.tell(trial, 0.8)
        times.append(time.perf_counter() - t0)
    out.put(times)


def _connections(server, database: str) -> int:
    import psycopg

    with psycopg.connect(server.url("postgres"), autocommit=True) as con:
        row = con.execute("select count(*) from pg_stat_activity where datname = %s",
                          (database,)).fetchone()  # fmt: skip
    return int(row[0]) if row else 0


def measure(target: str, clients: int, rounds: int, server, database: str) -> dict[str, float]:
    ctx = mp.get_context("spawn")
    out: mp.Queue = ctx.Queue()
    procs = [ctx.Process(target=_client, args=(target, rounds, i, out)) for i in range(clients)]
    for p in procs:
        p.start()
    times = [t for _ in procs for t in out.get(timeout=900)]
    conns = _connections(server, database)
    for p in procs:
        p.join()
    return {"median_ms": statistics.median(times) * 1000, "connections": conns}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--trials", type=int, default=1000)
    p.add_argument("--clients", type=int, nargs="+", default=[1, 8])
    p.add_argument("--rounds", type=int, default=10)
    args = p.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    from hpsearch.lineage import engine_kwargs
    from hpsearch.lineage.schema import database_url
    from pgserver import start_server

    server = start_server()
    rows = []
    try:
        url = server.create_database()
        database = url.rsplit("/", 1)[1]
        driver_url = database_url(url)
        _fill(driver_url, args.trials)
        kw = engine_kwargs(driver_url)
        proxy_storage = optuna.storages.RDBStorage(driver_url, engine_kwargs=kw)
        port = server.port + 1000
        proxy = optuna.storages.run_grpc_proxy_server
        where = {"host": "127.0.0.1", "port": port}
        threading.Thread(target=proxy, args=(proxy_storage,), kwargs=where, daemon=True).start()
        time.sleep(2)
        for clients in args.clients:
            for name, target in (("RDBStorage", url), ("gRPC proxy", f"grpc:127.0.0.1:{port}")):
                r = measure(target, clients, args.rounds, server, database)
                rows.append((name, clients, r))
                print(f"{name}, {clients} clients: {r['median_ms']:.0f} ms a trial's Optuna "
                      f"calls, {r['connections']} server connections", flush=True)  # fmt: skip
    finally:
        server.stop()
    print(f"\n{os.cpu_count()} cores; a study of {args.trials} finished trials on PostgreSQL\n")
    print("| Optuna's storage | clients | a trial's Optuna calls, median | server connections |")
    print("| --- | --- | --- | --- |")
    for name, clients, r in rows:
        print(f"| {name} | {clients} | {r['median_ms']:.0f} ms | {r['connections']} |")


if __name__ == "__main__":
    main()
