"""The README's Python snippets run as written."""

import pathlib
import re

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def test_readme_snippets_run(capsys):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks
    for block in blocks:
        exec(compile(block, str(README), "exec"), {})
    assert "tensor(" in capsys.readouterr().out


def test_support_table_names_the_installed_transformers():
    """The support table's transformers row names the version these tests run against (5.x: its minor version,
    4.57: its patch release), so that "tested" stays true when the environment moves on."""
    import importlib.metadata

    import pytest

    try:
        version = importlib.metadata.version("transformers")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("transformers is not installed")
    row = next(line for line in README.read_text().splitlines() if line.startswith("| transformers |"))
    major, minor, *rest = version.split(".")
    tested = f"tested {major}.{minor}" if major != "4" else f"tested {version}"
    assert tested in row, f"{row!r} should name the installed transformers {version}"
