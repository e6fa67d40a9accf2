#!/usr/bin/env python3
"""Generates demo/card-feed.ndjson, the sample card feed `spendstream up --demo`
loads. Deterministic (fixed seed): rerunning it gives the same file."""
import json, random
from datetime import date, timedelta

random.seed(20261125)
MERCHANTS = [  # descriptor, mcc, typical amount range (major units, USD-ish)
    ("SQ *BLUE BOTTLE COFFEE #0042", 5814, (3, 15)),
    ("TST* JOE'S DINER   OAKLAND", 5812, (12, 80)),
    ("DELTA AIR LINES 0062345", 3058, (180, 1400)),
    ("UNITED AIRLINES 0162", 3000, (150, 1200)),
    ("MARRIOTT HOTELS #123", 3509, (140, 600)),
    ("HILTON GARDEN INN 4411", 3504, (120, 420)),
    ("HERTZ RENT-A-CAR 0231", 3357, (60, 400)),
    ("UBER   *TRIP", 4121, (8, 70)),
    ("LYFT   *RIDE", 4121, (7, 60)),
    ("AMAZON.COM*2K3L45", 5942, (10, 300)),
    ("SHELL OIL 57442191", 5542, (25, 110)),
    ("WHOLE FOODS MKT #10234", 5411, (15, 160)),
    ("GITHUB, INC.", 5734, (4, 210)),
    ("AWS EMEA", 4816, (20, 3000)),
    ("PAYPAL *ZOOM.US", 4814, (15, 250)),
    ("STAPLES 00012", 5943, (9, 250)),
    ("WEWORK 0412", 6513, (200, 900)),
    ("DELOITTE CONSULTING", 8931, (800, 9000)),
]
CURRENCIES = [("USD", 2, 60), ("EUR", 2, 14), ("GBP", 2, 8), ("JPY", 0, 6), ("CAD", 2, 5), ("BHD", 3, 3), ("KRW", 0, 2), ("CHF", 2, 2)]
RATE = {"USD": 1, "EUR": 0.9, "GBP": 0.8, "JPY": 150, "CAD": 1.35, "BHD": 0.376, "KRW": 1350, "CHF": 0.88}
SOURCES = ["visa-commercial", "amex-corporate", "expense-app"]

def amount(lo, hi, cur, exp):
    minor = random.randint(int(lo * RATE[cur] * 10**exp), int(hi * RATE[cur] * 10**exp))
    if exp == 0:
        return str(minor)
    s = str(minor).rjust(exp + 1, "0")
    return s[:-exp] + "." + s[-exp:]

records = []
start = date(2026, 8, 1)
for i in range(3000):
    desc, mcc, (lo, hi) = random.choice(MERCHANTS)
    cur, exp, _ = random.choices(CURRENCIES, weights=[c[2] for c in CURRENCIES])[0]
    source = random.choice(SOURCES)
    status = random.choices(["posted", "pending", "reversed", "declined"], weights=[80, 12, 5, 3])[0]
    d = start + timedelta(days=random.randint(0, 115))
    rec = {
        "source": source,
        "external_id": f"{source[:4]}-{100000 + i}",
        "account_id": random.choice([f"card_tok_{random.randint(1, 60):04d}", f"**** {random.randint(1000, 9999)}"]),
        "status": status,
        "transaction_date": d.isoformat(),
        "posted_at": f"{(d + timedelta(days=1)).isoformat()}T{random.randint(0, 23):02d}:{random.randint(0, 59):02d}:00Z",
        "amount": amount(lo, hi, cur, exp),
        "currency": cur,
        "merchant_name": desc,
        "merchant_mcc": str(mcc),
        "employee_id": f"emp-{random.randint(1, 40):03d}",
    }
    if random.random() < 0.1:
        rec["memo"] = random.choice(["client dinner", "team offsite", "conference travel", "renewal"])
    if random.random() < 0.05:
        rec["metadata"] = {"cost_center": str(random.randint(100, 120)), "billable": random.random() < 0.5}
    records.append(rec)

# Pending authorisations that later posted: the same identity sent again is a
# new version of one expense, not a second expense.
for rec in random.sample([r for r in records if r["status"] == "pending"], 150):
    later = dict(rec, status="posted")
    records.append(later)

# A few records the edge must reject, each with its own code.
records.append(dict(records[0], external_id="bad-1", currency="XYZ"))
records.append(dict(records[1], external_id="bad-2", memo="card 4111 1111 1111 1111"))
records.append(dict(records[2], external_id="bad-3", currency="USD", amount="12.345"))

with open("demo/card-feed.ndjson", "w") as f:
    for r in records:
        f.write(json.dumps(r, separators=(",", ":")) + "\n")
print(len(records), "records")
