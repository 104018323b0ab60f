"""A BullMQ worker (the official ``bullmq`` Python package) run until its queue is drained, like
``rq worker --burst``: ``python -m tests.support.bullworker REDIS_URL QUEUE [PREFIX]``.

Its processor follows :mod:`tests.support.jobfuncs`: it fails while ``jobfuncs:broken`` is set,
else appends the job's id to ``jobfuncs:ran``.
"""

from __future__ import annotations

import asyncio
import sys

import redis.asyncio as aioredis
from bullmq import Worker

from tests.support.jobfuncs import BROKEN, RAN


async def main(url: str, queue: str, prefix: str = "bull") -> None:
    client = aioredis.Redis.from_url(url)

    async def process(job, token):
        if await client.exists(BROKEN):
            raise RuntimeError(f"{job.name}: upstream 503 for {job.data.get('to', '?')}")
        await client.rpush(RAN, job.id)
        return job.id

    worker = Worker(queue, process, {"connection": url, "prefix": prefix, "concurrency": 10, "drainDelay": 1})
    idle = 0
    while idle < 5:
        await asyncio.sleep(0.2)
        busy = await client.llen(f"{prefix}:{queue}:wait") + await client.llen(f"{prefix}:{queue}:active")
        idle = 0 if busy else idle + 1
    await worker.close()
    await client.aclose()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:]))
