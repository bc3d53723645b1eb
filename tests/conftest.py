import os

import pytest
import timm
import torch

from tests.helpers import train_vit

# Two CPU cores on the reference machine: avoid oversubscription when tests run in one process.
torch.set_num_threads(min(2, os.cpu_count() or 1))
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")


@pytest.fixture(scope="session")
def trained_vit() -> torch.nn.Module:
    torch.manual_seed(0)
    model = timm.create_model(
        "vit_tiny_patch16_224",
        pretrained=False,
        img_size=32,
        patch_size=8,
        num_classes=4,
        depth=2,
        embed_dim=64,
        num_heads=4,
    )
    return train_vit(model)
