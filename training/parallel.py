"""Independent fine-tunings in worker processes.

``ledrec evaluate`` fine-tunes several LED rows on the same split. One fine-tuning keeps
about one core busy (its GEMMs are short and between them the batch work is one
thread's numpy), so on ML-1M two of them side by side, each on one BLAS thread, take
about the time of the longer one instead of the sum, and the baselines are fitted in
the parent meanwhile. Each run seeds its own generator from its config, so the results
are those of running them one after the other.
"""

from __future__ import annotations

import multiprocessing
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import numpy.typing as npt

from ledrec.training.finetune import FinetuneConfig, FinetuneResult, finetune
from ledrec.training.split import Split

__all__ = ["FinetuneTask", "Finetunes", "default_workers", "finetune_many"]

Progress = Callable[[str], None]


@dataclass
class FinetuneTask:
    name: str  # for progress lines, e.g. "full css/train/svd"
    split: Split
    config: FinetuneConfig
    init: npt.NDArray[np.float32] | None


def default_workers(n_tasks: int) -> int:
    """One worker per core this process may use, at most one per task."""
    return max(1, min(n_tasks, len(os.sched_getaffinity(0))))


def _one_blas_thread() -> None:
    # two workers with a BLAS pool of two threads each would oversubscribe two cores
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=1)


def _say(name: str, line: str) -> None:
    print(f"  [{name}] {line}", flush=True)


def _run(task: FinetuneTask) -> FinetuneResult:
    return finetune(task.split, task.config, task.init, progress=partial(_say, task.name))


class Finetunes:
    """Fine-tunings started on entering (``workers`` > 1: in that many spawned processes,
    whose epoch lines are printed with the task's name), so that the caller can do other
    work meanwhile; ``results()`` waits for them, in the tasks' order. With ``workers``
    <= 1 or a single task, ``results()`` runs them here, one after the other (their
    progress through ``progress``). ``seconds``: from the start to the last result."""

    def __init__(
        self, tasks: Sequence[FinetuneTask], workers: int, progress: Progress | None = None
    ) -> None:
        self.tasks, self.progress, self.seconds = list(tasks), progress, 0.0
        self.workers = workers if len(self.tasks) > 1 else 1
        self._pool: ProcessPoolExecutor | None = None
        self._futures: dict[Future[FinetuneResult], int] = {}
        self._limits: Any = None

    def __enter__(self) -> Finetunes:
        self._start = time.perf_counter()
        if self.workers > 1:
            self._say(f"fine-tuning {len(self.tasks)} models in {self.workers} processes")
            context = multiprocessing.get_context("spawn")  # never fork a process with BLAS threads
            self._pool = ProcessPoolExecutor(
                self.workers, mp_context=context, initializer=_one_blas_thread
            )
            self._futures = {self._pool.submit(_run, t): i for i, t in enumerate(self.tasks)}
            # meanwhile this process shares the cores with the workers: one BLAS thread too
            # (EASE's inversions on two threads beside two workers took 51 s instead of 5)
            from threadpoolctl import threadpool_limits

            self._limits = threadpool_limits(limits=1)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._pool is not None:
            self._limits.restore_original_limits()
            self._pool.shutdown(wait=True, cancel_futures=True)

    def _say(self, line: str) -> None:
        if self.progress is not None:
            self.progress(line)

    def results(self) -> list[FinetuneResult]:
        out: dict[int, FinetuneResult] = {}
        if self._pool is None:
            for i, task in enumerate(self.tasks):
                self._say(f"[finetune {task.name}] start")
                out[i] = finetune(task.split, task.config, task.init, progress=self.progress)
                self._say(f"[finetune {task.name}] done in {out[i].seconds:.1f}s")
        else:
            for future in as_completed(self._futures):
                i = self._futures[future]
                out[i] = future.result()
                self._say(f"[finetune {self.tasks[i].name}] done in {out[i].seconds:.1f}s")
        self.seconds = time.perf_counter() - self._start
        return [out[i] for i in range(len(self.tasks))]


def finetune_many(
    tasks: Sequence[FinetuneTask], workers: int, progress: Progress | None = None
) -> list[FinetuneResult]:
    """Every task's ``finetune`` result, in the tasks' order (``Finetunes``)."""
    with Finetunes(tasks, workers, progress) as running:
        return running.results()
