"""The README documents every quarantine reason and flag the code can produce, and starts with the two commands."""

from medmcqa_ray.data.records import FLAGS, QUARANTINE_REASONS

from .conftest import REPO


def test_readme_lists_every_reason_and_flag():
    readme = (REPO / "README.md").read_text()
    for code in [*QUARANTINE_REASONS, *FLAGS]:
        assert f"`{code}`" in readme, code


def test_readme_opens_with_demo_and_test():
    head = "\n".join((REPO / "README.md").read_text().splitlines()[:8])
    assert "make demo" in head and "make test" in head
