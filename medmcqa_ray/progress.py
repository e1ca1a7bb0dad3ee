"""One progress bar per long stage, drawn by the command that runs it.

The steps happen in Ray Train workers, whose output stays in Ray's logs; rank 0 tells a small actor
each step it finishes (`StepCounterCallback`), and the driver polls that actor into a tqdm
bar (steps, rate, ETA). A restarted or resumed run reports from its checkpoint's step on.
"""

from __future__ import annotations

import threading
from typing import Any, Optional

import ray
from transformers import TrainerCallback

from medmcqa_ray.console import bar


@ray.remote(num_cpus=0, max_restarts=-1)
class StepCounter:
    def __init__(self) -> None:
        self.step = 0

    def update(self, step: int) -> None:
        self.step = max(self.step, step)

    def get(self) -> int:
        return self.step


class StepCounterCallback(TrainerCallback):
    """Worker side: the global step after each optimiser step (rank 0 only, so one report per step)."""

    def __init__(self, counter: Any):
        self.counter = counter

    def on_step_end(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self.counter.update.remote(state.global_step)


class StepProgress:
    """Driver side: built before the trainer (its `counter` goes to the workers), drawn while the trainer
    fits (`with progress: trainer.fit()`). total=None draws nothing (a sweep trial, whose driver is Tune's)."""

    def __init__(self, desc: str, total: Optional[int], poll_s: float = 1.0):
        self.desc, self.total, self.poll_s = desc, total, poll_s
        # "DEFAULT": never captured into a caller's placement group (a Tune trial's), where it may not fit.
        # mypy ignores class decorators (python/mypy#3135): it sees the plain class, not Ray's ActorClass.
        self.counter = StepCounter.options(scheduling_strategy="DEFAULT").remote() if total else None  # type: ignore[attr-defined]
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def __enter__(self) -> "StepProgress":
        if self.counter is not None:
            self._thread = threading.Thread(target=self._draw, daemon=True)
            self._thread.start()
        return self

    def _draw(self) -> None:
        counter, total = self.counter, self.total
        if counter is None or not total:  # __enter__ starts no thread then: a counter comes with a total
            return
        with bar(self.desc, total, "step") as b:
            while True:
                stopping = self._stop.wait(self.poll_s)
                step: int
                try:
                    step = ray.get(counter.get.remote(), timeout=10)
                except Exception:  # noqa: BLE001 - a bar must never fail the run it draws
                    step = b.n
                b.update(min(step, total) - b.n)
                if stopping:
                    return

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=15)
        if self.counter is not None:
            ray.kill(self.counter)
