#!/usr/bin/env python3
"""Runs SQL statements, in order, on current ClickHouse through chdb (an
in-process ClickHouse engine from PyPI), in a fresh database: the test suite
checks that what runs on Debian's ClickHouse 18.16 also runs on today's.

usage: check-current-clickhouse.py STATEMENTS.json
STATEMENTS.json is a JSON array of SQL strings. Exits 1 at the first
statement that fails, naming it and ClickHouse's error.
"""
import json
import sys

from chdb import session

statements = json.load(open(sys.argv[1]))
s = session.Session()
s.query("CREATE DATABASE IF NOT EXISTS spendstream_check")
s.query("USE spendstream_check")
version = str(s.query("SELECT version()", "CSV")).strip()
for i, statement in enumerate(statements):
    try:
        s.query(statement, "CSV")
    except Exception as error:  # chdb raises its own exception types
        print(f"statement {i} failed on ClickHouse {version}:\n{statement}\n{error}")
        sys.exit(1)
print(f"{len(statements)} statements ran on ClickHouse {version}")
