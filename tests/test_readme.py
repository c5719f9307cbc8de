"""The README stays true: its model table lists exactly the registered mixers, its Python
example runs, and its test command is the one CI runs."""

import re
from pathlib import Path

from seqjax import layers

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_models_table_lists_exactly_the_registered_mixers():
    table = README.split("<!-- models table")[1].split("\n\n")[0]
    names = re.findall(r"^\| `([a-z0-9_]+)` \|", table, flags=re.MULTILINE)
    assert names == sorted(names), "keep the table sorted by name"
    assert tuple(names) == layers.available()


def test_pretrained_table_lists_exactly_the_converters():
    from seqjax.interop import supported_model_types

    table = README.split("<!-- pretrained table")[1].split("\n\n")[0]
    names = re.findall(r"^\| `([a-z0-9_]+)` \|", table, flags=re.MULTILINE)
    assert sorted(names) == supported_model_types()


def test_python_example_runs():
    example = README.split("From Python:\n\n```python\n")[1].split("```")[0]
    namespace = {}
    exec(compile(example, "README.md", "exec"), namespace)
    assert namespace["tokens"].shape == (1, 12)
    assert len(namespace["state"]) == 2


def test_ci_runs_the_readme_test_command():
    command = README.split("<!-- ci: the test command")[1].split("```bash\n")[1].split("\n")[0]
    assert command == "python -m pip install -r requirements-dev.txt && python -m pytest -q -n 2"
    assert "<!-- ci: the test command" in (ROOT / ".ci" / "run").read_text()
