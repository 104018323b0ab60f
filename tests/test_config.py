"""app.yaml: environment expansion, typed validation, and one clear message per problem."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from bot.config.settings import ConfigError, load_settings
from bot.config.envsubst import UnsetVariable, expand
from tests.conftest import REPO
from commands.dlq.settings import find_queue

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
    assert find_queue(settings, None).name == "jobs"
    assert find_queue(settings, None).dead == "jobs:dead"
    assert find_queue(settings, "step").ready == "step.ready"
    assert settings.slack.incident_channel == "#incidents"
    assert settings.guard.confirm_ttl == 300


def test_seed_variables_flow_into_settings():
    env = {"REDIS_URL": "redis://cache:6379/2", "JOB_DEAD_LETTER_QUEUE": "jobs:graveyard", "DEAD_LETTER_KEEP": "50",
           "DATABASE_URL": "postgresql://db/app", "OPSBOT_ONCALL_USERS": "U1, U2", "RUN_MIGRATIONS": "true"}
    settings = load_settings(REPO / "app.yaml", env=env)
    assert settings.state.redis_url == "redis://cache:6379/2"
    assert find_queue(settings, "jobs").dead == "jobs:graveyard"
    assert find_queue(settings, "jobs").keep == 50
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
    # database_url was "x" before URLs were validated at load; any valid one does here
    path = write(tmp_path, "state:\n  redis_url: redis://:${REDIS_PASSWORD}@cache:6379\n  database_url: postgresql://db/x\n")
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
    proc = subprocess.run([sys.executable, "-m", "bot", "--config", str(path), "run", "help"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "queues[0].keep" in proc.stderr and "Traceback" not in proc.stderr


# -- hostile app.yaml: refused with exit 2 and a clear message, before it costs anything ------------------

def opsbot(path, *args, env=None) -> subprocess.CompletedProcess:
    full_env = {key: value for key, value in os.environ.items()
                if key not in ("OPSBOT_REDIS_URL", "OPSBOT_DATABASE_URL", "REDIS_URL", "DATABASE_URL")}
    return subprocess.run([sys.executable, "-m", "bot", "--config", str(path), *(args or ("check",))],
                          capture_output=True, text=True, timeout=60, env={**full_env, **(env or {})})


def refused(path, *args, env=None) -> str:
    proc = opsbot(path, *args, env=env)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and proc.stderr.startswith("opsbot: invalid configuration"), proc.stderr
    return proc.stderr


def billion_laughs() -> str:
    levels = ['  a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]\n']
    for level in range(1, 9):
        name, previous = chr(ord("a") + level), chr(ord("a") + level - 1)
        levels.append(f"  {name}: &{name} [{', '.join([f'*{previous}'] * 9)}]\n")
    return BASE + "services:\n  api:\n    expect:\n  " + "  ".join(levels)


@pytest.mark.parametrize("name, text, message", [
    ("billion laughs", billion_laughs(), "values once aliases are expanded; is this an alias bomb?"),
    ("recursive anchor", BASE + "roles: &r\n  admin: {includes: *r}\n", "the alias *r is inside the node it names"),
    ("recursive merge", BASE + "services: &s\n  api: {<<: *s}\n", "the alias *s is inside the node it names"),
    ("5,000-deep sequence", BASE + "services:\n  api:\n    expect: {a: " + "[" * 5000 + "]" * 5000 + "}\n",
     "nested more than 32 levels deep"),
    ("5,000-deep mapping", BASE + "services:\n  api:\n    expect: " + "{a: " * 5000 + "1" + "}" * 5000 + "\n",
     "nested more than 32 levels deep"),
    ("python object tag", BASE + "slack:\n  command: !!python/object/apply:os.system ['touch pwned']\n",
     "the tag !!python/object/apply:os.system is not allowed"),
    ("two documents", BASE + "---\n" + BASE, "a second YAML document"),
])
def test_a_hostile_app_yaml_is_refused_with_exit_2(tmp_path, name, text, message):
    stderr = refused(write(tmp_path, text))
    assert message in stderr, (name, stderr)
    assert not (tmp_path / "pwned").exists()


def test_aliases_cannot_nest_deeper_than_the_limit(tmp_path):
    # Each anchor is 10 deep and holds the previous one: depth doubles through aliases, not in the text.
    text = BASE + "services:\n  api:\n    expect:\n      a0: &a0 1\n"
    for level in range(1, 6):
        text += f"      a{level}: &a{level} " + "[" * 10 + f"*a{level - 1}" + "]" * 10 + "\n"
    assert "nested more than 32 levels deep (aliases included)" in refused(write(tmp_path, text))


def test_a_file_over_a_mebibyte_is_refused_unread(tmp_path):
    path = tmp_path / "app.yaml"
    path.write_text(BASE + "# " + "x" * (1 << 20) + "\n")
    assert "the file is larger than 1024 KiB" in refused(path)


def test_binary_and_nul_bytes_are_refused_with_their_line(tmp_path):
    path = tmp_path / "app.yaml"
    path.write_bytes(b"\x1f\x8b\x08\x00" + bytes(range(256)))
    assert "app.yaml:1: not UTF-8 text (byte 0x8b); is this a binary file?" in refused(path)
    path.write_bytes(BASE.encode() + b"slack:\n  command: /o\x00ps\n")
    assert "app.yaml:6: control character U+0000 is not allowed" in refused(path)


def test_a_redis_url_without_scheme_is_exit_2_for_check_and_run():
    for args in (("check",), ("run", "dlq status")):
        stderr = refused(REPO / "app.yaml", *args, env={"REDIS_URL": "127.0.0.1:6379/11"})
        assert "state.redis_url: not a Redis URL: it has no scheme; write redis://" in stderr
        assert "redis.main.url: not a Redis URL: it has no scheme" in stderr


def test_a_malformed_database_url_is_caught_without_echoing_its_password():
    stderr = refused(REPO / "app.yaml", env={"DATABASE_URL": "postgres//app:hunter2@db:5432/app"})
    assert "state.database_url: not a PostgreSQL URL or connection string; write postgresql://" in stderr
    assert "databases.main.url: not a PostgreSQL URL" in stderr
    assert "hunter2" not in stderr


def test_every_problem_is_reported_in_one_run(tmp_path):
    path = write(tmp_path, """
        slack:
          bot_token: ${SLACK_BOT_TOKEN}
          signing_secret: s3cret-literal
        state:
          redis_url: ${OPSBOT_REDIS_URL}
          database_url: ${DATABASE_URL}
        guard:
          confirm_ttl: soon
        queues:
          - {name: jobs, keep: lots}
        """)
    stderr = refused(path, env={"DATABASE_URL": "postgres//x"})
    assert stderr.startswith("opsbot: invalid configuration (6 problems):\n")
    lines = stderr.splitlines()[1:]
    assert lines[0].endswith("app.yaml:3: slack.bot_token: environment variable SLACK_BOT_TOKEN is not set "
                             "(write ${SLACK_BOT_TOKEN:-} if it is optional)")
    assert lines[1].endswith("app.yaml:4: slack.signing_secret: secrets must come from the environment; "
                             "write ${VARIABLE} instead of a value")
    assert lines[2].endswith("app.yaml:6: state.redis_url: environment variable OPSBOT_REDIS_URL is not set "
                             "(write ${OPSBOT_REDIS_URL:-} if it is optional)")
    assert "app.yaml:7: state.database_url: not a PostgreSQL URL" in lines[3]
    assert "app.yaml:9: guard.confirm_ttl: 'soon' is not a duration" in lines[4]
    assert "app.yaml:11: queues[0].keep: Input should be a valid integer" in lines[5]
    assert "s3cret-literal" not in stderr


# -- hostile app.yaml in process: the same limits, and YAML's tricks -----------------------------------------

def test_too_many_aliases_are_refused(tmp_path):
    text = BASE + "services:\n  api:\n    expect:\n      a: &a 1\n      b: [" + ", ".join(["*a"] * 1001) + "]\n"
    assert "more than 1000 aliases; is this an alias bomb?" in error_for(tmp_path, text)


def test_a_huge_scalar_repeated_by_aliases_is_refused(tmp_path):
    text = BASE + "slack:\n  command: &s '" + "x" * 900_000 + "'\n  app_name: *s\n  api_url: *s\n"
    assert "more than 2048 KiB of text once aliases are expanded" in error_for(tmp_path, text)


def test_a_huge_number_is_a_problem_not_a_crash(tmp_path):
    message = error_for(tmp_path, BASE + "queues:\n  - name: jobs\n    keep: " + "9" * 5000 + "\n")
    assert "app.yaml:7: queues[0].keep: not a valid !!int value" in message


@pytest.mark.parametrize("escape", ["\\0", "\\x00", "\\ud800"])
def test_nul_and_lone_surrogate_escapes_are_refused(tmp_path, escape):
    message = error_for(tmp_path, BASE + f'queues:\n  - name: jobs\n    ready: "jo{escape}bs"\n')
    assert message.startswith(f"{tmp_path / 'app.yaml'}:7: ")


def test_undefined_and_redefined_anchors_are_refused(tmp_path):
    assert "the alias *nope names no anchor defined before it" in error_for(tmp_path, BASE + "roles: *nope\n")
    assert "app.yaml:7: the anchor &a is defined twice" in error_for(
        tmp_path, BASE + "slack:\n  command: &a /ops\n  app_name: &a bot\n")


def test_duplicate_keys_are_reported_not_silently_overwritten(tmp_path):
    message = error_for(tmp_path, BASE + "slack:\n  bot_token: ${X:-}\n  bot_token: xoxb-literal\n")
    assert "app.yaml:7: slack.bot_token: duplicate key (first on line 6)" in message
    assert "xoxb-literal" not in message
    assert "app.yaml:6: state: duplicate key (first on line 2)" in error_for(tmp_path, BASE + BASE)


def test_a_key_must_be_text(tmp_path):
    assert "app.yaml:6: slack.(key): a key must be plain text" in error_for(tmp_path, BASE + "slack:\n  [a]: 1\n")


def test_merge_keys_share_settings_and_explicit_keys_win(tmp_path):
    path = write(tmp_path, BASE + textwrap.dedent("""
        services:
          api: &svc {liveness: "http://api/health", timeout: 3s}
          worker:
            <<: *svc
            liveness: http://worker/health
        """))
    worker = load_settings(path, env={}).services["worker"]
    assert (worker.liveness, worker.timeout) == ("http://worker/health", 3.0)
    assert "a merge key (<<) takes a mapping" in error_for(tmp_path, BASE + "slack:\n  <<: [1]\n")


def test_a_literal_secret_behind_an_alias_is_still_refused(tmp_path):
    message = error_for(tmp_path, BASE + "slack:\n  command: &c xoxb-literal\n  bot_token: *c\n")
    assert "app.yaml:6: slack.bot_token: secrets must come from the environment" in message


def test_an_anchored_reference_is_fine_anywhere(tmp_path):
    path = write(tmp_path, BASE + "slack:\n  bot_token: &t ${TOKEN}\n  app_token: *t\n")
    settings = load_settings(path, env={"TOKEN": "xoxb-1"})
    assert settings.slack.app_token.get_secret_value() == "xoxb-1"


def test_a_literal_default_of_a_secret_is_a_literal_secret(tmp_path):
    message = error_for(tmp_path, BASE + "slack:\n  bot_token: ${SLACK_BOT_TOKEN:-xoxb-123}\n")
    assert "slack.bot_token: secrets must come from the environment" in message and "a literal default" in message
    assert "xoxb-123" not in message
    path = write(tmp_path, BASE + "slack:\n  bot_token: ${A:-${B:-}}\n")
    assert load_settings(path, env={"B": "xoxb-b"}).slack.bot_token.get_secret_value() == "xoxb-b"


def test_the_pager_webhook_url_is_a_secret(tmp_path):
    message = error_for(tmp_path, BASE + "incidents:\n  page_url: https://hooks.example/T0/B0/abc\n")
    assert "app.yaml:6: incidents.page_url: secrets must come from the environment" in message


@pytest.mark.parametrize("query", ["password=hunter2", "access_token=hunter2", "sslpassword=hunter2",
                                   "token=hunter2", "x=1&api_key=hunter2", "X-Amz-Signature=hunter2"])
def test_a_literal_secret_query_parameter_is_refused(tmp_path, query):
    name = query.rpartition("=")[0].rpartition("&")[2]
    message = error_for(tmp_path, BASE + f"services:\n  api:\n    liveness: https://api/health?{query}\n")
    assert f"services.api.liveness: the secret query parameter {name!r} must come from the environment" in message
    assert "hunter2" not in message
    path = write(tmp_path, BASE + f"services:\n  api:\n    liveness: https://api/health?{name}=${{T}}\n")
    assert load_settings(path, env={"T": "a&b"}).services["api"].liveness == f"https://api/health?{name}=a%26b"


def test_a_literal_password_in_a_connection_string_is_refused(tmp_path):
    text = "state:\n  redis_url: redis://h\n  database_url: host=db password=hunter2 dbname=app\n"
    message = error_for(tmp_path, text)
    assert "app.yaml:3: state.database_url: password in a connection string must come from the environment" in message
    assert "hunter2" not in message


def test_an_environment_value_is_never_expanded_again(tmp_path):
    path = write(tmp_path, BASE + "slack:\n  command: ${CMD}\n  app_name: ${NAME:-x}\n")
    settings = load_settings(path, env={"CMD": "${SECRET}", "NAME": "$$ and ${NOPE:-y}", "SECRET": "s"})
    assert (settings.slack.command, settings.slack.app_name) == ("${SECRET}", "$$ and ${NOPE:-y}")


def test_references_nested_too_deep_are_a_problem_not_a_recursion_error(tmp_path):
    message = error_for(tmp_path, BASE + "slack:\n  command: " + "${A:-" * 5000 + "x" + "}" * 5000 + "\n")
    assert "app.yaml:6: slack.command: references nested more than 8 deep" in message


def test_every_unset_variable_of_one_value_is_named(tmp_path):
    message = error_for(tmp_path, BASE + "slack:\n  api_url: http://${HOST}:${PORT}/\n")
    assert "slack.api_url: environment variables HOST, PORT are not set" in message


def test_an_unknown_key_is_reported_even_when_its_variable_is_unset(tmp_path):
    message = error_for(tmp_path, BASE + "slack:\n  bot_tokn: ${NOPE}\n")
    assert "slack.bot_tokn: unknown setting" in message and "NOPE is not set" in message


def test_a_flood_of_problems_is_cut_short(tmp_path):
    message = error_for(tmp_path, BASE + "".join(f"k{i}: 1\n" for i in range(500)))
    assert len(message.splitlines()) == 51
    assert message.splitlines()[-1].endswith("app.yaml: ... and 450 more problems")


def test_yaml_typing_is_kept_and_explicit_strings_stay_strings(tmp_path):
    path = write(tmp_path, BASE + "slack:\n  app_name: !!str 5\nqueues:\n  - {name: jobs, keep: !!int '7', redis: main}\n"
                 "redis:\n  main: {url: 'redis://h'}\n")
    settings = load_settings(path, env={})
    assert (settings.slack.app_name, settings.queues[0].keep) == ("5", 7)


@pytest.mark.parametrize("tagged", ["!!binary aGVsbG8=", "!!set {a}", "!!omap [a: 1]", "!local x",
                                    "!!python/name:os.system", "!!timestamp 2024-01-01"])
def test_tags_beyond_plain_scalars_are_refused(tmp_path, tagged):
    assert "app.yaml:6: the tag " in error_for(tmp_path, BASE + f"slack:\n  command: {tagged}\n")


@pytest.mark.parametrize("url", ["${REDIS_URL:-redis://:hunter2@cache:6379/0}",
                                 "${REDIS_URL:-${OTHER:-redis://:hunter2@cache}}",
                                 "${BASE:-http://api}/health?token=hunter2"])
def test_a_literal_credential_in_a_default_or_after_a_base_url_is_refused(tmp_path, url):
    message = error_for(tmp_path, f"state:\n  redis_url: {url}\n  database_url: postgresql://db/x\n",
                        env={"REDIS_URL": "redis://h"})
    assert "app.yaml:2: state.redis_url: " in message and "must come from the environment" in message
    assert "hunter2" not in message


def test_an_endless_or_unreadable_config_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="the file is larger than 1024 KiB"):
        load_settings("/dev/zero", env={})
    with pytest.raises(ConfigError, match="cannot read configuration"):
        load_settings(tmp_path, env={})


def test_a_rate_limit_written_as_a_bare_number_is_taken(tmp_path):
    """app.yaml says "or 0 for none": `per_user: 0` (a YAML number) turns the limit off, as "0" does."""
    settings = load_settings(write(tmp_path, BASE + "limits:\n  per_user: 0\n  per_command: 50\n"), env={})
    assert settings.limits.parsed("per_user") == (0, 0.0)
    assert settings.limits.parsed("per_command") == (50, 60.0)
    assert "limits.per_user: Input should be a valid string" in error_for(tmp_path, BASE + "limits:\n  per_user: yes\n")


@pytest.mark.parametrize("backend", ["rq", "sidekiq", "bullmq"])
def test_a_job_system_queue_on_a_redis_cluster_is_refused_up_front(tmp_path, backend):
    cluster = BASE + textwrap.dedent(f"""
        redis:
          jobs: {{url: "redis://127.0.0.1:7000", cluster: true}}
        queues:
          - {{name: work, backend: {backend}, redis: jobs}}
        """)
    assert f"queues[0].redis: 'jobs' is a Redis Cluster, and the {backend} backend of queue 'work' works on a single " \
           "Redis server only" in error_for(tmp_path, cluster)
    listed = cluster.replace(f"backend: {backend}", "backend: redis-list, ready: '{w}:ready', dead: '{w}:dead'")
    assert load_settings(write(tmp_path, listed), env={}).redis["jobs"].cluster


@pytest.mark.parametrize("value, message", [
    ("-1", "limits.per_user: '-1' is not a rate: the count must be 0 or more"),
    ("'-5/1m'", "limits.per_user: '-5/1m' is not a rate: the count must be 0 or more"),
    ("5/0s", "limits.per_user: '5/0s' is not a rate: the period must be longer than 0"),
    ("1.5", "limits.per_user: '1.5' is not a rate; write e.g. 30/1m"),
    ("30.0", "limits.per_user: '30.0' is not a rate; write e.g. 30/1m"),
])
def test_a_rate_limit_that_cannot_work_is_refused_naming_the_key(tmp_path, value, message):
    """A negative count refused every command ("limited to -1 per 1m"), a zero period divided by zero on each
    one; a float was refused as "Input should be a valid string" although numbers are taken."""
    assert message in error_for(tmp_path, BASE + f"limits:\n  per_user: {value}\n")


def test_a_rate_limit_of_zero_per_any_period_is_no_limit(tmp_path):
    settings = load_settings(write(tmp_path, BASE + "limits:\n  per_user: 0/0s\n  per_command: ' 0 '\n"), env={})
    assert settings.limits.parsed("per_user")[0] == 0 and settings.limits.parsed("per_command") == (0, 0.0)
