"""The shell-like parser: what on-call types, and that nothing typed can crash it."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bot.core.parser import UsageError, parse
from bot.core.registry import Arg, Command, Registry, choice, duration, positive_int
from commands import build_registry

noop = lambda inv: None  # noqa: E731

REGISTRY = Registry().add(
    Command("dlq peek", "peek", run=noop, args=(
        Arg("queue", positional=True),
        Arg("type"),
        Arg("error"),
        Arg("older_than", type=duration),
        Arg("id", repeat=True),
        Arg("limit", type=positive_int, default=10),
        Arg("all", flag=True),
    )),
    Command("dlq status", "status", run=noop, args=(Arg("queue", positional=True),)),
    Command("incident declare", "declare", run=noop, args=(
        Arg("sev", positional=True, required=True, type=choice("sev1", "sev2", "sev3", "sev4")),
        Arg("title", positional=True, required=True, rest=True),
    )),
    Command("runbook", "runbook", run=noop, args=(Arg("name", positional=True), Arg("params", params=True))),
    Command("help", "help", run=noop, args=(Arg("topic", positional=True, rest=True),)),
)


def test_quotes_options_flags_and_key_value():
    parsed = parse('dlq peek jobs --type "send email" --older-than 1h limit=5 --all --id a --id b', REGISTRY)
    assert parsed.command.name == "dlq peek"
    assert parsed.args == {"queue": "jobs", "type": "send email", "error": None, "older_than": 3600.0,
                           "id": ["a", "b"], "limit": 5, "all": True}


def test_defaults_fill_in():
    assert parse("dlq peek", REGISTRY).args == {"queue": None, "type": None, "error": None, "older_than": None,
                                                "id": [], "limit": 10, "all": False}


def test_option_equals_form_and_key_value_with_dashes():
    assert parse("dlq peek --error=timeout older-than=15m", REGISTRY).args["older_than"] == 900.0


def test_slack_smart_quotes_work():
    parsed = parse("incident declare sev2 \u201cCheckout emails stuck\u201d", REGISTRY)
    assert parsed.args == {"sev": "sev2", "title": "Checkout emails stuck"}


def test_rest_argument_takes_the_remaining_words():
    assert parse("incident declare SEV1 API down for everyone", REGISTRY).args["title"] == "API down for everyone"


def test_hash_is_not_a_comment():
    assert parse("help #incidents now", REGISTRY).args["topic"] == "#incidents now"


def test_runbook_params():
    parsed = parse("runbook dead-letter-backlog queue=step x=1", REGISTRY)
    assert parsed.args == {"name": "dead-letter-backlog", "params": {"queue": "step", "x": "1"}}


def test_empty_text_is_help():
    assert parse("   ", REGISTRY).command.name == "help"


@pytest.mark.parametrize(
    "text, message",
    [
        ("dlq peek --limit 0", "Bad value for `--limit`: must be between 1 and 1000000000"),
        ("dlq peek --limit many", "Bad value for `--limit`: 'many' is not a whole number"),
        ("dlq peek --older-than soon", "Bad value for `--older-than`: 'soon' is not a duration"),
        ("dlq peek --typ x", "Unknown option `--typ`. Did you mean `--type`?"),
        ("dlq peek --type", "`--type` needs a value."),
        ("dlq peek --limit 1 --limit 2", "`--limit` given twice."),
        ("dlq peek jobs extra", "Unexpected argument extra."),
        ("dlq peek --all=maybe", "`--all` is a flag"),
        ("incident declare", "Missing `sev`, `title`."),
        ("incident declare sev9 x", "Bad value for `sev`: must be one of sev1, sev2, sev3, sev4"),
        ('dlq peek --type "unclosed', "cannot read the command: no closing quotation"),
        ("dlq", "`/ops dlq` needs a subcommand: peek, status."),
        ("dlq requeue", "`/ops dlq` needs a subcommand: peek, status. 'requeue' is not one of them."),
        ("hlep", "Unknown command `hlep`. Did you mean `help`?"),
        ("x" * 5000, "command text is too long"),
    ],
)
def test_bad_input_is_a_usage_message(text, message):
    with pytest.raises(UsageError) as caught:
        parse(text, REGISTRY)
    assert message in str(caught.value)


def test_usage_errors_show_the_usage_line():
    with pytest.raises(UsageError) as caught:
        parse("dlq peek --nope", REGISTRY)
    assert "Usage: `/ops dlq peek [<queue>] [--type TEXT] [--error TEXT] [--older-than DURATION]" in str(caught.value)


def test_canonical_form_parses_back_to_the_same_arguments():
    parsed = parse("dlq peek   jobs  limit=3 --type 'a b' --all --id x", REGISTRY)
    assert parsed.canonical() == "dlq peek jobs --type 'a b' --id x --limit 3 --all"
    assert parse(parsed.canonical(), REGISTRY).args == parsed.args


WORDS = st.sampled_from(["dlq", "peek", "status", "incident", "declare", "runbook", "help", "--type", "--limit",
                         "--all", "--id", "--older-than", "--", "sev1", "limit=3", "x=y", "'", '"', "\\", "\u201c",
                         "=", "--=", "-", "1h", "0", "-5", "99999999999999999999", "\x00", "é", "jobs"])


@settings(max_examples=600, deadline=None)
@given(st.text(max_size=300))
def test_no_input_string_crashes_the_parser(text):
    for registry in (REGISTRY, build_registry()):
        try:
            parse(text, registry)
        except UsageError:
            pass


@settings(max_examples=600, deadline=None)
@given(st.lists(WORDS, max_size=12).map(" ".join))
def test_no_command_like_input_crashes_the_parser(text):
    try:
        parsed = parse(text, REGISTRY)
    except UsageError:
        return
    assert parse(parsed.canonical(), REGISTRY).args == parsed.args


@pytest.mark.parametrize("text", ["runbook -- --", "help -- --type dlq", "dlq peek --limit 2 -- -x"])
def test_values_that_look_like_options_survive_the_canonical_form(text):
    parsed = parse(text, REGISTRY)
    assert parse(parsed.canonical(), REGISTRY).args == parsed.args


def test_zero_survives_the_canonical_round_trip(registry):
    from bot.core.parser import parse

    parsed = parse("dlq trim jobs --keep 0", registry)
    assert parsed.args["keep"] == 0
    assert parsed.canonical() == "dlq trim jobs --keep 0"
    assert parse(parsed.canonical(), registry).args["keep"] == 0


def test_incident_inside_a_quoted_argument_is_text_not_the_option(registry):
    from bot.core.parser import parse

    parsed = parse('incident note "next time use --incident INC-2 from the start" --incident INC-7', registry)
    assert parsed.context == "INC-7"
    assert parsed.args["text"] == "next time use --incident INC-2 from the start"
    assert parse("incident note -- --incident INC-2 is the option", registry).context is None
    assert parse("dlq status --incident=INC-3", registry).context == "INC-3"
    with pytest.raises(UsageError, match="given twice"):
        parse("dlq status --incident INC-1 --incident INC-2", registry)
    with pytest.raises(UsageError, match="needs an incident id"):
        parse("dlq status --incident", registry)


@pytest.mark.parametrize("text", ["audit verify tenant\x00", "dlq peek --type a\x1b[2Jb", "help\x7f"])
def test_control_characters_are_a_usage_error(registry, text):
    from bot.core.parser import parse

    with pytest.raises(UsageError, match="control character"):
        parse(text, registry)


def test_a_duration_beyond_ten_years_is_a_usage_error(registry):
    from bot.core.parser import parse

    with pytest.raises(UsageError, match="at most 3650d"):
        parse("email triage --since 99999999999d", registry)
    assert parse("email triage --since 3650d", registry).args["since"] == 3650 * 86400
