"""docs/data.md documents every quarantine reason and flag the code can produce; the README starts with the two
commands, stays a front page, and its links lead somewhere."""

from medmcqa_ray.data.records import FLAGS, QUARANTINE_REASONS

from .conftest import REPO


def test_data_page_lists_every_reason_and_flag():
    page = (REPO / "docs" / "data.md").read_text()
    for code in [*QUARANTINE_REASONS, *FLAGS]:
        assert f"`{code}`" in page, code


def test_readme_opens_with_demo_and_test_and_is_a_front_page():
    lines = (REPO / "README.md").read_text().splitlines()
    head = "\n".join(lines[:8])
    assert "make demo" in head and "make test" in head
    assert len(lines) < 200, "the reference belongs in docs/"


def test_relative_links_in_the_readme_and_docs_lead_to_files():
    import re

    for page in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        for target in re.findall(r"\]\(([^)\s#]+)(?:#[^)]*)?\)", page.read_text()):
            if not re.match(r"[a-z]+:", target):
                assert (page.parent / target).exists(), f"{page.name} links to {target}, which does not exist"


def test_architecture_map_names_every_module_and_modules_stay_small():
    """docs/architecture.md is the newcomer's map: every package module is on it, and no module but the
    config schema grows past 300 lines (issue 19's rule; a longer one holds more than one concept)."""
    import re

    doc = (REPO / "docs" / "architecture.md").read_text()
    named = set(re.findall(r"[\w/]+\.py", doc))
    package = REPO / "medmcqa_ray"
    for path in sorted(package.rglob("*.py")):
        rel = path.relative_to(package).as_posix()
        if path.name == "__init__.py" or "/synthetic/" in f"/{rel}" or "/medmcqa_sample/" in f"/{rel}":
            continue
        # A row names a module by its path, or by its file name within its package's row.
        assert rel in named or path.name in named, f"docs/architecture.md does not name medmcqa_ray/{rel}"
        if rel != "config/schema.py":
            assert len(path.read_text().splitlines()) <= 300, f"medmcqa_ray/{rel} is over 300 lines"


def test_every_module_sits_in_a_layer_that_lint_imports_checks():
    """import-linter checks only the modules its contract names: a module left out of every layer could import
    anything. So every package module is in a layer of pyproject.toml's contract (itself or its package)."""
    import re
    import tomllib

    contracts = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    layers = next(c["layers"] for c in contracts if c["type"] == "layers")
    listed = {name for layer in layers for name in re.split(r"\s*[|:]\s*", layer.strip())}
    package = REPO / "medmcqa_ray"
    for path in sorted(package.rglob("*.py")):
        if path.name == "__init__.py" or "/synthetic/" in path.as_posix():
            continue
        module = "medmcqa_ray." + path.relative_to(package).with_suffix("").as_posix().replace("/", ".")
        assert any(module == name or module.startswith(name + ".") for name in listed), f"{module} is in no layer"
