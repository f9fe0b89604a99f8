"""Uploads to paths certgate refuses, as Python clients send them, and reports what came back.

Usage: upload_client.py CASES_JSON, where CASES_JSON is
  {"port": N, "ca": PATH, "cert": PATH, "key": PATH,
   "cases": [{"path": "/x", "size": BYTES, "status": 403, "error": "forbidden",
              "attempts": N, "headers": {...}}]}

Each attempt sends the body twice: raw with `http.client` (Content-Length, the whole body
written before the response is read), and as a multipart upload with `requests` (the DeOldify
client's way). Prints one JSON object: how many attempts read the expected refusal, and each
one that did not (an exception, or another status or body), so the test can show them all.
"""

import http.client
import json
import ssl
import sys

import requests


def check(got_status, got_body, case):
    try:
        error = json.loads(got_body).get("error")
    except ValueError:
        error = None
    if got_status == case["status"] and error == case["error"]:
        return None
    return f"got {got_status} {got_body[:200]!r}"


def with_http_client(ctx, args, case, body):
    conn = http.client.HTTPSConnection("localhost", args["port"], context=ctx, timeout=30)
    try:
        headers = {"Content-Type": "application/octet-stream", **case.get("headers", {})}
        conn.request("POST", case["path"], body=body, headers=headers)
        resp = conn.getresponse()
        return check(resp.status, resp.read().decode("utf-8", "replace"), case)
    finally:
        conn.close()


def with_requests(session, args, case, body):
    files = {"file": ("photo.jpg", body, "image/jpeg")}
    resp = session.post(
        f"https://localhost:{args['port']}{case['path']}",
        files=files,
        data={"render_factor": "35"},
        headers=case.get("headers", {}),
        timeout=30,
    )
    return check(resp.status_code, resp.text, case)


def main():
    args = json.loads(sys.argv[1])
    ctx = ssl.create_default_context(cafile=args["ca"])
    ctx.load_cert_chain(args["cert"], args["key"])
    session = requests.Session()
    # REQUESTS_CA_BUNDLE in the environment would otherwise replace the test CA.
    session.trust_env = False
    session.verify = args["ca"]
    session.cert = (args["cert"], args["key"])
    ok, failures = 0, []
    for case in args["cases"]:
        body = bytes(range(256)) * (case["size"] // 256) + b"x" * (case["size"] % 256)
        for attempt in range(case["attempts"]):
            for name, send in (("http.client", lambda: with_http_client(ctx, args, case, body)),
                               ("requests", lambda: with_requests(session, args, case, body))):
                try:
                    problem = send()
                except Exception as e:  # the failure under test is exactly an exception
                    problem = f"{type(e).__name__}: {e}"
                if problem is None:
                    ok += 1
                else:
                    failures.append(f"{name} {case['path']} {case['size']} B #{attempt}: {problem}")
    print(json.dumps({"ok": ok, "failures": failures}))


if __name__ == "__main__":
    main()
