"""Errors of the app's code met on the operator's side come out as one-line RegistryErrors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from fedcloud.core.errors import RegistryError
from fl.app.store import sha256_file
from fl.registry.download import load_model


def _downloaded(tmp_path: Path, spec: dict[str, object]) -> Path:
    path = tmp_path / "m.pt"
    torch.save({"w": torch.zeros(1)}, path)
    card = {"model_spec": spec, "sha256": sha256_file(path)}
    path.with_suffix(".json").write_text(json.dumps(card), encoding="utf-8")
    return path


def test_a_card_naming_an_unknown_model_is_a_registry_error(tmp_path: Path) -> None:
    path = _downloaded(tmp_path, {"model": "resnet", "num_classes": "3"})
    with pytest.raises(RegistryError, match=r"model card of .*m\.pt: unknown model 'resnet'\. "
                                            r"To fix: use covid_cnn or cifar_cnn\."):
        load_model(path)


def test_a_card_with_an_impossible_spec_is_a_registry_error(tmp_path: Path) -> None:
    path = _downloaded(tmp_path, {"model": "covid_cnn", "width": "4", "image_size": "30",
                                  "num_classes": "3"})
    with pytest.raises(RegistryError, match=r"image size divisible by 8, got 30"):
        load_model(path)
