"""Every operator setting has one default: the same in `continuum run --help`, OperatorSettings,
docs/contracts.md and the chart's values.yaml; flags win over CONTINUUM_* variables."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

pytest.importorskip("pydantic_settings")

from continuum import __version__
from continuum.cli import build_parser
from continuum.controller.settings import OperatorSettings, env_name, flag_name, from_args

ROOT = Path(__file__).resolve().parents[2]
FIELDS = OperatorSettings.model_fields
# settings the chart does not expose (set them with operator.extraEnv)
NOT_IN_CHART = {"worker_url_template"}  # in-cluster the default is right


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, int | float) and not isinstance(a, bool) and isinstance(b, int | float):
        return float(a) == float(b)
    return bool(a == b)


def _run_help() -> str:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    return " ".join(sub.choices["run"].format_help().split())  # type: ignore[attr-defined]


def _parse(text: str) -> Any:
    if text == "none":
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def test_cli_help_shows_every_setting_with_its_default_and_variable():
    text = _run_help()
    for name, info in FIELDS.items():
        if name == "namespaces":
            assert "--namespace" in text and "default: all" in text and f"[{env_name(name)}]" in text
            continue
        entry = re.escape(flag_name(name)) + " " + name.upper()
        match = re.search(entry + r" [^\[]*?\(default: (\S+)\) \[(\w+)\]", text)
        assert match is not None, f"{flag_name(name)} missing from `continuum run --help`"
        assert _same(_parse(match[1]), info.default), (name, match[1], info.default)
        assert match[2] == env_name(name)


def _contract_rows() -> dict[str, tuple[str, str]]:
    text = (ROOT / "docs" / "contracts.md").read_text()
    section = text[text.index("| flag of `continuum run` |") :]
    rows = {}
    for line in section.splitlines()[2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        flag = re.match(r"`(--[a-z-]+)`", cells[0])
        assert flag is not None, line
        rows[flag[1]] = (cells[1], cells[2])
    return rows


def test_contracts_table_lists_every_setting_with_the_same_default():
    rows = _contract_rows()
    for name, info in FIELDS.items():
        flag = "--namespace" if name == "namespaces" else flag_name(name)
        assert flag in rows, f"{flag} missing from docs/contracts.md"
        env, default = rows[flag]
        assert env.startswith(f"`{env_name(name)}`"), (flag, env)
        if info.default is None:
            assert default.split()[0] in ("all", "none"), (flag, default)
            continue
        shown = re.fullmatch(r"`([^`]+)`", default)
        assert shown is not None, (flag, default)
        assert _same(_parse(shown[1].replace("<version>", __version__)), info.default), (flag, default)


def test_chart_values_carry_the_same_defaults():
    values = yaml.safe_load((ROOT / "charts" / "continuum" / "values.yaml").read_text())
    chart = yaml.safe_load((ROOT / "charts" / "continuum" / "Chart.yaml").read_text())
    operator = values["operator"]
    checked = set()
    for name, info in FIELDS.items():
        camel = re.sub(r"_([a-z])", lambda m: m[1].upper(), name)
        if camel in operator:
            assert _same(operator[camel], info.default), (camel, operator[camel], info.default)
            checked.add(name)
    assert operator["watchNamespaces"] == [] and FIELDS["namespaces"].default is None
    assert values["peering"]["enabled"] is False and FIELDS["peering"].default is None
    image = values["worker"]["image"]
    assert f"{image['repository']}:{image['tag'] or chart['appVersion']}" == FIELDS["worker_image"].default
    checked |= {"namespaces", "peering", "worker_image"}
    assert set(FIELDS) - checked == NOT_IN_CHART


def test_flags_win_over_variables_and_variables_over_defaults(monkeypatch):
    monkeypatch.setenv("CONTINUUM_GRACE_SECONDS", "12")
    monkeypatch.setenv("CONTINUUM_NAMESPACES", "a, b,")
    monkeypatch.setenv("CONTINUUM_PEERING", "")  # empty: unset
    parser = build_parser()
    settings = from_args(parser.parse_args(["run", "--workers", "3", "--min-cost-gain", "0.25"]))
    assert (settings.grace_seconds, settings.workers, settings.min_cost_gain) == (12, 3, 0.25)
    assert settings.namespaces == ["a", "b"] and settings.peering is None
    assert settings.resync_seconds == FIELDS["resync_seconds"].default
    settings = from_args(parser.parse_args(["run", "--grace-seconds", "5", "-A"]))
    assert settings.grace_seconds == 5 and settings.namespaces is None
    assert from_args(parser.parse_args(["run", "-n", "x"])).namespaces == ["x"]


def test_invalid_settings_name_the_flag_and_variable(monkeypatch, capsys):
    from continuum.cli import main

    monkeypatch.setenv("CONTINUUM_RESYNC_SECONDS", "0")
    assert main(["run", "--workers", "0"]) == 1
    err = capsys.readouterr().err
    assert "--resync-seconds / CONTINUUM_RESYNC_SECONDS" in err
    assert "--workers / CONTINUUM_WORKERS" in err


def test_without_the_operator_extra_run_names_the_pip_command():
    """A base install (plan, crds) lacks pydantic-settings: `run --help` still works and `run` says
    what to install instead of a traceback."""
    import subprocess
    import sys

    prelude = "import sys; sys.modules['pydantic_settings'] = None\nfrom continuum.cli import main\n"
    helped = subprocess.run(
        [sys.executable, "-c", prelude + "sys.exit(main(['run', '--help']))"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert helped.returncode == 0 and "pip install 'continuum[operator]'" in helped.stdout
    ran = subprocess.run(
        [sys.executable, "-c", prelude + "sys.exit(main(['run']))"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert ran.returncode == 1 and "pip install 'continuum[operator]'" in ran.stderr
    assert "Traceback" not in ran.stderr
