"""Export the pictures the README shows: the callback's latest TensorBoard images of a run,
and a screenshot of a report.html taken in headless Chromium.

    python docs/export_assets.py lightning_logs/shortcut_demo/version_0 docs/
    python docs/export_assets.py --report lightning_logs/.../vitrcam/report.html docs/report.png

The screenshot needs Chromium (Debian: ``apt-get install chromium``).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path


def images(run_dir: str, out_dir: str) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(run_dir, size_guidance={"images": 0}).Reload()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for tag in acc.Tags()["images"]:
        if not tag.startswith("vitrcam/"):
            continue
        event = acc.Images(tag)[-1]
        path = out / f"{tag.split('/', 1)[1]}.png"
        path.write_bytes(event.encoded_image_string)
        print(f"{tag} (step {event.step}) -> {path} ({event.width}x{event.height})")


def screenshot(html: str, png: str, width: int = 1200, height: int = 1800) -> None:
    """A screenshot of ``html`` (a local file) in headless Chromium."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        raise SystemExit("Chromium not found: apt-get install chromium")
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run(
            [
                browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--no-first-run", f"--user-data-dir={profile}",
                f"--window-size={width},{height}", f"--screenshot={Path(png).resolve()}",
                Path(html).resolve().as_uri(),
            ],
            check=True,
            capture_output=True,
        )  # fmt: skip
    print(f"{html} -> {png}")


if __name__ == "__main__":
    if sys.argv[1] == "--report":
        screenshot(*sys.argv[2:4])
    else:
        images(*sys.argv[1:3])
