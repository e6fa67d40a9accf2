"""Runs statements over the Postgres wire with psycopg (a real driver) for
tests/pg.rs.

Reads a JSON plan on stdin:
  {"dsn": "...", "statements": [{"sql": "...", "params": [...] | null,
                                 "simple": true | false}]}
and prints one JSON result per statement, in order:
  {"ok": true, "rows": [[...], ...]}  or
  {"ok": false, "sqlstate": "42501", "message": "...", "client": false}
with "seconds" on each. A statement with "until_rows" is run again every
0.1 s until its rows equal them or it fails (at most "within" seconds, then
its last result is given). After a statement with "then_touch", that file is created (a test
waits for it to change data while the connection is open). Every statement runs on one autocommit connection,
so a failure must leave the connection usable for the next; "simple" uses
the simple query protocol (client-side binding), otherwise the extended one
(Parse/Bind/Execute, as a prepared statement, which psycopg otherwise only
uses for statements with parameters).
"""

import json
import sys
import time

import psycopg


def main():
    plan = json.load(sys.stdin)
    results = []
    with psycopg.connect(plan["dsn"], autocommit=True, connect_timeout=10) as conn:
        for statement in plan["statements"]:
            started = time.monotonic()
            result = run(conn, statement)
            while (
                "until_rows" in statement
                and result["ok"]
                and result.get("rows") != statement["until_rows"]
                and time.monotonic() - started < statement.get("within", 60)
            ):
                time.sleep(0.1)
                result = run(conn, statement)
            if "then_touch" in statement:
                open(statement["then_touch"], "w").close()
            result["seconds"] = time.monotonic() - started
            results.append(result)
    json.dump(results, sys.stdout, default=str)


def run(conn, statement):
    cursor_class = psycopg.ClientCursor if statement.get("simple") else psycopg.Cursor
    try:
        with cursor_class(conn) as cur:
            if statement.get("simple"):
                cur.execute(statement["sql"], statement.get("params"))
            else:
                cur.execute(statement["sql"], statement.get("params"), prepare=True)
            rows = cur.fetchall() if cur.description is not None else []
            return {"ok": True, "rows": [list(r) for r in rows]}
    except psycopg.Error as e:
        sqlstate = getattr(e, "sqlstate", None)
        return {
            "ok": False,
            "sqlstate": sqlstate,
            "message": str(e),
            # Refused by the driver before reaching the server (a NUL byte).
            "client": sqlstate is None,
        }
    except ValueError as e:
        return {"ok": False, "sqlstate": None, "message": str(e), "client": True}


if __name__ == "__main__":
    main()
