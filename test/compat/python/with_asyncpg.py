"""asyncpg scenarios for python.test.ts (see common.py)."""

import asyncio
import decimal
import time

import asyncpg

from common import READ_ONLY, error, params, run


async def connect():
    p = params()
    settings = {"default_transaction_read_only": "on"} if READ_ONLY else {}
    return await asyncpg.connect(
        host=p["host"],
        port=p["port"],
        user=p["user"],
        password=p["password"],
        database=p["dbname"],
        server_settings=settings,
    )


def attributes(stmt):
    return [[a.name, a.type.name, a.type.kind] for a in stmt.get_attributes()]


async def fetch():
    # The enum and composite columns make asyncpg introspect their types.
    conn = await connect()
    try:
        rows = await conn.fetch("SELECT * FROM items ORDER BY id")
        return {
            "server_version": list(conn.get_server_version()),
            "rows": rows,
            "columns": list(rows[0].keys()),
            "fetchval": await conn.fetchval("SELECT $1::int + $2", 40, 2),
            "fetchrow": await conn.fetchrow(
                "SELECT $1::text AS t, $2::numeric AS n, $3::int[] AS a, $4::mood AS m",
                "ä😀 'quoted'",
                decimal.Decimal("1.50"),
                [1, None, 3],
                "happy",
            ),
            "composite": await conn.fetchval("SELECT p FROM items WHERE id = 5"),
            "mood_array": await conn.fetchval("SELECT array_agg(mood ORDER BY id) FROM items WHERE id <= 4"),
        }
    finally:
        await conn.close()


async def prepared():
    conn = await connect()
    try:
        stmt = await conn.prepare("SELECT id, name, price, mood, p FROM items WHERE id = $1")
        named = await conn.prepare("SELECT count(*) FROM items WHERE price > $1", name="pyc_named")
        return {
            "parameters": [t.name for t in stmt.get_parameters()],
            "attributes": attributes(stmt),
            "rows": [await stmt.fetchrow(i) for i in (1, 2, 3, 300)],
            "missing": await stmt.fetchrow(100000),
            "value": await stmt.fetchval(7, column=1),
            "named": [await named.fetchval(decimal.Decimal(v)) for v in ("10", "100", "1000")],
        }
    finally:
        await conn.close()


async def cursor():
    conn = await connect()
    try:
        async with conn.transaction():
            query = "SELECT g FROM generate_series(1, $1) g"
            iterated = [r["g"] async for r in conn.cursor(query, 1050, prefetch=100)]
            cur = await conn.cursor("SELECT id, name FROM items ORDER BY id")
            first = await cur.fetch(10)
            moved = await cur.forward(100)
            next_row = await cur.fetchrow()
            rest = await cur.fetch(1000)
        return {
            "count": len(iterated),
            "sum": sum(iterated),
            "first": first,
            "moved": moved,
            "next": next_row,
            "rest": rest,
            "in_transaction_after": conn.is_in_transaction(),
        }
    finally:
        await conn.close()


async def write():
    conn = await connect()
    result = {}
    try:
        before = await conn.fetchval("SELECT count(*) FROM items")
        try:
            await conn.execute("INSERT INTO items (id, name) VALUES (10000, 'new')")
            result["insert"] = "succeeded"
        except asyncpg.PostgresError as e:
            result["insert"] = error(e)
        try:
            await conn.execute("UPDATE items SET name = $1 WHERE id = $2", "changed", 1)
            result["update_with_args"] = "succeeded"
        except asyncpg.PostgresError as e:
            result["update_with_args"] = error(e)
        try:
            async with conn.transaction():
                await conn.fetchval("SELECT 1")
                await conn.execute("DELETE FROM items")
            result["delete_in_transaction"] = "succeeded"
        except asyncpg.PostgresError as e:
            result["delete_in_transaction"] = error(e)
        result["in_transaction_after"] = conn.is_in_transaction()
        result["unchanged"] = await conn.fetchval("SELECT count(*) FROM items") == before
        return result
    finally:
        await conn.close()


async def timeout_cancel():
    # On a timeout, asyncpg sends a CancelRequest; the next query waits for it.
    conn = await connect()
    try:
        result = {}
        started = time.monotonic()
        try:
            await conn.fetch("SELECT pg_sleep(20)", timeout=0.5)
            result["sleep"] = "finished"
        except asyncio.TimeoutError:
            result["sleep"] = "timed out"
        result["after"] = await conn.fetchval("SELECT 6 * 7")
        result["ms"] = (time.monotonic() - started) * 1000
        return result
    finally:
        await conn.close()


run(
    {
        "fetch": fetch,
        "prepared": prepared,
        "cursor": cursor,
        "write": write,
        "timeout_cancel": timeout_cancel,
    }
)
