"""Analytic M/M/c results (Erlang C), the reference the simulation is validated against.

For Poisson arrivals at rate lambda, exponential service at rate mu per server and c servers with
offered load a = lambda/mu < c, the probability that an arrival waits is Erlang's C formula

    C(c, a) = (a^c / c!) (c / (c - a)) / (sum_{k<c} a^k / k! + (a^c / c!) (c / (c - a)))

and the mean wait in queue is Wq = C(c, a) / (c mu - lambda). It is computed from Erlang B by
its stable recursion (Gross et al. 2008, section 2.6) so that large c does not overflow. Source: Gross D., Shortle J.F.,
Thompson J.M., Harris C.M. (2008) Fundamentals of Queueing Theory, 4th ed., Wiley, section 2.3
(eqs. 2.32 and 2.36), doi:10.1002/9781118625651. Valid for a stable queue (a < c).
"""

from __future__ import annotations

from medtwin.errors import ValidationError

__all__ = ["QueueingError", "erlang_c", "mmc_mean_wait"]


class QueueingError(ValidationError):
    """Queue parameters outside the formula's domain (unstable queue, non-positive rates)."""


def _check(arrival_rate: float, service_rate: float, servers: int) -> float:
    if not (arrival_rate > 0 and service_rate > 0 and servers >= 1):
        raise QueueingError(f"M/M/c needs lambda > 0, mu > 0, c >= 1; got {arrival_rate}, {service_rate}, {servers}")
    load = arrival_rate / service_rate
    if load >= servers:
        raise QueueingError(f"M/M/c with load a = lambda/mu = {load:.4g} >= c = {servers} is unstable")
    return load


def erlang_c(arrival_rate: float, service_rate: float, servers: int) -> float:
    """Probability that an arrival has to wait in an M/M/c queue (Erlang C)."""
    a = _check(arrival_rate, service_rate, servers)
    # Erlang B by its stable recursion B(k) = a B(k-1) / (k + a B(k-1)), then
    # C = c B / (c - a (1 - B)): no factorials, no overflow for large c
    b = 1.0
    for k in range(1, servers + 1):
        b = a * b / (k + a * b)
    return servers * b / (servers - a * (1.0 - b))


def mmc_mean_wait(arrival_rate: float, service_rate: float, servers: int) -> float:
    """Mean time in queue (same time unit as the rates) of an M/M/c queue."""
    c = erlang_c(arrival_rate, service_rate, servers)
    return c / (servers * service_rate - arrival_rate)
