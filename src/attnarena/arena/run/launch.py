"""Training a suite in cluster jobs submitted from Python (submitit): a Slurm job array,
or the same jobs as processes of this machine (submitit's local executor).

Each job is ``train_worker``: it claims runs through the store's leases until every run
of the suite is finished, so N jobs train every run once whichever machines they land on.
Jobs on several machines need a store they can all reach: a PostgreSQL URL.
"""
from __future__ import annotations

import os
from pathlib import Path

from attnarena.arena.store.postgres import is_postgres_url
from attnarena.extras import require

CLUSTERS = ("auto", "local", "slurm")
DEFAULT_TIMEOUT_MIN = 24 * 60


def check_launch(store_path, cluster: str, workers: int) -> None:
    """Refuse, in one line, a launch that cannot work (before anything is submitted)."""
    if cluster not in CLUSTERS:
        raise ValueError(f"unknown cluster {cluster!r}; choose one of {', '.join(CLUSTERS)}")
    require("submitit", "cluster launches (--launcher submitit)", "cluster")
    if cluster == "slurm" and not is_postgres_url(str(store_path)):
        raise ValueError(f"Slurm jobs run on other machines, which need a store they can all "
                         f"reach: --store postgresql://user:password@host:port/db (got the "
                         f"SQLite file {store_path}; SQLite's locks are not safe over a "
                         "network file system)")


def job_environment(index: int) -> None:
    """Inside a submitted job: its job id and array index, for the runs' environment."""
    import submitit

    os.environ["ATTNARENA_ARRAY_INDEX"] = str(index)
    try:
        os.environ["ATTNARENA_JOB"] = str(submitit.JobEnvironment().job_id)
    except RuntimeError:  # not inside a submitit job (called directly)
        pass


def launch_submitit(job, spec: dict, workers: int, folder, cluster: str, options: dict,
                    log=print) -> list[dict]:
    """Submit ``job(spec, index)`` for index 0 .. ``workers`` - 1 as one array, wait for the
    jobs and return what each returned. ``options`` go to the executor
    (``slurm_partition``, ``timeout_min``, ``gpus_per_node``, ...). A job that fails is said
    and left out: its runs' leases go stale and the other jobs (or the caller) take them
    over."""
    submitit = require("submitit", "cluster launches (--launcher submitit)", "cluster")
    folder = Path(folder)
    executor = submitit.AutoExecutor(folder=folder / "%j",
                                     cluster=None if cluster == "auto" else cluster)
    parameters = {"timeout_min": DEFAULT_TIMEOUT_MIN, **options}
    if executor.cluster == "local" and not spec.get("threads"):
        spec = {**spec, "threads": max(1, (os.cpu_count() or 1) // workers)}
    try:
        executor.update_parameters(**parameters)
    except (TypeError, ValueError) as error:
        raise ValueError(f"--launcher-option: {error}") from None
    jobs = executor.map_array(job, [spec] * workers, list(range(workers)))
    log(f"submitted {len(jobs)} {executor.cluster} job(s): "
        f"{', '.join(str(j.job_id) for j in jobs)}; their logs are in {folder}")
    results = []
    for submitted in jobs:
        try:
            results.append(submitted.result())
        except Exception as error:  # the job's own failure, as submitit reports it
            first = str(error).strip().splitlines()[-1] if str(error).strip() else ""
            log(f"job {submitted.job_id} ended without finishing ({type(error).__name__}: "
                f"{first}); the runs it held are taken over when their leases go stale")
    return results
