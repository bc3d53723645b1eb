"""The demo configs on several schedules: does the shortcut demo warn, at its last evaluation
too, and does the clean demo never warn?

Runs ``lightning-vitrcam fit --config configs/<config>`` with ``--trainer.max_epochs`` set to
each schedule (the cosine learning-rate schedule stretches with it), without a logger, and
prints per run the epochs the callback warned at, the final validation accuracy and the final
accuracy on patch-free images.

    python benchmarks/demo_schedules.py                         # 3, 5 and 10 epochs, both configs
    python benchmarks/demo_schedules.py --epochs 3 --configs shortcut_demo.yaml
"""

from __future__ import annotations

import argparse
import re
import tempfile
import time
import warnings
from pathlib import Path

from lightning_vitrcam import PossibleShortcutWarning
from lightning_vitrcam.cli import run_fit_cli

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def run(config: str, epochs: int) -> dict[str, object]:
    with tempfile.TemporaryDirectory() as root, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", PossibleShortcutWarning)
        start = time.perf_counter()
        cli = run_fit_cli(
            [
                "fit",
                "--config",
                str(CONFIGS / config),
                f"--trainer.max_epochs={epochs}",
                "--trainer.logger=false",
                "--trainer.enable_progress_bar=false",
                "--trainer.enable_model_summary=false",
                "--trainer.enable_checkpointing=false",
                f"--trainer.default_root_dir={root}",
            ]
        )
        seconds = time.perf_counter() - start
    messages = [str(w.message) for w in caught if issubclass(w.category, PossibleShortcutWarning)]
    warned = sorted({int(m) for text in messages for m in re.findall(r"at epoch (\d+)", text)})
    model, data = cli.model, cli.datamodule
    return {
        "config": config,
        "epochs": epochs,
        "warned": warned,
        "val_acc": float(cli.trainer.callback_metrics["val/acc"]),
        "patch_free_acc": model.evaluate_accuracy(data.patch_free_dataloader()),
        "seconds": seconds,
        "last": messages[-1] if messages else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", nargs="+", type=int, default=[3, 5, 10])
    parser.add_argument("--configs", nargs="+", default=["shortcut_demo.yaml", "clean_demo.yaml"])
    args = parser.parse_args()
    print("| config | epochs | warned at epochs | final val acc | final patch-free acc | s |")
    print("|---|---|---|---|---|---|")
    rows = []
    for config in args.configs:
        for epochs in args.epochs:
            r = run(config, epochs)
            rows.append(r)
            print(
                f"| {r['config']} | {epochs} | {r['warned'] or '-'} | {r['val_acc']:.2f} |"
                f" {r['patch_free_acc']:.2f} | {r['seconds']:.0f} |",
                flush=True,
            )
    for r in rows:
        if r["last"]:
            print(f"\n{r['config']} at {r['epochs']} epochs, last warning:\n  {r['last']}")


if __name__ == "__main__":
    main()
