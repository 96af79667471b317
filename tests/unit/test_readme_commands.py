"""README.md's "Two commands" are what CI runs: .ci/run runs each of them verbatim."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _readme_commands() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    section = re.search(r"^## Two commands\n(.*?)(?=^## )", readme, re.S | re.M)
    assert section, "README.md has no '## Two commands' section"
    return [line[4:] for line in section.group(1).splitlines()
            if line.startswith("    ") and line.strip().startswith("pip install")]


def test_readme_has_the_demo_and_the_test_command():
    commands = _readme_commands()
    assert len(commands) == 2, commands
    assert commands[1] == 'pip install -e ".[test]" && python -m pytest'


def test_ci_runs_each_readme_command_verbatim():
    ci = (ROOT / ".ci" / "run").read_text()
    for command in _readme_commands():
        assert command in ci.splitlines() or any(line.startswith(command + " ") for line in ci.splitlines()), (
            f".ci/run does not run the README command {command!r} as written")
