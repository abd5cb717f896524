"""Where units run: here, in ``--workers`` processes of this node, or as Ray tasks
(``--distributor ray``); a GPU per process from ``LOCAL_RANK``.

Worker processes are started (`Workers`) before the source is listed. They are forked from a
fork server that imported the fitter and streaming's writer once (streaming imports torch and
transformers: ~5 s of CPU that every spawned worker would pay again), and the source goes to
each of them once, as it starts (`_start_worker`), not with every unit. The fitter's threads
are shared out: a unit runs with ``cores // min(workers, units)`` of them
(``$GSFORMAT_THREADS`` where set), so that ``N`` workers on ``N`` cores use each core once,
and a single unit still gets every core.
"""
from __future__ import annotations

import contextlib
import os

from .unit import (ImageBudget, Progress, failure_record, run_unit, unit_location,
                   write_failure)

BLAS_THREADS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
PRELOAD = [__name__, "streaming"]  # what the fork server imports once for every worker
_WORKER_SOURCE: list = []  # a worker process's source, handed over once as it starts


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def threads_per_unit(workers: int, n_units: int) -> int | None:
    """The fitter's threads for one of ``min(workers, n_units)`` units running side by side
    (None: ``$GSFORMAT_THREADS`` is set, and rules)."""
    if os.environ.get("GSFORMAT_THREADS"):
        return None
    return max(1, min(usable_cores() // max(1, min(workers, n_units)), 8))


def _unit_task(source, unit, part_dir, options, digest, threads: int | None = None) -> dict:
    """One unit in a worker process (or a Ray task): `run_unit`'s result, without its bar.
    ``source``: the source, or None for the one this worker was started with."""
    if threads:
        os.environ["GSFORMAT_THREADS"] = str(threads)  # this process's own environment
    if options.device == "gpu":
        bind_gpu()
    progress = Progress(None, disable=True)
    source = _WORKER_SOURCE[0] if source is None else source
    result = run_unit(source, unit, part_dir, options, digest, progress, ImageBudget())
    progress.close()
    return result


def bind_gpu() -> None:
    """The GPU of this process: ``LOCAL_RANK`` (torchrun, Slurm's per-node rank) modulo the
    GPUs visible (Ray sets ``CUDA_VISIBLE_DEVICES`` per task, so its tasks see one: GPU 0)."""
    import cupy
    count = cupy.cuda.runtime.getDeviceCount()
    cupy.cuda.Device(int(os.environ.get("LOCAL_RANK", 0)) % max(count, 1)).use()


def _run_on_ray(todo, source, options, digest, progress) -> list[dict]:
    """Every unit a Ray task (``num_gpus=1`` with ``--device gpu``); results as they finish."""
    import ray
    if not ray.is_initialized():
        address = os.environ.get("RAY_ADDRESS")
        ray.init(address=address, include_dashboard=False, log_to_driver=False,
                 **({} if address else {"num_cpus": max(options.workers, 1)}))
    task = ray.remote(num_cpus=1, num_gpus=1 if options.device == "gpu" else 0,
                      max_retries=0)(_unit_task)
    source_ref = ray.put(source)  # once, not with every task
    pending = {task.remote(source_ref, unit, part_dir, options, digest): unit
               for unit, part_dir in todo}
    pending_dirs = {unit.name: part_dir for unit, part_dir in todo}
    failures = []
    while pending:
        done, _ = ray.wait(list(pending), num_returns=1)
        unit = pending.pop(done[0])
        try:
            result = ray.get(done[0])
        except Exception as exc:  # the task itself died (a node lost, out of memory)
            failure = failure_record(unit, exc, digest)
            failure["error"] = f"{unit_location(unit)}: Ray task failed: {type(exc).__name__}"
            write_failure(pending_dirs[unit.name], failure)
            result = {"unit": unit.name, "stats": None, "failure": failure}
        _record(result, progress, failures)
    return failures


def _record(result: dict, progress, failures: list) -> None:
    """A finished unit's result, from another process: counted, its failure kept."""
    if result["stats"] is not None:
        progress.update(result["stats"]["psnr"], result["stats"]["n_rejected"])
    if result["failure"] is not None:
        failures.append(result["failure"])
    progress.unit_done()


def _start_worker(counter, source) -> None:
    """Worker i of this node takes GPU i (`bind_gpu` reads it as its LOCAL_RANK) and keeps the
    source for every unit it runs; the fork server did the imports a unit needs."""
    _WORKER_SOURCE[:] = [source]
    with counter.get_lock():
        index, counter.value = counter.value, counter.value + 1
    os.environ["LOCAL_RANK"] = str(int(os.environ.get("LOCAL_RANK", 0)) + index)
    from ..fitting import fit_images  # noqa: F401
    with contextlib.suppress(ImportError):
        import streaming  # noqa: F401  (SplatWriter's MDS writer; it imports torch: seconds)


@contextlib.contextmanager
def _environment(values: dict):
    """``os.environ`` with ``values`` set where unset, for processes started inside."""
    added = {k: v for k, v in values.items() if k not in os.environ}
    os.environ.update(added)
    try:
        yield
    finally:
        for key in added:
            os.environ.pop(key, None)


class Workers:
    """``--workers`` processes of this node, forked from a fork server that imports the fitter
    and streaming once, while the source is listed (started here, used by `run`): no threads or
    locks of this process are forked. Spawned afresh, each importing everything, where there is
    no fork server."""

    def __init__(self, workers: int):
        import multiprocessing
        self.workers, self.pool = workers, None
        if "forkserver" in multiprocessing.get_all_start_methods():
            from multiprocessing import forkserver
            self.context = multiprocessing.get_context("forkserver")
            self.context.set_forkserver_preload(PRELOAD)
            blas = max(1, usable_cores() // workers)  # numpy's BLAS inside each worker
            with _environment({name: str(blas) for name in BLAS_THREADS}):
                forkserver.ensure_running()  # returns at once; its imports go on meanwhile
        else:
            self.context = multiprocessing.get_context("spawn")

    def run(self, todo, source, options, digest, progress) -> list[dict]:
        import concurrent.futures
        self.pool = concurrent.futures.ProcessPoolExecutor(
            self.workers, mp_context=self.context, initializer=_start_worker,
            initargs=(self.context.Value("i", 0), source))
        threads = threads_per_unit(self.workers, len(todo))
        futures = [self.pool.submit(_unit_task, None, unit, part_dir, options, digest, threads)
                   for unit, part_dir in todo]
        failures = []
        for future in concurrent.futures.as_completed(futures):
            _record(future.result(), progress, failures)
        return failures

    def close(self, cancel: bool = False) -> None:
        """Wait for the workers to exit; ``cancel``: stop them first (an error, Ctrl-C)."""
        if self.pool is not None:
            if cancel:
                for process in list((getattr(self.pool, "_processes", None) or {}).values()):
                    process.terminate()
            self.pool.shutdown(wait=True, cancel_futures=True)


def run_units(todo, source, options, digest, progress, budget, workers: Workers | None = None
              ) -> list[dict]:
    """Convert the units ``todo`` ([(unit, part_dir)]) here, in the ``workers`` processes or
    as Ray tasks; returns the failure record of each unit that failed (`unit.failure_record`;
    a unit that kept part of its data is in the dataset and failed too)."""
    if options.distributor == "ray":
        return _run_on_ray(todo, source, options, digest, progress)
    if workers is not None and todo:
        return workers.run(todo, source, options, digest, progress)
    if options.device == "gpu":
        bind_gpu()
    failures = []
    for unit, part_dir in todo:
        result = run_unit(source, unit, part_dir, options, digest, progress, budget)
        if result["failure"] is not None:
            failures.append(result["failure"])
        progress.unit_done()
        if budget.left <= 0:
            break
    return failures
