"""The serving-container command README.md documents is a valid `mlflow models build-docker`
command line for the installed MLflow (checked by MLflow's own click parser; no Docker needed).
The build context it produces is checked in test_registry_serving.py
(test_champion_docker_build_context_is_generated)."""

import re
import shlex
from pathlib import Path

from mlflow.models.cli import commands

README = Path(__file__).resolve().parents[1] / "README.md"


def _documented(command: str) -> list[str]:
    lines = [
        line
        for line in README.read_text().splitlines()
        if line.startswith(f"mlflow models {command} ")
    ]
    assert lines, f"README.md documents no `mlflow models {command}` line"
    return [shlex.split(re.sub(r"\s+#.*$", "", line))[3:] for line in lines][0]


def test_readme_build_docker_command_parses():
    args = _documented("build-docker")
    build = commands.get_command(None, "build-docker")
    ctx = build.make_context("build-docker", list(args))  # raises on an unknown option
    assert ctx.params["model_uri"] == "models:/gruflow-lm@champion"
    assert ctx.params["env_manager"] == "local"
    assert ctx.params["name"]
