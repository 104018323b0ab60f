"""app.yaml: environment expansion, typed validation, and one clear message per problem."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from bot.config import ConfigError, load_settings
from bot.envsubst import UnsetVariable, expand
from tests.conftest import REPO

BASE = """
state:
  redis_url: redis://127.0.0.1:6379/0
  database_url: postgresql://127.0.0.1/x
"""


def write(tmp_path, text: str):
    path = tmp_path / "app.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def error_for(tmp_path, text: str, env=None) -> str:
    with pytest.raises(ConfigError) as caught:
        load_settings(write(tmp_path, text), env=env or {})
    return str(caught.value)


@pytest.mark.parametrize(
    "text, env, expected",
    [
        ("${A}", {"A": "x"}, "x"),
        ("${A:-d}", {}, "d"),
        ("${A:-d}", {"A": ""}, "d"),
        ("${A:-${B:-deep}}", {}, "deep"),
        ("${A:-${B}}", {"B": "b"}, "b"),
        ("$$5 and ${A}", {"A": "a"}, "$5 and a"),
        ("http://${H:-localhost}:${P:-80}/x", {"P": "8080"}, "http://localhost:8080/x"),
    ],
)
def test_expansion(text, env, expected):
    assert expand(text, env) == expected


def test_unset_variable_without_default_is_named():
    with pytest.raises(UnsetVariable, match="NOPE"):
        expand("${NOPE}", {})


def test_the_repos_own_app_yaml_is_a_working_default():
    settings = load_settings(REPO / "app.yaml", env={})
    assert settings.state.redis_url == "redis://127.0.0.1:6379/0"
    assert settings.queue(None).name == "jobs"
    assert settings.queue(None).dead == "jobs:dead"
    assert settings.queue("step").ready == "step.ready"
    assert settings.slack.incident_channel == "#incidents"
    assert settings.guard.confirm_ttl == 300


def test_seed_variables_flow_into_settings():
    env = {"REDIS_URL": "redis://cache:6379/2", "JOB_DEAD_LETTER_QUEUE": "jobs:graveyard", "DEAD_LETTER_KEEP": "50",
           "DATABASE_URL": "postgresql://db/app", "OPSBOT_ONCALL_USERS": "U1, U2", "RUN_MIGRATIONS": "true"}
    settings = load_settings(REPO / "app.yaml", env=env)
    assert settings.state.redis_url == "redis://cache:6379/2"
    assert settings.queue("jobs").dead == "jobs:graveyard"
    assert settings.queue("jobs").keep == 50
    assert settings.roles["oncall"].users == ["U1", "U2"]
    assert settings.state.run_migrations is True


def test_unknown_key_names_file_line_and_key(tmp_path):
    message = error_for(tmp_path, BASE + "slack:\n  bot_tokn: ${X:-}\n")
    assert message.endswith("app.yaml:6: slack.bot_tokn: unknown setting (check the spelling)")


def test_wrong_type_names_the_key(tmp_path):
    message = error_for(tmp_path, BASE + "queues:\n  - name: jobs\n    keep: lots\n")
    assert "app.yaml:7: queues[0].keep:" in message and "integer" in message


def test_bad_duration_names_the_key(tmp_path):
    message = error_for(tmp_path, BASE + "guard:\n  confirm_ttl: soon\n")
    assert "app.yaml:6: guard.confirm_ttl: 'soon' is not a duration" in message


def test_unknown_redis_reference_is_caught(tmp_path):
    message = error_for(tmp_path, BASE + "queues:\n  - name: jobs\n    redis: cache\n")
    assert "app.yaml:7: queues[0].redis: unknown redis connection 'cache'" in message


def test_missing_section_is_reported(tmp_path):
    assert "state: required setting is missing" in error_for(tmp_path, "slack: {}\n")


def test_literal_secret_is_refused(tmp_path):
    message = error_for(tmp_path, BASE + "slack:\n  bot_token: xoxb-123\n")
    assert "app.yaml:6: slack.bot_token: secrets must come from the environment" in message


def test_credentials_inside_a_url_are_refused(tmp_path):
    message = error_for(tmp_path, "state:\n  redis_url: redis://:hunter2@cache:6379\n  database_url: x\n")
    assert "app.yaml:2: state.redis_url: credentials inside a URL must come from the environment" in message
    assert "hunter2" not in message


def test_credentials_from_the_environment_are_fine(tmp_path):
    path = write(tmp_path, "state:\n  redis_url: redis://:${REDIS_PASSWORD}@cache:6379\n  database_url: x\n")
    assert load_settings(path, env={"REDIS_PASSWORD": "pw"}).state.redis_url == "redis://:pw@cache:6379"


def test_unset_variable_names_key_and_variable(tmp_path):
    message = error_for(tmp_path, BASE + "slack:\n  signing_secret: ${SLACK_SIGNING_SECRET}\n")
    assert "app.yaml:6: slack.signing_secret: environment variable SLACK_SIGNING_SECRET is not set" in message


def test_broken_yaml_names_the_line(tmp_path):
    assert "app.yaml:3: not valid YAML" in error_for(tmp_path, "state:\n  redis_url: [\n  x: }\n")


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot read configuration"):
        load_settings(tmp_path / "nope.yaml")


def test_cli_reports_invalid_config_with_exit_2_and_no_traceback(tmp_path):
    path = write(tmp_path, BASE + "queues:\n  - name: jobs\n    keep: -5\n")
    proc = subprocess.run([sys.executable, "-m", "bot.cli", "--config", str(path), "run", "help"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "queues[0].keep" in proc.stderr and "Traceback" not in proc.stderr
