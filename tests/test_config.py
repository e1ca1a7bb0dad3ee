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
