"""Drives Debian's Chromium (its own TLS stack, BoringSSL) through Playwright for the
onboarding tests: open pages, read what a person sees, take screenshots, click the download.

Usage: browser.py HOME STEPS_JSON
  HOME        the profile home: Chromium takes certificates (and trusted CAs) from
              HOME/.pki/nssdb; which one it presents is chosen by the AutoSelectCertificateForUrls
              policy the test writes
  STEPS_JSON  a list of {"url", "screenshot"?, "width"?, "download"?} run in one browser;
              "download" is a path: click #download on the page and save the file there

Prints one JSON object per step: status, title, text (the page as rendered text), password
(the text of #password, when present), reason (#reason's data-reason, when present).
"""

import json
import os
import sys

from playwright.sync_api import sync_playwright

ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def main():
    home, steps = sys.argv[1], json.loads(sys.argv[2])
    chromium = os.environ.get("CERTGATE_TEST_CHROMIUM", "/usr/bin/chromium")
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=chromium, args=ARGS, env={**os.environ, "HOME": home}, timeout=30000
        )
        try:
            for step in steps:
                page = browser.new_page(
                    viewport={"width": step.get("width", 900), "height": 900}
                )
                response = page.goto(step["url"], timeout=20000)
                out = {
                    "status": response.status if response else None,
                    "title": page.title(),
                    "text": page.inner_text("body"),
                }
                if page.locator("#password").count():
                    out["password"] = page.inner_text("#password")
                if page.locator("#reason").count():
                    out["reason"] = page.get_attribute("#reason", "data-reason")
                if step.get("screenshot"):
                    page.screenshot(path=step["screenshot"], full_page=True)
                if step.get("download"):
                    with page.expect_download(timeout=20000) as d:
                        page.click("#download")
                    d.value.save_as(step["download"])
                    out["downloaded"] = d.value.suggested_filename
                print(json.dumps(out), flush=True)
                page.close()
        finally:
            browser.close()


if __name__ == "__main__":
    main()
