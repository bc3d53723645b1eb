"""Export the callback's latest TensorBoard images of a run as PNGs (for the README).

python docs/export_assets.py lightning_logs/shortcut_demo/version_0 docs/
"""

import sys
from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator


def main(run_dir: str, out_dir: str) -> None:
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


if __name__ == "__main__":
    main(*sys.argv[1:3])
