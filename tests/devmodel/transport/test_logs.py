"""The device model's log rate limit."""

import logging

from acrnmgr.devmodel.logs import RATE_LIMIT, RateLimit, get_logger


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def _logger(name, limit):
    records = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(record.getMessage())

    logger = logging.getLogger(name)
    logger.propagate = False
    logger.handlers[:] = [Keep()]
    logger.filters[:] = [limit]
    logger.setLevel(logging.INFO)
    return logger, records


def test_a_repeated_message_is_let_through_burst_times_per_period_then_counted():
    clock = Clock()
    logger, records = _logger("test.devmodel.ratelimit", RateLimit(burst=5, period=10.0, clock=clock))
    for i in range(100_000):
        logger.warning("queue %d: kick read failed: %s", 0, i)
    assert len(records) == 5
    logger.warning("another template")  # its own budget
    assert len(records) == 6
    clock.now = 10.0
    logger.warning("queue %d: kick read failed: %s", 0, "again")
    assert records[-1] == "queue 0: kick read failed: again [99995 similar message(s) suppressed]"


def test_the_number_of_templates_tracked_is_bounded():
    clock = Clock()
    limit = RateLimit(burst=1, period=10.0, clock=clock)
    logger, records = _logger("test.devmodel.ratelimit.keys", limit)
    for i in range(5 * RateLimit.MAX_KEYS):
        logger.warning(f"message {i}")  # noqa: G004 - a hostile source of ever new templates
    assert len(limit._windows) <= RateLimit.MAX_KEYS
    assert len(records) == 5 * RateLimit.MAX_KEYS


def test_every_devmodel_logger_carries_the_shared_limit():
    import acrnmgr.devmodel.server  # noqa: F401
    import acrnmgr.devmodel.vhost_user  # noqa: F401

    for name in ("acrnmgr.devmodel.server", "acrnmgr.devmodel.vhost_user", "acrnmgr.devmodel.virtqueue"):
        assert RATE_LIMIT in logging.getLogger(name).filters
    assert get_logger("acrnmgr.devmodel.server").filters.count(RATE_LIMIT) == 1


def test_one_request_failing_over_and_over_does_not_hide_another():
    logger, records = _logger("test.devmodel.ratelimit.names", RateLimit(burst=2, period=10.0, clock=Clock()))
    for _ in range(100):
        logger.error("vhost-user %s failed: %s", "SET_VRING_NUM", "bad size")
    logger.error("vhost-user %s failed: %s", "SET_MEM_TABLE", "memfd not sealed")
    assert records == ["vhost-user SET_VRING_NUM failed: bad size"] * 2 + [
        "vhost-user SET_MEM_TABLE failed: memfd not sealed"]
