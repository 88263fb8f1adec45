"""Named Prefect global limits -> a slot of each around one request to a served model, so every worker of every run
together stays within the server's quota (requests in flight, requests per second)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass


class LimitError(RuntimeError):
    """A named limit that cannot be used (it does not exist, or the Prefect API cannot be reached)."""


@dataclass(frozen=True)
class Quota:
    """The limits a served model's requests take slots of; None: not limited that way."""

    concurrency: str | None = None  # a global concurrency limit: a slot held while a request is in flight
    rate: str | None = None  # a limit with slot decay: a slot taken as a request is sent, freed at the decay rate

    def __bool__(self) -> bool:
        return bool(self.concurrency or self.rate)

    @contextmanager
    def slot(self) -> Iterator[None]:
        """Wait for a slot of each named limit (as long as it takes) and hold it through the request. With no limit
        named nothing is asked of Prefect, so a local run needs no server. A named limit that does not exist is an
        error, not Prefect's warning: running unthrottled is what it was named to prevent."""
        if not self:
            yield
            return
        from prefect.concurrency.asyncio import ConcurrencySlotAcquisitionError
        from prefect.concurrency.sync import concurrency, rate_limit

        with ExitStack() as held:
            try:
                if self.rate:
                    rate_limit(self.rate, strict=True)
                if self.concurrency:
                    # Held by a lease Prefect renews while the request runs; a worker that dies frees it at expiry.
                    held.enter_context(concurrency(self.concurrency, strict=True))
            except ConcurrencySlotAcquisitionError as e:
                raise LimitError(f"{self.describe()}: {e}. Create it on the Prefect server the workers use, e.g. "
                                 "`prefect gcl create NAME --limit N` (with `--slot-decay-per-second R` for a rate "
                                 "limit), or unset it in the engine's options") from e
            yield

    def describe(self) -> str:
        named = [f"concurrency limit {self.concurrency!r}"] * bool(self.concurrency) + \
                [f"rate limit {self.rate!r}"] * bool(self.rate)
        return " and ".join(named)
