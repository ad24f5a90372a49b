"""What the adapter takes from Lightning (and torchmetrics, which Lightning depends on), under
either package name."""

from __future__ import annotations

try:
    from lightning.fabric.utilities.apply_func import move_data_to_device
    from lightning.pytorch import LightningModule
    from lightning.pytorch.utilities.data import extract_batch_size
except ImportError:  # the older package name, same code
    try:
        from lightning_fabric.utilities.apply_func import move_data_to_device
        from pytorch_lightning import LightningModule  # type: ignore[assignment]
        from pytorch_lightning.utilities.data import extract_batch_size
    except ImportError as exc:
        raise ImportError(
            "hpsearch.integrations.lightning needs Lightning: pip install 'hpsearch[lightning]'"
        ) from exc
from torchmetrics import Metric

__all__ = ["LightningModule", "Metric", "extract_batch_size", "move_data_to_device"]
