"""Fill the ${MEDMCQA_...} placeholders of the cluster files from cluster/values.env.

    python cluster/render.py aws        # -> cluster/rendered/aws.yaml:            ray up cluster/rendered/aws.yaml
    python cluster/render.py kuberay    # -> cluster/rendered/kuberay/*.yaml:      kubectl apply -f ...

An exported MEDMCQA_* variable wins over its values.env line. Only ${MEDMCQA_...} is replaced, so the
shell variables in aws.yaml's commands ($HOME, $RAY_HEAD_IP) reach the nodes untouched. Exits non-zero,
naming each one, while a value the target uses is empty: nothing half-filled reaches `ray up` or kubectl.
Standard library only, so any python3 runs it.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
VALUES = HERE / "values.env"
OUT = HERE / "rendered"
PLACEHOLDER = re.compile(r"\$\{(MEDMCQA_[A-Z0-9_]+)\}")
TARGETS = {
    "aws": ["aws.yaml"],
    "kuberay": ["kuberay/namespace.yaml", "kuberay/pvc.yaml", "kuberay/mlflow.yaml",
                "kuberay/raycluster.yaml", "kuberay/rayjob.yaml"],
}


def read_values(path: Path = VALUES, environ: dict[str, str] | None = None) -> dict[str, str]:
    environ = os.environ if environ is None else environ
    values = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if not sep:
            raise ValueError(f"{path}: not KEY=VALUE: {line!r}")
        values[key.strip()] = value.strip().strip("'\"")
    for key in values:
        if key in environ:
            values[key] = environ[key]
    return values


def placeholders(text: str) -> set[str]:
    return set(PLACEHOLDER.findall(text))


def render(text: str, values: dict[str, str]) -> str:
    missing = sorted(name for name in placeholders(text) if not values.get(name))
    if missing:
        raise KeyError(f"set {', '.join(missing)} in {VALUES}")
    return PLACEHOLDER.sub(lambda m: values[m.group(1)], text)


def render_target(target: str, values: dict[str, str], out: Path = OUT) -> list[Path]:
    names = TARGETS[target]
    missing = sorted({n for name in names for n in placeholders((HERE / name).read_text()) if not values.get(n)})
    if missing:
        raise KeyError(f"{target} needs {', '.join(missing)}: set them in {VALUES}")
    written = []
    for name in names:
        dest = out / name
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text(render((HERE / name).read_text(), values))
        written.append(dest)
    return written


def main(argv: list[str]) -> int:
    if len(argv) != 1 or argv[0] not in TARGETS:
        print(__doc__, file=sys.stderr)
        return 2
    try:
        written = render_target(argv[0], read_values())
    except KeyError as e:
        print(f"render.py: {e.args[0]}", file=sys.stderr)
        return 1
    for path in written:
        print(path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
