#!/usr/bin/env python3
"""Replays issue 7's findings against a spendstream binary (old or new).

usage: hostile_check.py BINARY
"""
import base64, gzip, hashlib, hmac, http.client, json, os, re, shutil, socket
import subprocess, sys, tempfile, threading, time

BIN = sys.argv[1] if len(sys.argv) > 1 else sys.exit(__doc__)
SECRET = b"hostile-check-secret-hostile-check-secret"


def b64(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def token(tenant, roles=("ingest", "read")):
    head = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = b64(json.dumps({"tenant": tenant, "roles": list(roles),
                           "exp": int(time.time()) + 3600}).encode())
    sig = hmac.new(SECRET, f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64(sig)}"


def start(data):
    env = dict(os.environ, SPENDSTREAM_JWT_SECRET=SECRET.decode(),
               SPENDSTREAM_LOG_LEVEL="error")
    p = subprocess.Popen([BIN, "up", "--data-dir", data, "--listen", "127.0.0.1:0",
                          "--compact-interval-secs", "0"],
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, text=True)
    for line in p.stdout:
        m = re.search(r"is up on http://([\d.]+):(\d+)", line)
        if m:
            threading.Thread(target=lambda: [None for _ in p.stdout], daemon=True).start()
            return p, m.group(1), int(m.group(2))
    raise SystemExit("server did not start")


def hwm(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024


def post(host, port, tok, body, headers=None, timeout=600):
    c = http.client.HTTPConnection(host, port, timeout=timeout)
    h = {"Authorization": f"Bearer {tok}", "Content-Type": "application/x-ndjson"}
    h.update(headers or {})
    c.request("POST", "/v1/expenses", body=body, headers=h)
    r = c.getresponse()
    data = r.read()
    c.close()
    return r.status, data


def rec(i, **kw):
    r = {"source": "s", "external_id": f"x{i}", "account_id": "a",
         "transaction_date": "2026-03-01", "amount_minor": 100 + i, "currency": "USD"}
    r.update(kw)
    return json.dumps(r)


def count(host, port, tok):
    c = http.client.HTTPConnection(host, port, timeout=30)
    c.request("GET", "/v1/reports/spend?group_by=currency&status=all&limit=1000",
              headers={"Authorization": f"Bearer {tok}"})
    body = json.loads(c.getresponse().read())
    return sum(r["count"] for r in body["rows"])


def wait_count(host, port, tok, want, within=60):
    deadline = time.time() + within
    n = -1
    while time.time() < deadline:
        n = count(host, port, tok)
        if n >= want:
            return n
        time.sleep(0.5)
    return n


def memory(host, port, pid):
    before = hwm(pid)
    body = b"1\n" * (32 << 20)  # 64 MiB
    t = time.time()
    status, data = post(host, port, token("acme"), body)
    return (f"64 MiB of '1\\n' lines: {status}, answer {len(data)} bytes, "
            f"peak RSS +{(hwm(pid) - before) >> 20} MiB, {time.time() - t:.1f} s")


def slow(host, port):
    tok = token("slowpoke")
    socks = []
    for _ in range(300):
        s = socket.create_connection((host, port))
        s.sendall((f"POST /v1/expenses HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {tok}\r\n"
                   "Content-Type: application/x-ndjson\r\nContent-Length: 100000\r\n\r\n").encode())
        socks.append(s)
    stop = threading.Event()

    def trickle():
        while not stop.is_set():
            for s in socks:
                try:
                    s.send(b" ")
                except OSError:
                    pass
            time.sleep(0.5)
    threading.Thread(target=trickle, daemon=True).start()
    time.sleep(2)
    t = time.time()
    try:
        status, data = post(host, port, token("acme"), (rec(1) + "\n").encode(), timeout=20)
        other = f"{status} in {time.time() - t:.2f} s"
    except Exception as e:
        other = f"no answer ({e})"
    # Which slow connections did the server close within 150 s?
    deadline = time.time() + 150
    open_ = set(range(len(socks)))
    for s in socks:
        s.setblocking(False)
    while open_ and time.time() < deadline:
        for i in list(open_):
            try:
                if socks[i].recv(65536) == b"":
                    open_.discard(i)
            except BlockingIOError:
                pass
            except OSError:
                open_.discard(i)
        time.sleep(0.5)
    stop.set()
    for s in socks:
        s.close()
    return f"300 slow connections: another tenant got {other}; {len(open_)} still open after 150 s"


def pans(host, port):
    body = "\n".join([
        rec(1, related_external_id="4111 1111 1111 1111"),
        rec(2, source="visa-4111111111111111"),
        rec(3, metadata={"5500000000000004": "x"}),
    ]).encode()
    status, data = post(host, port, token("acme"), body)
    return f"PANs in related_external_id/source/metadata key: {status} accepted={json.loads(data).get('accepted')}"


def gzip_twice(host, port):
    payload = (rec(7) + "\n" + rec(8) + "\n").encode()
    h = {"Content-Encoding": "gzip", "Idempotency-Key": "gz-twice"}
    s1, _ = post(host, port, token("acme"), gzip.compress(payload, mtime=1), h)
    s2, d2 = post(host, port, token("acme"), gzip.compress(payload, mtime=2), h)
    return f"same payload gzipped twice, one key: {s1} then {s2} {d2[:60]!r}"


def main():
    d = tempfile.mkdtemp()
    p, host, port = start(d)
    try:
        time.sleep(1)
        print(memory(host, port, p.pid), flush=True)
        print(pans(host, port), flush=True)
        print(gzip_twice(host, port), flush=True)
        print(slow(host, port), flush=True)
        # Wipe the log, keep the lake.
        tok = token("wipe")
        post(host, port, tok, "".join(rec(i) + "\n" for i in range(3000)).encode())
        n1 = wait_count(host, port, tok, 3000)
    finally:
        p.terminate()
        p.wait()
    shutil.rmtree(os.path.join(d, "log"))
    p, host, port = start(d)
    try:
        post(host, port, tok, "".join(rec(i) + "\n" for i in range(3000, 3500)).encode())
        n2 = wait_count(host, port, tok, 3500, within=30)
        print(f"wiped log, kept lake: {n1} records before, {n2} of 3500 after 500 more", flush=True)
    finally:
        p.terminate()
        p.wait()
        shutil.rmtree(d)


main()
