"""Model and cache files load without running code: no unpickling anywhere in the project's code.

`torch.load` must pass `weights_only=True`, which restricts unpickling to tensors and plain
containers. `pickle`, `cloudpickle`, `joblib` and `dill` loaders must not be called at all, and
logged models carry their weights as safetensors, with no pickled Python model.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

from ladnn.models.ladnn import build_model
from ladnn.tracking.pyfunc import load_model_files, save_model_files

REPO_ROOT = Path(__file__).resolve().parents[1]
SOURCE_FOLDERS = ("src", "pipelines", "dashboards")
UNSAFE_LOADERS = {
    ("pickle", "load"),
    ("pickle", "loads"),
    ("cloudpickle", "load"),
    ("cloudpickle", "loads"),
    ("joblib", "load"),
    ("dill", "load"),
    ("dill", "loads"),
    ("pd", "read_pickle"),
    ("pandas", "read_pickle"),
    ("np", "load"),
}


def _calls(path: Path) -> list[tuple[str, str, ast.Call]]:
    """Return (module name, attribute, call) for every `name.attribute(...)` call in `path`."""
    tree = ast.parse(path.read_text("utf-8"), filename=str(path))
    calls = []
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and isinstance(node.func.value, ast.Name)
        ):
            calls.append((node.func.value.id, node.func.attr, node))
    return calls


SOURCES = sorted(path for folder in SOURCE_FOLDERS for path in (REPO_ROOT / folder).rglob("*.py"))


def test_sources_found():
    assert len(SOURCES) > 50


@pytest.mark.parametrize("path", SOURCES, ids=lambda path: str(path.relative_to(REPO_ROOT)))
def test_no_unsafe_loading(path: Path):
    for module, attribute, call in _calls(path):
        where = f"{path.relative_to(REPO_ROOT)}:{call.lineno}"
        assert (module, attribute) not in UNSAFE_LOADERS, f"{where}: {module}.{attribute}"
        if (module, attribute) == ("torch", "load"):
            keywords = {keyword.arg: keyword.value for keyword in call.keywords}
            weights_only = keywords.get("weights_only")
            assert isinstance(weights_only, ast.Constant), (
                f"{where}: torch.load without weights_only"
            )
            assert weights_only.value is True, f"{where}: torch.load(weights_only=False)"


def test_model_files_are_safetensors(tmp_path: Path):
    model, _ = build_model("resnet18", pretrained=False)
    spec = {"backbone": "resnet18", "variant": "ladnn", "image_size": 64}

    artifacts = save_model_files(model, spec, tmp_path)
    loaded, loaded_spec = load_model_files(artifacts["weights"], artifacts["model_spec"])

    assert sorted(path.name for path in tmp_path.iterdir()) == ["model.json", "weights.safetensors"]
    assert loaded_spec == spec
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name


def test_pickled_checkpoint_code_not_run(tmp_path: Path):
    """A checkpoint whose pickle calls a function is rejected by `weights_only=True`."""
    marker = tmp_path / "ran"
    payload = _Exploit(str(marker))
    path = tmp_path / "evil.pt"
    torch.save({"model": payload}, path)

    with pytest.raises(Exception, match="(?i)weights only|unsupported"):
        torch.load(path, map_location="cpu", weights_only=True)
    assert not marker.exists()


class _Exploit:
    """Unpickling this object would create the file `path`."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))
