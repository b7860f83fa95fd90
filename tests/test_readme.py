"""The README's commands stay true: CI runs exactly the README's test command."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def bash_blocks(text):
    return re.findall(r"```bash\n(.*?)```", text, flags=re.S)


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    blocks = [b.strip() for b in bash_blocks(readme)]
    test_command = next(b for b in blocks if "pytest" in b)
    ci_lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert test_command in ci_lines


def test_readme_main_command_runs_the_default_study():
    readme = (ROOT / "README.md").read_text()
    main_command = bash_blocks(readme)[0].strip()
    assert main_command.endswith("greedyprune study pretraining")
    assert "pip install torch==2.13.0" in main_command


def test_readme_python_example_runs():
    readme = (ROOT / "README.md").read_text()
    code = re.findall(r"```python\n(.*?)```", readme, flags=re.S)[0]
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    small, selection, pruned = namespace["small"], namespace["selection"], namespace["pruned"]
    assert small is pruned.model and selection is pruned.selection
    assert small.hidden == int(selection.selected.numel()) == len(pruned.kept["hidden"]) <= 50
