"""Several people using a Gradio app through certgate, each with a client certificate of their
own, through gradio_client: the upload, the queue join, the SSE stream of events and the
download of the result image — a whole Gradio session. For each person, prints which process
served each of their two runs and whether the result image is right.

Reads on stdin: {"url": ..., "ca": ..., "users": [[cert_file, key_file], ...]}.
Prints: [{"workers": [name, name], "ok": true, "error": null}, ...]
"""
import json
import os
import ssl
import sys
import tempfile

import numpy as np
from PIL import Image

job = json.load(sys.stdin)

from gradio_client import Client, handle_file  # noqa: E402

work = tempfile.mkdtemp()
source = os.path.join(work, "in.png")
pixels = np.zeros((4, 4, 3), dtype=np.uint8)
pixels[:, :, 0] = 200
Image.fromarray(pixels).save(source)

out = []
for cert, key in job["users"]:
    entry = {"workers": [], "ok": True, "error": None}
    try:
        # gradio_client hands ssl_verify to httpx as `verify`, which takes an SSL context:
        # the way to give it our CA and this person's certificate.
        tls = ssl.create_default_context(cafile=job["ca"])
        tls.load_cert_chain(cert, key)
        client = Client(job["url"], ssl_verify=tls, verbose=False, download_files=work)
        for _ in range(2):
            image_path, worker = client.predict(handle_file(source), api_name="/colorize")
            got = np.asarray(Image.open(image_path).convert("RGB"))
            entry["ok"] &= bool((got == 255 - pixels).all())
            entry["workers"].append(worker)
    except Exception as e:  # noqa: BLE001 - the test reports what went wrong
        entry["ok"] = False
        entry["error"] = f"{type(e).__name__}: {e}"
    out.append(entry)
json.dump(out, sys.stdout)
