"""The restored model (training/build.py): built on the meta device and given the checkpoint's
tensors, unless it holds tensors its state dict does not (a tensor attribute, a torchmetrics
metric's states): then it is built for real, so they hold what its construction gives them."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from hpsearch.task import Task
from hpsearch.training import state as st
from hpsearch.training.build import holds_meta, restored_model


class Scaled(nn.Module):
    def __init__(self, attributes: bool) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 2)
        if attributes:  # kept outside the state dict, as torchmetrics keeps a metric's states
            self.scale = torch.tensor(3.0)
            self.defaults = {"total": torch.zeros(2), "seen": [torch.ones(1)]}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x) * getattr(self, "scale", 1.0)


class Builds(Task):
    def __init__(self, attributes: bool) -> None:
        self.attributes = attributes
        self.devices: list[str] = []

    def model(self, hparams: dict) -> nn.Module:  # type: ignore[type-arg]
        self.devices.append(torch.empty(0).device.type)  # meta inside the meta build
        return Scaled(self.attributes)


@pytest.mark.parametrize(("attributes", "builds"), [(False, ["meta"]), (True, ["meta", "cpu"])])
def test_a_model_is_built_for_real_only_when_it_holds_tensors_outside_its_state_dict(
    attributes: bool, builds: list[str]
) -> None:
    torch.manual_seed(0)
    saved = Scaled(attributes)
    tensors, aliases = st.model_state(saved)
    task = Builds(attributes)
    model = restored_model(
        task, {}, {"model": dict(tensors)}, {"model_aliases": aliases}, torch.device("cpu")
    )
    assert task.devices == builds and not holds_meta(model)
    assert torch.equal(model.lin.weight, saved.lin.weight)  # the checkpoint's, not the build's
    x = torch.randn(3, 4)
    assert torch.equal(model(x), saved(x))
    if attributes:
        assert model.defaults["seen"][0].tolist() == [1.0]


def test_holds_meta_looks_into_attributes_dicts_and_lists() -> None:
    with torch.device("meta"):
        model = Scaled(True)
    model.lin.to_empty(device="cpu")
    assert holds_meta(model)
    model.scale = torch.tensor(1.0)
    model.defaults["total"] = torch.zeros(2)
    assert holds_meta(model)  # the list inside the dict still holds a meta tensor
    model.defaults["seen"] = [torch.ones(1)]
    assert not holds_meta(model)
