"""psycopg2 scenarios for python.test.ts (see common.py)."""

import threading
import time

import psycopg2
import psycopg2.extras

from common import READ_ONLY, SLEEPING, error, libpq_options, params, run, wait_until


def connect(**kw):
    return psycopg2.connect(**params(), options=libpq_options(), **kw)


def select():
    conn = connect()
    try:
        cur = conn.cursor()
        cur.execute("SELECT * FROM items ORDER BY id")
        rows = cur.fetchall()
        description = [[d.name, d.type_code] for d in cur.description]
        # psycopg2 interpolates parameters client-side: a simple-protocol query.
        cur.execute("SELECT %s::int + %s AS sum, %s::text AS t, %s AS n", (40, 2, "ä😀 'quoted'", None))
        interpolated = cur.fetchone()
        psycopg2.extras.register_uuid(conn_or_curs=conn)
        dict_cur = conn.cursor(cursor_factory=psycopg2.extras.RealDictCursor)
        dict_cur.execute("SELECT id, uid, meta FROM items WHERE id <= 3 ORDER BY id")
        dicts = dict_cur.fetchall()
        conn.commit()
        return {"rows": rows, "description": description, "interpolated": interpolated, "dicts": dicts}
    finally:
        conn.close()


def named_cursor():
    conn = connect()
    try:
        # DECLARE ... CURSOR WITHOUT HOLD, then FETCH FORWARD itersize until done.
        with conn.cursor(name="pyc_named") as cur:
            cur.itersize = 100
            cur.execute("SELECT g, md5(g::text) FROM generate_series(1, %s) g", (1050,))
            rows = list(cur)
        with conn.cursor(name="pyc_scroll", scrollable=True) as cur:
            cur.execute("SELECT id, name FROM items ORDER BY id")
            cur.scroll(199, mode="absolute")  # 0-based, as the DB-API counts
            at_199 = cur.fetchone()
            cur.scroll(-50)
            back = cur.fetchmany(2)
        conn.commit()
        return {"count": len(rows), "all": rows, "at_199": at_199, "back": back}
    finally:
        conn.close()


def write():
    conn = connect()
    try:
        cur = conn.cursor()
        cur.execute("SELECT count(*) FROM items")
        before = cur.fetchone()[0]
        result = {}
        try:
            cur.execute("INSERT INTO items (id, name) VALUES (%s, %s)", (10000, "new"))
            result["insert"] = "succeeded"
        except psycopg2.Error as e:
            result["insert"] = error(e)
        try:
            cur.execute("SELECT 1")
            result["in_failed_transaction"] = "succeeded"
        except psycopg2.Error as e:
            result["in_failed_transaction"] = error(e)
        conn.rollback()
        cur.execute("SELECT count(*) FROM items")
        result["after_rollback"] = cur.fetchone()[0] == before
        conn.rollback()
        conn.autocommit = True
        try:
            cur.execute("UPDATE items SET name = 'changed'")
            result["autocommit_update"] = "succeeded"
        except psycopg2.Error as e:
            result["autocommit_update"] = error(e)
        cur.execute("SELECT 6 * 7")
        result["after_autocommit"] = cur.fetchone()[0]
        return result
    finally:
        conn.close()


def cancel():
    app = f"compat-psycopg2-cancel-{'ro' if READ_ONLY else 'rw'}"
    conn = connect(application_name=app)
    watcher = connect()
    watcher.autocommit = True
    cancelled_at = []

    def canceller():
        with watcher.cursor() as cur:

            def sleeping():
                cur.execute(SLEEPING, (app,))
                return cur.fetchone()[0] == 1

            wait_until(sleeping, what="the sleep to start")
        cancelled_at.append(time.monotonic())
        conn.cancel()

    try:
        thread = threading.Thread(target=canceller)
        thread.start()
        cur = conn.cursor()
        result = {}
        try:
            cur.execute("SELECT pg_sleep(20)")
            result["sleep"] = "finished"
        except psycopg2.Error as e:
            result["sleep"] = error(e)
            result["ms_from_cancel"] = (time.monotonic() - cancelled_at[0]) * 1000 if cancelled_at else None
        thread.join()
        conn.rollback()
        cur.execute("SELECT 6 * 7")
        result["after"] = cur.fetchone()[0]
        return result
    finally:
        conn.close()
        watcher.close()


run({"select": select, "named_cursor": named_cursor, "write": write, "cancel": cancel})
