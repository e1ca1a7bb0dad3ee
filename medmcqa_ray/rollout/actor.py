"""RolloutActor: a Ray actor around one engine. RolloutPool: spreads prompts over several actors,
remembers the current adapter, and re-sends it to an actor that Ray restarted.

The failure this guards against is the one users of RL toolkits report most: a rollout engine that
silently keeps generating with old weights. Every completion carries the policy version that made
it; the pool checks it and re-syncs and regenerates a chunk whose version is stale.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from typing import Any, Optional

import ray

from medmcqa_ray.config import ModelSection, RolloutSection, resolve_engine
from medmcqa_ray.errors import StageError
from medmcqa_ray.rollout import tensor_parallel
from medmcqa_ray.rollout.call_trace import CallTrace
from medmcqa_ray.rollout.engine_factory import make_engine
from medmcqa_ray.rollout.types import ActorHealth, AdapterUpdate, Completion, Sampling

log = logging.getLogger(__name__)


def _one_line(error: Exception, limit: int = 500) -> str:
    """An exception's message on one line, without pydantic's documentation links."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip() and "errors.pydantic.dev" not in line]
    return " ".join(lines)[:limit]


class EngineStartError(RuntimeError):
    """A rollout engine failed in its actor's constructor (vLLM absent, out of memory, a bad model)."""


@ray.remote
class RolloutActor:
    def __init__(self, model_cfg: ModelSection, rollout_cfg: RolloutSection):
        engine = resolve_engine(rollout_cfg)
        try:
            self.engine = make_engine(engine, model_cfg=model_cfg, rollout_cfg=rollout_cfg)
        except Exception as e:  # the pool's ready() reports this line as the cause
            raise EngineStartError(f"rollout.engine={engine}: the engine did not start: {type(e).__name__}: {_one_line(e)}") from e
        self.generated = 0

    def load_adapter(self, update: AdapterUpdate, weights: dict[str, Any]) -> int:
        """Returns this process's pid: a pool that sees it change knows the actor was restarted."""
        self.engine.load_adapter(update, weights)
        return os.getpid()

    def generate(self, prompts: list[list[int]], sampling: Sampling) -> list[list[Completion]]:
        out = self.engine.generate(prompts, sampling)
        self.generated += sum(len(c) for c in out)
        return out

    def health(self) -> ActorHealth:
        ctx = ray.get_runtime_context()
        return ActorHealth(**self.engine.health().model_dump(), pid=os.getpid(), node_id=ctx.get_node_id(),
                           actor_id=ctx.get_actor_id(), completions=self.generated)


@dataclass
class PendingGeneration:
    """A generate call on its way (RolloutPool.submit): the chunks sent to each actor and the policy version
    the pool held when it sent them. Stays in the learner's process."""

    sampling: Sampling
    version: int
    calls: list[tuple[int, list[list[int]], ray.ObjectRef]]


class RolloutPool:
    """`num_actors` RolloutActors created with `max_restarts`; calls are spread in contiguous chunks."""

    def __init__(self, model_cfg: ModelSection, rollout_cfg: RolloutSection,
                 actor_options: Optional[dict | list[dict]] = None, wait: bool = True):
        """`actor_options`: Ray options for every actor, or a list with one dict per actor (actors that share
        their learner's bundle each get their own GPU ids: training/placement.py). `wait=False` returns
        while the engines start; call `ready()` before the first use."""
        # "DEFAULT": a learner inside a Tune trial's placement group would otherwise capture its actors
        # into its own bundle, where they never fit.
        base = {"max_restarts": rollout_cfg.max_restarts, "num_cpus": rollout_cfg.num_cpus_per_actor,
                "num_gpus": rollout_cfg.num_gpus_per_actor, "scheduling_strategy": "DEFAULT"}
        each = actor_options if isinstance(actor_options, list) else [actor_options or {}] * rollout_cfg.num_actors
        options = [base | o for o in each]
        engines = [self._engine_options(rollout_cfg, o) for o in options]
        self.groups = [e["scheduling_strategy"].placement_group for e in engines if e]  # ours to remove
        # mypy ignores class decorators (python/mypy#3135): it sees the plain class, not Ray's ActorClass.
        self.actors = [RolloutActor.options(**(o | e)).remote(model_cfg, rollout_cfg)  # type: ignore[attr-defined]
                       for o, e in zip(options, engines)]
        self.update: Optional[AdapterUpdate] = None
        self.weights_ref: Optional[ray.ObjectRef] = None
        self.pids: list[Optional[int]] = [None] * len(self.actors)
        self.loading: list[tuple[int, ray.ObjectRef]] = []  # adapter loads sent without waiting (load_adapter)
        self.restarts = 0  # restarted actors noticed, each given the current adapter before it generated again
        self.engine = resolve_engine(rollout_cfg)
        self.colocated = rollout_cfg.colocate
        self.trace = CallTrace(rollout_cfg.call_trace, "learner")
        if wait:
            self.ready()

    def ready(self) -> None:
        """Wait until every actor's engine has started (vLLM: loaded and profiled its memory), so a learner
        sharing the GPU allocates after them and a failed start stops the stage before any training step."""
        for i, actor in enumerate(self.actors):
            try:
                self.pids[i] = ray.get(actor.health.remote()).pid
            except ray.exceptions.RayActorError as e:
                cause = next((line.strip() for line in reversed(str(e).splitlines()) if "EngineStartError" in line), None)
                self.shutdown()
                raise StageError(cause.split("EngineStartError: ", 1)[-1] if cause else
                                 f"rollout.engine={self.engine}: rollout actor {i} died while starting: "
                                 f"{str(e).strip().splitlines()[-1][:400]}") from None

    @staticmethod
    def _engine_options(rollout_cfg: RolloutSection, options: dict) -> dict:
        """A tensor-parallel engine's own placement group (rollout/tensor_parallel.py), near the node the
        strategy prefers (PACK: the learner's); its actor is restarted inside the same group."""
        if not tensor_parallel.uses_placement_group(rollout_cfg):
            return {}
        near = getattr(options["scheduling_strategy"], "node_id", None)
        return tensor_parallel.engine_options(rollout_cfg, near_node=near)

    @property
    def policy_version(self) -> int:
        return self.update.version if self.update else -1

    def load_adapter(self, update: AdapterUpdate, weights: dict[str, Any], wait: bool = True) -> None:
        """Send the adapter to every actor (one object-store copy, shared). Colocated engines stage it and
        wake nothing: the learner's training peak may still be cached here (release_learner_cache).
        `wait=False` (one-step-off): an actor still generating the next step's samples loads it after them;
        the next submit settles the loads, and an actor runs its calls in the order they were sent."""
        self.trace("sync", version=update.version)
        self._settle()
        self.update, self.weights_ref = update, ray.put(weights)
        self.loading = [(i, a.load_adapter.remote(update, self.weights_ref)) for i, a in enumerate(self.actors)]
        if wait:
            self._settle()

    def _settle(self) -> None:
        """Wait for the adapter loads sent; an actor that died with one in flight gets it again once restarted."""
        loading, self.loading = self.loading, []
        for i, ref in loading:
            try:
                self._seen(i, ray.get(ref))
            except ray.exceptions.RayActorError:  # it died with the call in flight: wait for its restart
                self._resync(i)

    def _seen(self, i: int, pid: int) -> None:
        """Note actor i's pid; a new one means Ray restarted it (and the call that returned it gave it
        the current adapter)."""
        if self.pids[i] is not None and self.pids[i] != pid:
            self.restarts += 1
            log.warning("rollout actor %d was restarted (pid %d -> %d); it now holds policy version %d",
                        i, self.pids[i], pid, self.policy_version)
        self.pids[i] = pid

    def _resync(self, i: int, timeout_s: float = 300.0) -> None:
        """Wait for a (restarted) actor to answer, then give it the current adapter."""
        actor = self.actors[i]
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                ray.get(actor.health.remote(), timeout=30)
                break
            except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        if self.update is not None:
            self._seen(i, ray.get(actor.load_adapter.remote(self.update, self.weights_ref)))

    @staticmethod
    def _fresh(out: list[list[Completion]], version: int) -> bool:
        """Made by the adapter the pool held when the call was sent, or a newer one (a re-synced actor)."""
        return all(c.policy_version >= version for group in out for c in group)

    def _collect(self, i: int, ref: ray.ObjectRef, prompts: list[list[int]], sampling: Sampling,
                 version: int) -> list[list[Completion]]:
        """The chunk's result; if the actor died, or answered with a stale policy (it was restarted
        between calls and lost the adapter), re-sync it and generate the chunk again."""
        for attempt in range(3):
            try:
                out = ray.get(ref)
                if self._fresh(out, version):
                    return out
            except ray.exceptions.RayActorError:
                if attempt == 2:
                    raise
            if attempt == 2:
                break
            self._resync(i)
            self.release_learner_cache()  # the same path as any generate: the re-synced engine wakes next
            ref = self.actors[i].generate.remote(prompts, sampling)
        raise RuntimeError("rollout actor stayed at a stale policy version after 3 re-syncs")

    def release_learner_cache(self) -> None:
        """The one place a colocated learner gives its allocator's cached blocks back to the GPU: before any
        generate, so every wake (each GRPO round, a sweep's validation, a restarted actor's regeneration)
        finds the memory the plan counts on (memory/plan.py: adapter_sync, generate)."""
        if not self.colocated:
            return
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        self.trace("empty_cache")

    def submit(self, prompts: list[list[int]], sampling: Sampling) -> PendingGeneration:
        """Send a generate call and return at once (one-step-off generates the next step's samples while
        the learner trains); `collect` gets the completions."""
        self.release_learner_cache()
        self._settle()
        size = -(-len(prompts) // len(self.actors)) if prompts else 0
        parts = [(i, prompts[i * size:(i + 1) * size]) for i in range(len(self.actors))]
        # Every chunk is sent before any is collected, so the actors generate in parallel.
        return PendingGeneration(sampling=sampling, version=self.policy_version,
                                 calls=[(i, p, self.actors[i].generate.remote(p, sampling)) for i, p in parts if p])

    def collect(self, pending: PendingGeneration) -> list[list[Completion]]:
        """Completions for each prompt, in order; prompt_index refers to the position in the submitted prompts."""
        results: list[list[Completion]] = []
        for i, part, ref in pending.calls:
            offset = len(results)
            for group in self._collect(i, ref, part, pending.sampling, pending.version):
                for c in group:
                    c.prompt_index += offset
                results.append(group)
        return results

    def generate(self, prompts: list[list[int]], sampling: Sampling) -> list[list[Completion]]:
        """Completions for each prompt (token ids), in order; prompt_index refers to the position in `prompts`."""
        return self.collect(self.submit(prompts, sampling))

    def health(self) -> list[ActorHealth]:
        return ray.get([a.health.remote() for a in self.actors])

    def shutdown(self) -> None:
        for a in self.actors:
            ray.kill(a, no_restart=True)
        for group in self.groups:
            ray.util.remove_placement_group(group)
