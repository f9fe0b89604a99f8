"""People sharing one Gradio app through certgate's queue, as the browser does it: each job is
a queue join (POST …/queue/join) and the session's event stream (GET …/queue/data), read until
the job's process_completed. Jobs are submitted one after another, each once certgate's
/usage shows the previous one held (or running), so their order is known; then every job's
gate is opened and the order in which they completed is printed.

Reads on stdin: {"url": "https://localhost:PORT", "prefix": "/gradio_api", "ca": ...,
"admin": "http://127.0.0.1:PORT", "gate": DIR,
"jobs": [{"name": "a0", "cert": ..., "key": ..., "held": N}, ...]} where `held` is the number
of jobs certgate must show waiting once this one is submitted.
With "client": {"name": ..., "cert": ..., "key": ...}, one more job then runs through
gradio_client (its gate opened first), as a script would: its result is "client_output".
Prints: {"completed": ["a0", ...], "outputs": {...}, "errors": [...], "client_output": ...}
"""
import json
import os
import sys
import threading
import time
import uuid

import requests

job = json.load(sys.stdin)
lock = threading.Lock()
completed, outputs, errors = [], {}, []


def waiting():
    usage = requests.get(job["admin"] + "/usage", timeout=5).json()
    q = usage["queues"][0]
    return q["busy"], q["waiting"]


def run(spec):
    s = requests.Session()
    # Per request: a session's own `verify` loses to REQUESTS_CA_BUNDLE when that is set.
    tls = {"verify": job["ca"], "cert": (spec["cert"], spec["key"])}
    session = uuid.uuid4().hex
    base = job["url"] + job["prefix"]
    try:
        r = s.post(
            base + "/queue/join",
            json={"data": [spec["name"]], "fn_index": 0, "session_hash": session,
                  "event_data": None, "trigger_id": None},
            timeout=120,
            **tls,
        )
        r.raise_for_status()
        event_id = r.json()["event_id"]
        with s.get(base + "/queue/data", params={"session_hash": session}, stream=True,
                   timeout=120, **tls) as stream:
            for line in stream.iter_lines():
                if not line.startswith(b"data:"):
                    continue
                msg = json.loads(line[5:])
                if msg.get("msg") == "process_completed" and msg.get("event_id") == event_id:
                    with lock:
                        completed.append(spec["name"])
                        outputs[spec["name"]] = msg["output"]["data"][0]
                    return
        raise RuntimeError("the stream ended without process_completed")
    except Exception as e:  # noqa: BLE001 - reported to the test
        with lock:
            errors.append(f"{spec['name']}: {type(e).__name__}: {e}")


def until(cond, what):
    for _ in range(1000):
        if cond():
            return
        time.sleep(0.01)
    raise SystemExit(f"timed out waiting for {what}: (busy, waiting) = {waiting()}, {errors}")


threads = []
for spec in job["jobs"]:
    t = threading.Thread(target=run, args=(spec,))
    t.start()
    threads.append(t)
    until(lambda: waiting() == (1, spec["held"]), f"{spec['name']} to be held or running")
for spec in job["jobs"]:
    open(os.path.join(job["gate"], spec["name"]), "w").close()
for t in threads:
    t.join(timeout=120)
client_output = None
if job.get("client"):
    import ssl

    from gradio_client import Client

    c = job["client"]
    open(os.path.join(job["gate"], c["name"]), "w").close()
    try:
        tls = ssl.create_default_context(cafile=job["ca"])
        tls.load_cert_chain(c["cert"], c["key"])
        client = Client(job["url"] + "/", ssl_verify=tls, verbose=False)
        client_output = client.predict(c["name"], api_name="/job")
    except Exception as e:  # noqa: BLE001 - reported to the test
        errors.append(f"gradio_client: {type(e).__name__}: {e}")
json.dump({"completed": completed, "outputs": outputs, "errors": errors,
           "client_output": client_output}, sys.stdout)
