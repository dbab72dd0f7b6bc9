"""How `inspectd regrade` connects: a Ray Client server that refuses a connection is asked again.

The stand-in below plays only `ray.init` / `ray.shutdown`, which is all `_connect` calls;
the real Ray Client path runs in tests/regrade/test_cluster.py.
"""

from __future__ import annotations

import logging

import pytest

from inspectd.regrade import job


class RayThatRefuses:
    """`ray.init` raising the Ray Client proxy's refusal `refusals` times, then connecting."""

    def __init__(self, refusals: int, error: type[Exception] = ConnectionAbortedError) -> None:
        self.refusals, self.error = refusals, error
        self.inits = self.shutdowns = 0

    def init(self, **kwargs) -> None:
        self.inits += 1
        if self.inits <= self.refusals:
            msg = "Initialization failure from server: ... ZombieProcess ..."
            raise self.error(msg)

    def shutdown(self) -> None:
        self.shutdowns += 1


def test_a_refused_ray_client_connection_is_tried_again(caplog):
    ray = RayThatRefuses(refusals=1)
    with caplog.at_level(logging.WARNING, logger="inspectd.regrade.job"):
        job._connect(ray, "ray://127.0.0.1:10001", verbose=False, level=logging.ERROR)
    assert (ray.inits, ray.shutdowns) == (2, 1)
    assert "refused the connection" in caplog.text


def test_the_last_refusal_is_raised():
    ray = RayThatRefuses(refusals=job.CLIENT_CONNECT_ATTEMPTS)  # waits 1 s + 2 s between attempts
    with pytest.raises(ConnectionAbortedError):
        job._connect(ray, "ray://127.0.0.1:10001", verbose=False, level=logging.ERROR)
    assert ray.inits == job.CLIENT_CONNECT_ATTEMPTS


@pytest.mark.parametrize("address", ["auto", "local", "10.0.0.5:6379"])
def test_other_addresses_are_not_retried(address):
    ray = RayThatRefuses(refusals=1)
    with pytest.raises(ConnectionAbortedError):
        job._connect(ray, address, verbose=False, level=logging.ERROR)
    assert ray.inits == 1
