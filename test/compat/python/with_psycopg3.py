"""psycopg 3 scenarios for python.test.ts (see common.py)."""

import hashlib
import threading
import time

import psycopg

from common import READ_ONLY, SLEEPING, error, libpq_options, params, run, wait_until


def connect(**kw):
    p = params()
    return psycopg.connect(**p, options=libpq_options(), **kw)


def outcome(cursor):
    try:
        return {"rows": cursor.fetchall()}
    except psycopg.Error as e:
        return {"error": type(e).__name__}


def pipeline():
    result = {}
    with connect() as conn:
        # Reads only: every result arrives.
        with conn.pipeline():
            reads = [
                conn.execute("SELECT count(*) FROM items"),
                conn.execute("SELECT name FROM items WHERE id = %s", (7,)),
                conn.execute("SELECT %s::int * 2", (21,)),
            ]
        result["reads"] = [outcome(c) for c in reads]
        conn.commit()
        # A write mid-pipeline, in a transaction and in autocommit: the error,
        # the statements after it skipped, and a usable connection afterwards.
        for autocommit in (False, True):
            conn.autocommit = autocommit
            cursors = []
            mode = "autocommit" if autocommit else "transaction"
            try:
                with conn.pipeline():
                    cursors.append(conn.execute("SELECT count(*) FROM items"))
                    insert = "INSERT INTO items (id, name) VALUES (%s, %s)"
                    cursors.append(conn.execute(insert, (10000, "new")))
                    cursors.append(conn.execute("SELECT 3"))
                result[mode] = {"pipeline": "succeeded"}
            except psycopg.Error as e:
                result[mode] = {"pipeline": error(e)}
            result[mode]["results"] = [outcome(c) for c in cursors]
            result[mode]["status"] = conn.info.transaction_status.name
            conn.rollback()
            result[mode]["after"] = conn.execute("SELECT 6 * 7").fetchone()[0]
            conn.rollback()
    return result


COPY = (
    "COPY (SELECT id, name, price, tags, meta, added, at, flag, uid, dur, raw FROM items ORDER BY id) "
    "TO STDOUT (FORMAT BINARY)"
)

# The COPY's column types, for decoding its rows.
TYPES = "int4 text numeric text[] jsonb date timestamptz bool uuid interval bytea".split()


def copy_binary():
    with connect() as conn, conn.cursor() as cur:
        with cur.copy(COPY) as copy:
            data = b"".join(bytes(block) for block in copy)
        with cur.copy(COPY) as copy:
            copy.set_types(TYPES)
            rows = list(copy.rows())
        return {
            "bytes": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
            "header": data[:19].hex(),
            "rows": len(rows),
            "first": rows[0],
            "last": rows[-1],
        }


def server_cursor():
    with connect() as conn:
        with conn.cursor(name="pyc_sc") as cur:
            cur.itersize = 100
            cur.execute("SELECT id, name, price FROM items WHERE id > %s ORDER BY id", (10,))
            description = [[d.name, d.type_code] for d in cur.description]
            first = cur.fetchmany(5)
            cur.scroll(10)
            after_move = cur.fetchone()
            rest = cur.fetchall()
        with conn.cursor(name="pyc_scroll", scrollable=True) as cur:
            cur.execute("SELECT g, g * g FROM generate_series(1, 1000) g")
            cur.scroll(499, mode="absolute")  # 0-based, as the DB-API counts
            at_500 = cur.fetchone()
            cur.scroll(-100)
            back = cur.fetchone()
        conn.commit()
        with conn.cursor(name="pyc_hold", withhold=True) as cur:
            cur.execute("SELECT g FROM generate_series(1, 50) g")
            conn.commit()  # a WITH HOLD cursor outlives its transaction
            held = cur.fetchall()
        return {
            "description": description,
            "first": first,
            "after_move": after_move,
            "rest": rest,
            "at_500": at_500,
            "back": back,
            "held": held,
        }


def cancel():
    app = f"compat-psycopg3-cancel-{'ro' if READ_ONLY else 'rw'}"
    cancelled_at = []
    with connect(application_name=app) as conn, connect(autocommit=True) as watcher:

        def sleeping():
            return watcher.execute(SLEEPING, (app,)).fetchone()[0] == 1

        def canceller():
            wait_until(sleeping, what="the sleep to start")
            cancelled_at.append(time.monotonic())
            conn.cancel()

        thread = threading.Thread(target=canceller)
        thread.start()
        result = {}
        try:
            conn.execute("SELECT pg_sleep(20)")
            result["sleep"] = "finished"
        except psycopg.Error as e:
            result["sleep"] = error(e)
            result["ms_from_cancel"] = (time.monotonic() - cancelled_at[0]) * 1000 if cancelled_at else None
        thread.join()
        conn.rollback()
        result["after"] = conn.execute("SELECT 6 * 7").fetchone()[0]
        return result


run({"pipeline": pipeline, "copy_binary": copy_binary, "server_cursor": server_cursor, "cancel": cancel})
