"""Where a batch's chunks run: in this process (``local``) or as Ray tasks (``ray``).

An executor turns pending work (a job and the image indices already stored) into a stream of
:class:`ChunkResult`; it never writes the store. The driver (:func:`zoattack.batch.runner.
run_batch`) writes each result in one transaction before asking for the next, so the driver
alone owns the database whether chunks ran here or on a cluster.

Chunks are seeded per (seed, chunk index) (see :mod:`zoattack.jobs.attack`), so a chunk gives
the same rows wherever and however often it runs: a Ray task retried after its worker died
returns exactly the rows the lost attempt would have, and the store keeps one copy
(``UNIQUE(job, "index")``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from zoattack.batch.plan import PlanJob
from zoattack.errors import ZOAttackError
from zoattack.jobs.attack import (
    AttackSpec,
    JobInterrupted,
    PreparedJob,
    chunk_bounds,
    prepare,
    run_job,
)

RAY_HINT = "install it with: pip install 'zoattack[ray]'"
EXECUTORS = ("local", "ray")


@dataclass
class Work:
    """A job with images still to attack; ``done`` holds the dataset indices already stored."""

    job: PlanJob
    done: frozenset[int] = frozenset()

    def chunks(self) -> list[int]:
        """Chunks with at least one image not stored (by the spec's image count)."""
        s = self.job.spec
        idx = s.image_indices()  # data-set index of each image (--indices)
        return [
            k
            for k, (a, b) in enumerate(chunk_bounds(s.images, s.chunk_size))
            if any(idx[i] not in self.done for i in range(a, b))
        ]

    @property
    def todo(self) -> int:
        return max(0, self.job.spec.images - len(self.done))


@dataclass
class ChunkResult:
    """New rows of one chunk of one job (or the reason it produced none)."""

    key: str
    chunk: int | None
    rows: list[dict[str, Any]] = field(default_factory=list)
    scored_inputs: int = 0
    seconds: float = 0.0
    settings: dict[str, Any] | None = None
    error: str | None = None


class Reporter(Protocol):
    """Progress hooks (the CLI draws Rich bars; tests pass nothing)."""

    def batch_started(self, works: list[Work]) -> None: ...

    def rows_stored(self, job: PlanJob, count: int) -> None: ...

    def job_started(self, job: PlanJob, total: int, unit: str) -> None: ...

    def job_progress(self, job: PlanJob, completed: int) -> None: ...


class QuietReporter:
    def batch_started(self, works: list[Work]) -> None:
        pass

    def rows_stored(self, job: PlanJob, count: int) -> None:
        pass

    def job_started(self, job: PlanJob, total: int, unit: str) -> None:
        pass

    def job_progress(self, job: PlanJob, completed: int) -> None:
        pass


def _model_key(spec: AttackSpec) -> tuple[Any, ...]:
    return (
        spec.model,
        spec.dataset,
        spec.data_dir,
        spec.weights,
        spec.model_dir,
        spec.threat_model,
        spec.device,
    )


class _Prepared:
    """Prepared jobs and models kept between chunks, so a process loads each model once."""

    def __init__(self, keep: int = 4) -> None:
        self.keep = keep
        self.jobs: dict[str, PreparedJob] = {}
        self.models: dict[tuple[Any, ...], Any] = {}

    def get(self, key: str, spec: AttackSpec) -> PreparedJob:
        job = self.jobs.get(key)
        if job is None:
            mk = _model_key(spec)
            job = prepare(spec, model=self.models.get(mk))
            self.models[mk] = job.model
            self.jobs[key] = job
            while len(self.jobs) > self.keep:  # oldest first (dicts keep insertion order)
                self.jobs.pop(next(iter(self.jobs)))
            while len(self.models) > self.keep:
                self.models.pop(next(iter(self.models)))
        return job


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


class LocalExecutor:
    """Jobs one after another in this process, chunk by chunk."""

    name = "local"

    def __init__(self) -> None:
        self._cache = _Prepared()

    def execute(
        self, works: Iterable[Work], reporter: Reporter | None = None
    ) -> Iterator[ChunkResult]:
        reporter = reporter or QuietReporter()
        for work in works:
            key, spec = work.job.key, work.job.spec
            try:
                job = self._cache.get(key, spec)
            except KeyboardInterrupt:
                raise
            except Exception as exc:  # a job that cannot load fails alone; the batch goes on
                yield ChunkResult(key, None, error=f"could not prepare the job: {_one_line(exc)}")
                continue
            settings = job.settings()
            yield ChunkResult(key, None, settings=settings)  # marks the job running
            todo = sum(1 for i in range(len(job.labels)) if job.dataset_index(i) not in work.done)
            reporter.job_started(work.job, spec.budget * todo, "queries")
            done = set(work.done)
            spent = 0
            for k in range(len(job.chunks())):
                a, b = job.chunks()[k]
                if all(job.dataset_index(i) in done for i in range(a, b)):
                    continue

                def progress(q: int, base: int = spent, plan_job: PlanJob = work.job) -> None:
                    reporter.job_progress(plan_job, base + q)

                try:
                    out = run_job(job, done=done, only_chunks={k}, progress=progress)
                except JobInterrupted as exc:
                    by_user = isinstance(exc.__cause__, KeyboardInterrupt)
                    # Ctrl-C is no fault of the job: it stays "running", to be continued.
                    yield ChunkResult(
                        key, k, rows=list(exc.rows), error=None if by_user else str(exc)
                    )
                    if by_user:
                        raise KeyboardInterrupt from None
                    break
                done.update(r["index"] for r in out.rows)
                spent += spec.budget * sum(
                    1 for i in range(a, b) if job.dataset_index(i) not in work.done
                )
                reporter.job_progress(work.job, spent)
                yield ChunkResult(
                    key, k, rows=out.rows, scored_inputs=out.scored_inputs, seconds=out.seconds
                )


# -- Ray ---------------------------------------------------------------------------------

_WORKER_CACHE = _Prepared()


def _threads_as_assigned() -> None:
    """Give torch as many intra-op threads as the task holds CPUs.

    Ray exports OMP_NUM_THREADS for a task, but a worker that imported torch earlier keeps
    the thread count it started with; the count changes float rounding (and so, rarely, an
    attack's path), so it is set here for every task.
    """
    try:
        import ray

        cpus = ray.get_runtime_context().get_assigned_resources().get("CPU")
    except Exception:  # not inside a Ray worker: leave the process alone
        return
    if cpus:
        import torch

        torch.set_num_threads(max(1, int(cpus)))


def execute_chunk(key: str, spec: dict[str, Any], chunk: int, done: list[int]) -> dict[str, Any]:
    """Run one chunk of one job (in a Ray worker); returns rows and the job's settings.

    Plain data in and out, so the function can run on any machine with zoattack installed.
    A model failure is returned (with the rows finished before it), not raised: Ray would
    otherwise discard those rows.
    """
    _threads_as_assigned()
    resolved = AttackSpec(**spec)
    job = _WORKER_CACHE.get(key, resolved)
    t0 = time.perf_counter()
    try:
        out = run_job(job, done=done, only_chunks={chunk})
    except JobInterrupted as exc:
        return {
            "key": key,
            "chunk": chunk,
            "rows": list(exc.rows),
            "scored_inputs": 0,
            "seconds": time.perf_counter() - t0,
            "settings": job.settings(),
            "error": str(exc),
        }
    return {
        "key": key,
        "chunk": chunk,
        "rows": out.rows,
        "scored_inputs": out.scored_inputs,
        "seconds": out.seconds,
        "settings": job.settings(),
        "error": None,
    }


def import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ZOAttackError(
            f"--executor ray needs Ray, which is not installed; {RAY_HINT}"
        ) from None
    return ray


def task_options(spec: AttackSpec, max_retries: int) -> dict[str, Any]:
    """Ray resources of one chunk task: a CPU, plus a GPU when the job runs on CUDA."""
    gpu = 1 if spec.device.startswith("cuda") else 0
    return {"num_cpus": 1, "num_gpus": gpu, "max_retries": max_retries}


class RayExecutor:
    """Chunks as Ray tasks on a cluster (``address``) or a local Ray (``workers`` CPUs).

    Each task asks for one CPU, and one GPU when its job's device is ``cuda``. Ray retries a
    task whose worker died (``max_retries``); errors raised by the attack itself are not
    retried (they would fail again) and fail their job.
    """

    name = "ray"

    def __init__(
        self,
        *,
        address: str | None = None,
        workers: int | None = None,
        max_retries: int = 3,
        window: int | None = None,
        chunk_fn: Callable[..., dict[str, Any]] = execute_chunk,
    ) -> None:
        if workers is not None and workers < 1:
            raise ValueError(f"--workers must be >= 1, got {workers}")
        if max_retries < 0:
            raise ValueError(f"--max-retries must be >= 0, got {max_retries}")
        self.ray = import_ray()
        self.address = address
        self.workers = workers
        self.max_retries = max_retries
        self.window = window
        self.chunk_fn = chunk_fn
        self._started = False

    def _init(self) -> None:
        ray = self.ray
        if ray.is_initialized():
            return
        kwargs: dict[str, Any] = {
            "include_dashboard": False,
            "log_to_driver": False,
            "logging_level": "ERROR",
        }
        if self.address is not None:
            kwargs["address"] = self.address
        else:
            kwargs["num_cpus"] = self.workers
        try:
            ray.init(**kwargs)
        except Exception as exc:  # Ray raises several types for a cluster it cannot join
            if self.address is None:
                raise
            raise ZOAttackError(
                f"cannot reach the Ray cluster at {self.address}: "
                f"{_one_line(exc)}; check --address (ray://HOST:10001 or "
                "HOST:6379) or drop it to start a local Ray"
            ) from None
        self._started = True

    def shutdown(self) -> None:
        if self._started:
            self.ray.shutdown()
            self._started = False

    def execute(
        self, works: Iterable[Work], reporter: Reporter | None = None
    ) -> Iterator[ChunkResult]:
        reporter = reporter or QuietReporter()
        ray = self.ray
        self._init()
        remote = ray.remote(self.chunk_fn)
        works = list(works)
        tasks: list[tuple[Work, int, list[int]]] = []
        for w in works:
            s = w.job.spec
            bounds = chunk_bounds(s.images, s.chunk_size)
            idx = s.image_indices()  # data-set index of each image (--indices)
            for k in w.chunks():
                a, b = bounds[k]
                tasks.append((w, k, sorted(idx[i] for i in range(a, b) if idx[i] in w.done)))
        resources = ray.cluster_resources()
        if (
            any(task_options(w.job.spec, 0)["num_gpus"] for w in works)
            and resources.get("GPU", 0) < 1
        ):
            # Ray would queue such tasks forever, waiting for a GPU node.
            raise ZOAttackError(
                "--device cuda asks Ray for a GPU per task, but the Ray cluster "
                "has no GPU; use --device cpu or a cluster with GPU nodes"
            )
        cpus = int(resources.get("CPU", 1))
        window = self.window or max(2, 2 * cpus)  # bounded, so Ctrl-C leaves little queued
        stored = {w.job.key: len(w.done) for w in works}
        shown: str | None = None  # the job on the "current job" bar
        pending: dict[Any, tuple[Work, int]] = {}
        queue = iter(tasks)
        try:
            while True:
                while len(pending) < window:
                    item = next(queue, None)
                    if item is None:
                        break
                    w, k, done = item
                    ref = remote.options(**task_options(w.job.spec, self.max_retries)).remote(
                        w.job.key, w.job.spec.as_dict(), k, done
                    )
                    pending[ref] = (w, k)
                if not pending:
                    break
                ready, _ = ray.wait(list(pending), num_returns=1)
                for ref in ready:
                    w, k = pending.pop(ref)
                    key = w.job.key
                    if key != shown:  # tasks of several jobs finish interleaved
                        shown = key
                        reporter.job_started(w.job, w.job.spec.images, "images")
                    try:
                        res = ray.get(ref)
                    except ray.exceptions.RayError as exc:
                        cause = getattr(exc, "cause", None) or exc
                        yield ChunkResult(
                            key, k, error=f"chunk {k} failed on Ray: {_one_line(cause)}"
                        )
                        continue
                    stored[key] += len(res["rows"])
                    reporter.job_progress(w.job, stored[key])
                    yield ChunkResult(
                        key,
                        k,
                        rows=res["rows"],
                        scored_inputs=res["scored_inputs"],
                        seconds=res["seconds"],
                        settings=res["settings"],
                        error=res["error"],
                    )
        finally:
            for ref in pending:
                ray.cancel(ref, force=False)


def make_executor(
    name: str, *, address: str | None = None, workers: int | None = None, max_retries: int = 3
) -> LocalExecutor | RayExecutor:
    if name == "local":
        if address is not None:
            raise ValueError("--address is for --executor ray")
        return LocalExecutor()
    if name == "ray":
        return RayExecutor(address=address, workers=workers, max_retries=max_retries)
    raise ValueError(f"--executor must be {' or '.join(EXECUTORS)}, got {name!r}")
