"""What a colocated run's call trace (rollout.call_trace) must show, on CPU as on a GPU: each engine starts
and goes to sleep; an adapter update is only staged (nothing wakes); every generate wakes the weights
alone, loads the staged adapter if there is one, wakes the KV cache, generates and sleeps; and before each
wake the learner has emptied its allocator cache since that engine last slept."""

from __future__ import annotations

import re
from pathlib import Path

from medmcqa_ray.rollout.call_trace import TracedCall, read_trace

CODES = {("sleep", None): "S", ("wake", "weights"): "W", ("wake", "kv_cache"): "K", ("load_adapter", None): "L",
         ("generate", None): "G", ("stage", None): "T"}
ENGINE_ORDER = re.compile(r"S(T*WL?KGS)*T*")


def engine_codes(calls: list[TracedCall]) -> str:
    return "".join(CODES[(c.call, getattr(c, "tag", None))] for c in calls)


def assert_colocated_order(path: Path) -> dict[int, list[TracedCall]]:
    """Checks the trace; returns each engine process's calls (by pid, in order)."""
    calls = read_trace(path)
    learner = [c for c in calls if c.who == "learner"]
    engines: dict[int, list[TracedCall]] = {}
    for c in calls:
        if c.who == "engine":
            engines.setdefault(c.pid, []).append(c)
    assert engines, "no engine calls traced"
    for pid, mine in engines.items():
        codes = engine_codes(mine)
        assert ENGINE_ORDER.fullmatch(codes), f"engine {pid}: {codes}"
        staged = None
        for i, c in enumerate(mine):
            if c.call == "stage":
                staged = c.version
            elif c.call == "load_adapter":  # the adapter loaded is the last one staged
                assert c.version == staged, (pid, i, c, staged)
            elif c.call == "generate" and staged is not None:
                assert c.policy_version == staged, (pid, i, c)
            elif c.call == "wake" and c.tag == "weights":
                slept = max(x.time for x in mine[:i] if x.call == "sleep")
                assert any(slept <= e.time <= c.time for e in learner if e.call == "empty_cache"), \
                    f"engine {pid} woke at call {i} with no empty_cache from the learner since it slept"
    return engines
