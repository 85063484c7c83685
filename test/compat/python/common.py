"""Shared by the compatibility scripts.

Each script runs one scenario, named by its first argument, against the server
the PG* environment variables name (the proxy, or the server itself), and
prints the scenario's result as one line of JSON for python.test.ts to compare.
COMPAT_READ_ONLY=1 makes the session read-only on the server's side (the
baseline a refused write through the proxy is compared with).
"""

import asyncio
import base64
import datetime
import decimal
import json
import os
import sys
import time
import uuid

READ_ONLY = os.environ.get("COMPAT_READ_ONLY") == "1"


def params():
    """Connection parameters, from the PG* environment variables."""
    return {
        "host": os.environ["PGHOST"],
        "port": int(os.environ["PGPORT"]),
        "user": os.environ["PGUSER"],
        "password": os.environ["PGPASSWORD"],
        "dbname": os.environ["PGDATABASE"],
    }


def libpq_options():
    """libpq's options: the server-side read-only baseline when asked for."""
    return "-c default_transaction_read_only=on" if READ_ONLY else ""


def plain(value):
    """A value as JSON can hold it, the same way whichever driver returned it."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {"bytes": base64.b64encode(bytes(value)).decode()}
    if isinstance(value, decimal.Decimal):
        return {"decimal": str(value)}
    if isinstance(value, (datetime.datetime, datetime.date, datetime.time)):
        return {type(value).__name__: value.isoformat()}
    if isinstance(value, datetime.timedelta):
        return {"timedelta": value.total_seconds()}
    if isinstance(value, uuid.UUID):
        return {"uuid": str(value)}
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if hasattr(value, "items") and hasattr(value, "keys"):  # asyncpg.Record
        return [plain(v) for v in value.values()]
    return value


def error(exc):
    """What a driver error says, minus the message (the proxy words it its own way)."""
    code = getattr(exc, "pgcode", None) or getattr(exc, "sqlstate", None)
    if code is None and getattr(exc, "diag", None) is not None:
        code = exc.diag.sqlstate
    return {"class": type(exc).__name__, "sqlstate": code, "read_only": "read-only" in str(exc)}


def wait_until(predicate, timeout=5.0, what="condition"):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.02)


SLEEPING = (
    "SELECT count(*) FROM pg_stat_activity "
    "WHERE application_name = %s AND state = 'active' AND query LIKE 'SELECT pg_sleep%%'"
)


def run(scenarios):
    name = sys.argv[1]
    result = scenarios[name]()
    if asyncio.iscoroutine(result):
        result = asyncio.run(result)
    print(json.dumps(plain(result), sort_keys=True, ensure_ascii=False))
