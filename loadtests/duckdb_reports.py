"""DuckDB's side of loadtests/reports_vs_duckdb.rs: the same reports, with the
same latest-version rule, on the same active Parquet files of the lake.

Reads a JSON plan on stdin:
  {"files": [...absolute paths...], "tenant": "...", "repeats": N,
   "queries": {"name": "SQL over the view `latest`", ...}}
and prints {"name": {"ms": [...], "rows": [[group, currency, count, sum], ...]}}.
Two threads, as the machine the API runs on has two cores.
"""

import json
import sys
import time

import duckdb


def main():
    plan = json.load(sys.stdin)
    con = duckdb.connect()
    con.execute("SET threads = 2")
    files = ", ".join("'" + f.replace("'", "''") + "'" for f in plan["files"])
    tenant = plan["tenant"].replace("'", "''")
    # Every version of the tenant's rows (partition columns from the paths),
    # then the latest version of each expense.
    con.execute(
        f"""CREATE VIEW latest AS
            SELECT * FROM (
              SELECT * FROM read_parquet([{files}], hive_partitioning = true)
              WHERE tenant_id = '{tenant}'
            )
            QUALIFY row_number() OVER (PARTITION BY expense_id ORDER BY version DESC) = 1"""
    )
    out = {}
    for name, sql in plan["queries"].items():
        timings = []
        rows = None
        for _ in range(plan["repeats"]):
            started = time.perf_counter()
            rows = con.execute(sql).fetchall()
            timings.append((time.perf_counter() - started) * 1000)
        out[name] = {"ms": timings, "rows": [[str(v) for v in r] for r in rows]}
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
