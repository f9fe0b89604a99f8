"""A small Gradio app for the upstream-group tests: an image in, the image inverted out, and
the name of the process that did it. Gradio keeps each session and its queue in this
process's memory, which is what the tests need certgate's affinity to respect.

Usage: gradio_app.py PORT NAME
"""
import os
import sys

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr  # noqa: E402

port, name = int(sys.argv[1]), sys.argv[2]


def colorize(image):
    return 255 - image, name


with gr.Blocks() as demo:
    source = gr.Image(type="numpy")
    result = gr.Image(type="numpy")
    worker = gr.Textbox()
    gr.Button("Colorize").click(colorize, source, [result, worker], api_name="colorize")

demo.queue().launch(
    server_name="127.0.0.1", server_port=port, quiet=True, prevent_thread_lock=True
)
# The test waits for this line instead of polling the port.
print("ready", flush=True)
demo.block_thread()
