"""A Gradio app that runs one job at a time (concurrency_limit=1), as a GPU app does, for the
queue tests. A job named X runs until the file GATE/X exists, so the test decides when each
job ends; it returns "done X".

Usage: gradio_queue_app.py PORT GATE_DIR
"""
import os
import sys
import time

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr  # noqa: E402

port, gate = int(sys.argv[1]), sys.argv[2]


def job(name):
    # Polling a file is how the test, another process, ends a job.
    while not os.path.exists(os.path.join(gate, name)):
        time.sleep(0.02)
    return f"done {name}"


with gr.Blocks() as demo:
    text = gr.Textbox()
    out = gr.Textbox()
    gr.Button("Run").click(job, text, out, api_name="job", concurrency_limit=1)

demo.queue().launch(
    server_name="127.0.0.1", server_port=port, quiet=True, prevent_thread_lock=True
)
print("ready", flush=True)
demo.block_thread()
