"""Asynchronous environment stepping: :class:`ProcessEnvPool` spreads the slots of an
:class:`~metalab.rl.gym_collector.EnvPool` over worker processes (the option the collector
takes as ``pool=``; the default is the synchronous in-process pool).

Each worker holds a plain ``EnvPool`` over a contiguous block of the ``T x E`` slots and
answers ``assign`` / ``reset`` / ``step`` / ``close`` over a pipe; a step sends every worker
its rows at once and then gathers the answers, so the workers simulate in parallel. The
family is pickled to the workers (the task families are plain objects). Results do not
depend on the number of workers: the seeds and actions come from the collector, and each
environment's state lives in exactly one worker.
"""

from __future__ import annotations

import multiprocessing
import traceback
from collections.abc import Sequence
from typing import Any

import numpy as np

from metalab.rl.gym_collector import EnvPool
from metalab.validation import check_positive_int


def worker_loop(connection: Any, family: Any) -> None:
    pool = EnvPool(family)
    while True:
        command, payload = connection.recv()
        try:
            if command == "assign":
                result = pool.assign(payload, 1)
            elif command == "reset":
                result = pool.reset(payload)
            elif command == "step":
                result = pool.step(*payload)
            else:  # close
                pool.close()
                connection.send(("ok", None))
                return
            connection.send(("ok", result))
        except Exception:  # the parent raises it with the worker's traceback
            connection.send(("error", traceback.format_exc()))


class ProcessEnvPool:
    """``workers`` processes, each stepping its share of the environments."""

    def __init__(self, family: Any, workers: int = 2, context: str | None = None):
        self.family = family
        self.workers = check_positive_int("workers", workers)
        methods = multiprocessing.get_all_start_methods()
        if context is not None and context not in methods:
            raise ValueError(f"context must be one of {methods} or None, got {context!r}")
        ctx = multiprocessing.get_context(context)
        self.connections, self.processes = [], []
        for _ in range(self.workers):
            parent, child = ctx.Pipe()
            process = ctx.Process(target=worker_loop, args=(child, family), daemon=True)
            process.start()
            child.close()
            self.connections.append(parent)
            self.processes.append(process)
        self.blocks: list[range] = []

    def _call(self, messages: dict[int, tuple]) -> dict[int, Any]:
        for worker, message in messages.items():
            self.connections[worker].send(message)
        answers = {worker: self.connections[worker].recv() for worker in messages}
        for worker, (status, result) in answers.items():  # every answer read: pipes stay in step
            if status == "error":
                raise RuntimeError(f"environment worker {worker} failed:\n{result}")
        return {worker: result for worker, (_, result) in answers.items()}

    def assign(self, tasks: Sequence, episodes_per_task: int) -> tuple[np.ndarray, np.ndarray]:
        """Set ``T x E`` environments (task-major) to their tasks, in contiguous blocks."""
        count = len(tasks) * episodes_per_task
        slot_tasks = [tasks[slot // episodes_per_task] for slot in range(count)]
        edges = np.linspace(0, count, min(self.workers, count) + 1).round().astype(int)
        self.blocks = [range(a, b) for a, b in zip(edges[:-1], edges[1:], strict=True)]
        bounds = self._call({worker: ("assign", [slot_tasks[s] for s in block])
                             for worker, block in enumerate(self.blocks)})
        return bounds[0]

    def reset(self, seeds: Sequence[int]) -> np.ndarray:
        answers = self._call({worker: ("reset", [seeds[s] for s in block])
                              for worker, block in enumerate(self.blocks)})
        return np.concatenate([answers[worker] for worker in range(len(self.blocks))])

    def step(self, indices: Sequence[int], actions: np.ndarray,
             info_keys: Sequence[str] = ()) -> tuple:
        indices = [int(index) for index in indices]
        rows: dict[int, list[int]] = {}
        for row, index in enumerate(indices):
            worker = next(w for w, block in enumerate(self.blocks) if index in block)
            rows.setdefault(worker, []).append(row)
        answers = self._call({
            worker: ("step", ([indices[r] - self.blocks[worker].start for r in chosen],
                              actions[chosen], tuple(info_keys)))
            for worker, chosen in rows.items()})
        observations: list = [None] * len(indices)
        rewards, done = np.zeros(len(indices)), np.zeros(len(indices), bool)
        infos = {key: np.zeros(len(indices)) for key in info_keys}
        for worker, chosen in rows.items():
            stepped, reward, finished, info = answers[worker]
            for position, row in enumerate(chosen):
                observations[row] = stepped[position]
            rewards[chosen], done[chosen] = reward, finished
            for key in info_keys:
                infos[key][chosen] = info[key]
        return observations, rewards, done, infos

    def close(self) -> None:
        if not self.processes:
            return
        try:
            self._call({worker: ("close", None) for worker in range(self.workers)})
        finally:
            for process in self.processes:
                process.join(timeout=10)
                if process.is_alive():
                    process.terminate()
            self.connections, self.processes = [], []

    def __enter__(self) -> ProcessEnvPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
