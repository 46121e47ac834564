"""The docs a newcomer follows: the generated reference, the commands they quote, the edge deployment."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from curbwatch.cli import app
from curbwatch.edge.config import load_edge_config
from curbwatch.schema.export import reference_pages, render_reference
from curbwatch.schema.reference import undescribed_fields
from curbwatch.server.config import CaseServerConfig
from tests.conftest import REPO_ROOT

runner = CliRunner()
DOC_FILES = sorted(
    [REPO_ROOT / "README.md", REPO_ROOT / "models" / "README.md", *(REPO_ROOT / "docs").rglob("*.md")]
)
UNIT = REPO_ROOT / "deploy" / "systemd" / "curbwatch-edge.service"
EDGE_EXAMPLE = REPO_ROOT / "deploy" / "edge.example.yaml"
EDGE_ENV_EXAMPLE = REPO_ROOT / "deploy" / "systemd" / "edge.env.example"
SHELL_OPERATORS = {"&&", "||", "|", ";", "&"}


# --- the generated configuration reference ---------------------------------------------------


def test_committed_reference_pages_are_current_and_complete() -> None:
    rendered = render_reference()
    assert set(rendered) == {"edge.md", "zones.md", "case-server.md", "server-settings.md"}
    committed = {path.name for path in (REPO_ROOT / "docs" / "config").glob("*.md")}
    assert committed == set(rendered), "docs/config holds pages no model renders"
    for name, text in rendered.items():
        path = REPO_ROOT / "docs" / "config" / name
        assert path.read_text(encoding="utf-8") == text, f"{name} is stale: run `make schemas`"


def test_schema_export_check_fails_on_a_stale_reference_page(tmp_path: Path) -> None:
    dirs = ["--out-dir", str(tmp_path / "schemas"), "--reference-dir", str(tmp_path / "config")]
    assert runner.invoke(app, ["schema", "export", *dirs]).exit_code == 0
    assert runner.invoke(app, ["schema", "export", "--check", *dirs]).exit_code == 0
    page = tmp_path / "config" / "edge.md"
    page.write_text(page.read_text(encoding="utf-8").replace("| `device_id` |", "| `device` |"))
    result = runner.invoke(app, ["schema", "export", "--check", *dirs])
    assert result.exit_code == 1 and str(page) in result.stderr
    page.unlink()
    result = runner.invoke(app, ["schema", "export", "--check", *dirs])
    assert result.exit_code == 1 and str(page) in result.stderr


def test_every_configuration_field_has_a_description() -> None:
    for page in reference_pages():
        assert undescribed_fields(page.model) == [], page.file_name


def _table(name: str) -> dict[str, list[str]]:
    """First cell (path or variable, without backticks) -> the row's cells."""
    rows: dict[str, list[str]] = {}
    for line in render_reference()[name].splitlines():
        cells = [cell.strip() for cell in re.split(r"(?<!\\)\|", line)[1:-1]]
        if cells and cells[0].startswith("`"):
            rows[cells[0].strip("`")] = cells
    return rows


def _leaf_values(data: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted path -> value of every non-object value in a model dump (lists and maps stay whole)."""
    if not isinstance(data, dict) or prefix.endswith(">"):
        return {prefix: data}
    found: dict[str, Any] = {}
    for key, value in data.items():
        path = f"{prefix}.{key}" if prefix else key
        found.update(_leaf_values(value, path) if isinstance(value, dict) else {path: value})
    return found


def test_reference_defaults_are_the_values_a_default_config_gets() -> None:
    # Nested defaults come from the parent's default instance (the calendar's time zone, the
    # default time limit), not from the nested class's own field defaults.
    rows = _table("case-server.md")
    defaults = _leaf_values(CaseServerConfig().model_dump(mode="json"))
    checked = 0
    for path, value in defaults.items():
        if path in rows and not isinstance(value, dict):
            assert rows[path][2] == f"`{json.dumps(value, ensure_ascii=False)}`", path
            checked += 1
    assert checked >= 15
    assert rows["calendar.timezone"][2] == '`"Asia/Shanghai"`'
    assert rows["open311.upstreams.<key>.base_url"][2] == "required"


def test_reference_shows_constraints_types_and_environment_names() -> None:
    edge = _table("edge.md")
    assert edge["detector.score_threshold"][1:4] == ["number", "`0.3`", "≥ 0.0; ≤ 1.0"]
    assert edge["delivery.mqtt.device_key"][1:3] == ["secret string", "required"]
    assert edge["cameras[].source.drop_policy"][1] == "one of: `drop_oldest`, `drop_newest`"
    assert "each value ≥ 0.0" in edge["detector.class_thresholds"][3]
    zones = _table("zones.md")
    assert zones["zones[kind=no_parking].min_dwell_s"][2] == "`180.0`"
    assert zones["zones[kind=bin_site].min_dwell_s"][2] == "`300.0`"
    assert "zones[kind=privacy_mask].schedule" in zones
    settings = _table("server-settings.md")
    assert settings["CURBWATCH_SHARE_GROUP"][2] == '`"curbwatch-ingest"`'
    assert settings["CURBWATCH_MQTT_PORT"][3] == "≥ 1; ≤ 65535"


# --- every curbwatch command the docs quote exists ---------------------------------------------


def _bash_blocks(path: Path) -> list[str]:
    return re.findall(r"^```bash\n(.*?)^```", path.read_text(encoding="utf-8"), flags=re.S | re.M)


def _simple_commands(line: str) -> list[list[str]]:
    """The simple commands of one shell line: comment dropped, split at &&, ||, |, ; and &."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    lexer.commenters = "#"
    commands: list[list[str]] = [[]]
    for token in lexer:
        if token in SHELL_OPERATORS:
            commands.append([])
        else:
            commands[-1].append(token)
    return [command for command in commands if command]


def _lines(script: str) -> list[str]:
    """Logical lines: backslash continuations joined."""
    return [line for line in script.replace("\\\n", " ").splitlines() if line.strip()]


def _curbwatch_invocations(script: str) -> list[list[str]]:
    """Arguments of every `curbwatch` call (any path to the executable, after VAR=value prefixes)."""
    found = []
    for line in _lines(script):
        for command in _simple_commands(line):
            for index, token in enumerate(command):
                if re.match(r"[A-Za-z_][A-Za-z0-9_]*=", token):  # VAR=value before the program
                    continue
                if Path(token).name == "curbwatch":
                    found.append(command[index + 1 :])
                break
    return found


def _is_group(command: Any) -> bool:
    return hasattr(command, "commands")


def _check_invocation(args: list[str], where: str) -> tuple[str, ...]:
    """Walk the command tree along ``args``; every option used must exist on the way."""
    command: Any = typer.main.get_command(app)
    path: list[str] = []
    options = {"--help"} | {opt for param in command.params for opt in (*param.opts, *param.secondary_opts)}
    for token in args:
        if _is_group(command) and token in command.commands:
            command = command.commands[token]
            path.append(token)
            options |= {opt for param in command.params for opt in (*param.opts, *param.secondary_opts)}
        elif token.startswith("-") and token != "-":  # a lone "-" is stdin or stdout
            assert token.split("=", 1)[0] in options, f"{where}: `curbwatch {' '.join(args)}`: no {token}"
        elif _is_group(command):
            pytest.fail(f"{where}: `curbwatch {' '.join(args)}`: no command {token!r} in {path}")
    named = not _is_group(command) or "--help" in args
    assert named, f"{where}: `curbwatch {' '.join(args)}` names no command"
    return tuple(path)


def test_every_curbwatch_command_in_the_docs_exists() -> None:
    paths: set[tuple[str, ...]] = set()
    for doc in DOC_FILES:
        for block in _bash_blocks(doc):
            for args in _curbwatch_invocations(block):
                paths.add(_check_invocation(args, str(doc.relative_to(REPO_ROOT))))
    assert {("edge", "run"), ("devices", "add"), ("train", "export"), ("server", "ingest")} <= paths
    for path in sorted(paths):
        result = runner.invoke(app, [*path, "--help"])
        assert result.exit_code == 0 and "Usage" in result.stdout, path


def test_command_check_catches_unknown_commands_and_options() -> None:
    script = "CURBWATCH_X=1 .venv/bin/curbwatch edge run --source a.mp4 && curbwatch zones check z.yaml # c\n"
    assert _curbwatch_invocations(script) == [
        ["edge", "run", "--source", "a.mp4"],
        ["zones", "check", "z.yaml"],
    ]
    assert _curbwatch_invocations("curbwatch train run \\\n    --epochs 3\n") == [
        ["train", "run", "--epochs", "3"]
    ]
    assert _curbwatch_invocations("A=sqlite:///x/curbwatch curbwatch users list\nmake curbwatch\n") == [
        ["users", "list"]
    ]
    with pytest.raises(AssertionError, match="no --frobnicate"):
        _check_invocation(["edge", "run", "--frobnicate"], "doc")
    with pytest.raises(pytest.fail.Exception, match="no command 'launch'"):
        _check_invocation(["edge", "launch"], "doc")
    with pytest.raises(AssertionError, match="names no command"):
        _check_invocation(["edge"], "doc")


def _slug(heading: str) -> str:
    """GitHub's anchor of a Markdown heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_relative_links_in_the_docs_resolve() -> None:
    checked = 0
    for doc in DOC_FILES:
        for target in re.findall(r"\]\(([^)\s]+)\)", doc.read_text(encoding="utf-8")):
            if re.match(r"[a-z]+:", target):
                continue
            file_part, _, anchor = target.partition("#")
            path = (doc.parent / file_part) if file_part else doc
            assert path.exists(), f"{doc.relative_to(REPO_ROOT)}: broken link {target}"
            if anchor and path.suffix == ".md":
                headings = re.findall(r"^#+ (.+)$", path.read_text(encoding="utf-8"), flags=re.M)
                assert anchor in {_slug(h) for h in headings}, f"{doc.relative_to(REPO_ROOT)}: no #{anchor}"
            checked += 1
    assert checked > 50


# --- the edge deployment: systemd unit, example config, install without torch -----------------


def _unit_values(key: str) -> list[str]:
    prefix = f"{key}="
    return [
        line.removeprefix(prefix).strip()
        for line in UNIT.read_text(encoding="utf-8").splitlines()
        if line.startswith(prefix)
    ]


def test_systemd_unit_runs_existing_commands_on_the_rendered_config() -> None:
    runtime = Path("/run") / _unit_values("RuntimeDirectory")[0]
    curbwatch_calls = [
        shlex.split(line)
        for line in _unit_values("ExecStartPre") + _unit_values("ExecStart")
        if "curbwatch " in line
    ]
    assert [call[1:3] for call in curbwatch_calls] == [["edge", "check-config"], ["edge", "run"]]
    for call in curbwatch_calls:
        assert Path(call[0]).name == "curbwatch" and Path(call[0]).is_absolute()
        assert Path(call[-1]) == runtime / "edge.yaml"
        _check_invocation(call[1:-1], UNIT.name)
        assert runner.invoke(app, [*call[1:3], "--help"]).exit_code == 0
    render = next(line for line in _unit_values("ExecStartPre") if "envsubst" in line)
    assert f"> {runtime / 'edge.yaml'}" in render and "/etc/curbwatch/edge.yaml" in render


def test_systemd_unit_passes_systemd_analyze() -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    done = subprocess.run([analyze, "verify", str(UNIT)], capture_output=True, text=True, timeout=60)
    # The only complaint allowed is the one this machine cannot avoid: no curbwatch under /opt.
    complaints = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    assert all("/opt/curbwatch/venv/bin/curbwatch is not executable" in line for line in complaints), (
        complaints
    )


def _env_example_names() -> list[str]:
    lines = EDGE_ENV_EXAMPLE.read_text(encoding="utf-8").splitlines()
    return [line.split("=", 1)[0] for line in lines if line and not line.startswith("#")]


def test_example_edge_config_renders_from_the_environment_and_loads(tmp_path: Path) -> None:
    envsubst = shutil.which("envsubst")
    if envsubst is None:
        pytest.skip("envsubst (gettext-base) is not installed")
    template = EDGE_EXAMPLE.read_text(encoding="utf-8")
    names = _env_example_names()
    assert set(re.findall(r"\$\{([A-Z0-9_]+)\}", template)) == set(names)
    values = {
        "EDGE_DEVICE_KEY": "5a" * 32,
        "EDGE_MQTT_PASSWORD": "broker-secret",
        "CAMERA_USER": "viewer",
        "CAMERA_PASSWORD": "s3cret",
    }
    assert set(values) == set(names)
    rendered = subprocess.run(
        [envsubst], input=template, env=values, capture_output=True, text=True, check=True
    ).stdout
    path = tmp_path / "edge.yaml"
    path.write_text(rendered, encoding="utf-8")
    config = load_edge_config(path)

    assert config.delivery is not None
    assert config.delivery.mqtt.key_bytes() == bytes.fromhex(values["EDGE_DEVICE_KEY"])
    assert config.delivery.mqtt.password is not None
    assert config.delivery.mqtt.password.get_secret_value() == "broker-secret"
    assert [camera.source.url.split("@")[0] for camera in config.cameras] == ["rtsp://viewer:s3cret"] * 2
    state_dir = Path("/var/lib") / _unit_values("StateDirectory")[0]
    # The rendered file lives in /run, so every path must be absolute and writable ones in the state folder.
    assert config.delivery.outbox_path.parent == state_dir and config.evidence.root.is_relative_to(state_dir)
    assert all(camera.zones == Path(f"/etc/curbwatch/zones/{camera.id}.yaml") for camera in config.cameras)
    assert config.detector.model_path.is_absolute()
    assert not re.search(r"\$\{[A-Z0-9_]+\}", rendered)


def test_edge_commands_need_neither_the_server_nor_the_train_extra() -> None:
    # What `pip install '.[edge]'` leaves out must not be imported by the edge's commands or runtime.
    script = """
import importlib.abc, sys
LEFT_OUT = {"torch", "torchvision", "ultralytics", "onnx", "sklearn", "sqlalchemy", "alembic", "psycopg",
            "fastapi", "starlette", "uvicorn", "pydantic_settings", "amqtt", "jinja2", "argon2",
            "itsdangerous", "multipart", "httpx"}
class LeftOut(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in LEFT_OUT:
            raise ImportError(f"{name} is not installed with the edge extra")
sys.meta_path.insert(0, LeftOut())
import curbwatch.edge.app, curbwatch.edge.runner, curbwatch.edge.uplink, curbwatch.edge.rollout
from typer.testing import CliRunner
from curbwatch.cli import app
for command in (["edge", "run", "--help"], ["edge", "check-config", "--help"], ["zones", "check", "--help"]):
    result = CliRunner().invoke(app, command)
    assert result.exit_code == 0, (command, result.output, result.exception)
print("edge-only ok")
"""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=dict(os.environ), timeout=120
    )
    assert done.returncode == 0 and "edge-only ok" in done.stdout, done.stderr


def test_rollout_resume_timer_runs_an_existing_command_on_a_schedule() -> None:
    systemd = REPO_ROOT / "deploy" / "systemd"
    service = (systemd / "curbwatch-rollout-resume.service").read_text(encoding="utf-8")
    timer = (systemd / "curbwatch-rollout-resume.timer").read_text(encoding="utf-8")
    (exec_start,) = [
        line.removeprefix("ExecStart=") for line in service.splitlines() if line.startswith("ExecStart=")
    ]
    call = shlex.split(exec_start)
    assert Path(call[0]).is_absolute() and Path(call[0]).name == "curbwatch"
    assert _check_invocation(call[1:], "curbwatch-rollout-resume.service") == ("models", "rollout-resume")
    assert "--all" in call and "Type=oneshot" in service
    assert "OnUnitActiveSec=" in timer and "WantedBy=timers.target" in timer
