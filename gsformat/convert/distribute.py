"""Where units run: here, in ``--workers`` processes of this node, or as Ray tasks
(``--distributor ray``); a GPU per process from ``LOCAL_RANK``."""
from __future__ import annotations

import math
import os

from .sources import UnitError
from .unit import Progress, convert_with_retries


def _unit_task(source, unit, part_dir, args, digest) -> tuple[str, dict | str]:
    """One unit in a worker process (or a Ray task): ("ok", part stats) or ("failed", why)."""
    if args.device == "gpu":
        bind_gpu()
    progress = Progress(None, disable=True)
    try:
        return "ok", convert_with_retries(source, unit, part_dir, args, digest, progress,
                                          [math.inf])
    except UnitError as exc:
        return "failed", str(exc)


def bind_gpu() -> None:
    """The GPU of this process: ``LOCAL_RANK`` (torchrun, Slurm's per-node rank) modulo the
    GPUs visible (Ray sets ``CUDA_VISIBLE_DEVICES`` per task, so its tasks see one: GPU 0)."""
    import cupy
    count = cupy.cuda.runtime.getDeviceCount()
    cupy.cuda.Device(int(os.environ.get("LOCAL_RANK", 0)) % max(count, 1)).use()


def _run_on_ray(todo, source, args, digest, progress) -> list[str]:
    """Every unit a Ray task (``num_gpus=1`` with ``--device gpu``); results as they finish."""
    import ray
    if not ray.is_initialized():
        address = os.environ.get("RAY_ADDRESS")
        ray.init(address=address, include_dashboard=False, log_to_driver=False,
                 **({} if address else {"num_cpus": max(args.workers, 1)}))
    task = ray.remote(num_cpus=1, num_gpus=1 if args.device == "gpu" else 0,
                      max_retries=0)(_unit_task)
    pending = {task.remote(source, unit, part_dir, args, digest): unit for unit, part_dir in todo}
    failures = []
    while pending:
        done, _ = ray.wait(list(pending), num_returns=1)
        unit = pending.pop(done[0])
        try:
            status, value = ray.get(done[0])
        except Exception as exc:  # the task itself died (a node lost, out of memory)
            status, value = "failed", f"{unit.name}: Ray task failed: {type(exc).__name__}"
        _record(status, value, progress, failures)
    return failures


def _record(status: str, value, progress, failures: list) -> None:
    """A finished unit's result, from another process: counted, or its failure kept."""
    if status == "ok":
        progress.update(value["psnr"], value["n_rejected"])
    else:
        failures.append(value)
    progress.unit_done()


def _number_worker(counter) -> None:
    """Worker i of this node takes GPU i (`bind_gpu` reads it as its LOCAL_RANK)."""
    with counter.get_lock():
        index, counter.value = counter.value, counter.value + 1
    os.environ["LOCAL_RANK"] = str(int(os.environ.get("LOCAL_RANK", 0)) + index)


def run_units(todo, source, args, digest, progress, budget) -> list[str]:
    """Convert the units ``todo`` ([(unit, part_dir)]) here, in ``args.workers`` processes or as
    Ray tasks; returns one line per unit that failed."""
    failures = []
    if args.distributor == "ray":
        return _run_on_ray(todo, source, args, digest, progress)
    if args.workers <= 1:
        if args.device == "gpu":
            bind_gpu()
        for unit, part_dir in todo:
            try:
                convert_with_retries(source, unit, part_dir, args, digest, progress, budget)
            except UnitError as exc:
                failures.append(str(exc))
            progress.unit_done()
            if budget[0] <= 0:
                break
        return failures
    import concurrent.futures
    import multiprocessing
    threads = max(1, (os.cpu_count() or 1) // args.workers)  # the fitter's threads per worker
    os.environ.setdefault("GSFORMAT_THREADS", str(threads))
    context = multiprocessing.get_context("spawn")  # no forked threads or locks
    counter = context.Value("i", 0)
    with concurrent.futures.ProcessPoolExecutor(args.workers, mp_context=context,
                                                initializer=_number_worker,
                                                initargs=(counter,)) as pool:
        futures = [pool.submit(_unit_task, source, unit, part_dir, args, digest)
                   for unit, part_dir in todo]
        for future in concurrent.futures.as_completed(futures):
            _record(*future.result(), progress, failures)
    return failures
