"""Building blocks of the settings models: the strict base model and app.yaml's value types.

Usage::

    class RedisTarget(ConfigModel):
        url: RedisUrl                 # 'redis://…' checked at load, the message never quoting it
        timeout: Duration = 10.0      # '10s', '1h30m' or seconds
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field

from bot.core.durations import parse_duration
from bot.config.urls import postgres_url_problem, redis_url_problem

__all__ = ["ConfigModel", "Duration", "IdList", "Identifier", "Name", "PostgresUrl", "RedisUrl"]


class ConfigModel(BaseModel):
    """Unknown keys are errors (typos are caught); settings never change once loaded."""

    model_config = ConfigDict(extra="forbid", frozen=True, defer_build=True)


def _split_ids(value: Any) -> Any:
    if value is None:
        return []
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


def _checked(problem_of):
    def check(value: str) -> str:
        problem = problem_of(value)
        if problem:
            raise ValueError(problem)
        return value

    return check


Duration = Annotated[float, BeforeValidator(parse_duration)]
Identifier = Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")]
Name = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.:-]{1,100}$")]
IdList = Annotated[list[str], BeforeValidator(_split_ids)]
RedisUrl = Annotated[str, AfterValidator(_checked(redis_url_problem))]  # redis://, rediss://, unix://
PostgresUrl = Annotated[str, AfterValidator(_checked(postgres_url_problem))]  # postgresql:// or key=value
