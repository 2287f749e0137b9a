"""The README's Python example runs as written."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[3] / "README.md"


def test_readme_python_example_runs(capsys):
    block = re.search(r"```python\n(.*?)```", README.read_text(), re.S)
    assert block, "README.md has no python example"
    exec(compile(block.group(1), "README.md", "exec"), {})
    assert 'no publication named "nope"' in capsys.readouterr().out
