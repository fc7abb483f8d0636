"""Bounded concurrency for the many small storage transfers of an upload, export or check."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable


async def run_bounded[T](work: Callable[[T], Awaitable[None]], items: Iterable[T], jobs: int) -> None:
    """Await ``work(item)`` for every item, at most ``jobs`` at once. The first failure (or a
    cancellation) cancels the rest and is raised once they have stopped."""
    if jobs < 1:
        raise ValueError(f"jobs must be at least 1, got {jobs}")
    semaphore = asyncio.Semaphore(jobs)

    async def one(item: T) -> None:
        async with semaphore:
            await work(item)

    tasks = [asyncio.create_task(one(item)) for item in items]
    try:
        await asyncio.gather(*tasks)
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
