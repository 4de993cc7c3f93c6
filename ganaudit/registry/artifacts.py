"""A model version's generator, downloaded from the registry, and the settings it ships with.

Which file is the generator (first match wins):
    1. ``--artifact PATH``: a path inside the version's artifacts.
    2. ``"generator"`` in a ``ganaudit.json`` at the top of the version's artifacts.
    3. The one checkpoint file (``.pt2``, ``.pt``, ``.pth``, ``.ckpt``, ``.bin``,
       ``.safetensors``, ``.torchscript``) among the artifacts; in an MLflow ``pytorch``
       flavour model, the one in its data folder. None, or several, is an error that says so.

``ganaudit.json`` also carries what a weights-only checkpoint needs (the architecture), so a
version is audited the same way by whoever audits it::

    {"generator": "weights/g.safetensors", "arch": "mypkg.nets:Generator",
     "arch_kwargs": {"z_dim": 128}, "output_range": "-1,1"}

Flags given to the command override it. MLflow's ``pytorch`` flavour saved with
``serialization_format="pickle"`` is a full pickle (``data/model.pth``): refused unless
``--trust-checkpoint``, as every pickle is; its ``pt2`` format is audited like any ``.pt2``.
"""
from __future__ import annotations

import json
import logging
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from ganaudit.errors import GanauditError
from ganaudit.registry.client import RegistryUnavailable, _first_line, import_mlflow, is_unavailable

log = logging.getLogger(__name__)

MANIFEST = "ganaudit.json"
CHECKPOINT_SUFFIXES = (".pt2", ".pt", ".pth", ".ckpt", ".bin", ".safetensors", ".torchscript")
# ganaudit.json key -> the types it may hold; each is also an AuditConfig field of the same name.
MANIFEST_KEYS = {"generator": (str,), "arch": (str,), "arch_kwargs": (dict, str), "z_dim": (int,),
                 "output_range": (str,), "num_classes": (int,), "truncation": (int, float)}


class VersionError(GanauditError):
    """The version itself cannot be audited (artifact missing, corrupt, a pickle): a finding."""


@dataclass
class VersionArtifact:
    """The generator file of a version and the generator settings from its ``ganaudit.json``.

    Attributes:
        path: the downloaded checkpoint file.
        relative: its path inside the version's artifacts (recorded in the run).
        settings: AuditConfig fields from ``ganaudit.json`` (without ``generator``).
    """

    path: Path
    relative: str
    settings: dict = field(default_factory=dict)


def download_version(client, version, dest: Path, tracking_uri: str) -> Path:
    """Download every artifact of ``version`` (a ModelVersion) under ``dest``; return the local root."""
    mlflow = import_mlflow()
    uri = f"models:/{version.name}/{version.version}"
    try:  # the concrete location, so that the download uses this registry and no global default
        location = client.get_model_version_download_uri(version.name, version.version)
        local = mlflow.artifacts.download_artifacts(artifact_uri=location, dst_path=str(dest),
                                                   tracking_uri=tracking_uri, registry_uri=tracking_uri)
    except Exception as e:
        if is_unavailable(e):
            raise RegistryUnavailable(f"MLflow registry unreachable while downloading {uri}: {_first_line(e)}") from e
        raise VersionError(f"cannot download the artifacts of {uri} (source {version.source}): {_first_line(e)}") from None
    return Path(local)


def find_generator(root: Path, artifact: str | None, trust_checkpoint: bool) -> VersionArtifact:
    """Pick the generator checkpoint among downloaded artifacts (see the module docstring)."""
    if root.is_file():  # the version's source is a single file
        return VersionArtifact(root, root.name)
    settings = read_manifest(root / MANIFEST) if (root / MANIFEST).is_file() else {}
    chosen = artifact or settings.pop("generator", None)
    settings.pop("generator", None)
    if chosen:
        path = (root / chosen).resolve()
        if root.resolve() not in path.parents or not path.is_file():
            raise VersionError(f"the version's artifacts have no file {chosen!r} (files: {_listing(root)})")
    else:
        path = _only_checkpoint(root)
    _refuse_mlflow_pickle(root, path, trust_checkpoint)
    return VersionArtifact(path, path.relative_to(root.resolve()).as_posix(), settings)


def read_manifest(path: Path) -> dict:
    """The settings in a version's ``ganaudit.json``, checked key by key."""
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise VersionError(f"{MANIFEST} of the version is not readable JSON: {e}") from None
    if not isinstance(data, dict):
        raise VersionError(f"{MANIFEST} of the version must be a JSON object")
    for key, value in data.items():
        if key not in MANIFEST_KEYS:
            raise VersionError(f"{MANIFEST}: unknown key {key!r}; known keys: {', '.join(MANIFEST_KEYS)}")
        if not isinstance(value, MANIFEST_KEYS[key]) or isinstance(value, bool):
            raise VersionError(f"{MANIFEST}: {key!r} has the wrong type ({type(value).__name__})")
    if isinstance(data.get("arch_kwargs"), dict):
        data["arch_kwargs"] = json.dumps(data["arch_kwargs"])
    return data


def _only_checkpoint(root: Path) -> Path:
    flavour_data = _pytorch_flavour_data(root)
    search = flavour_data if flavour_data is not None else root
    found = sorted(p.resolve() for p in search.rglob("*") if p.is_file() and p.suffix.lower() in CHECKPOINT_SUFFIXES)
    if not found:
        raise VersionError(
            f"no generator checkpoint among the version's artifacts (files: {_listing(root)}); log a "
            f"{', '.join(CHECKPOINT_SUFFIXES)} file, or name it with --artifact PATH or \"generator\" in {MANIFEST}")
    if len(found) > 1:
        names = ", ".join(p.relative_to(root.resolve()).as_posix() for p in found[:6])
        raise VersionError(f"several checkpoints among the version's artifacts ({names}): name the generator "
                           f"with --artifact PATH or \"generator\" in {MANIFEST}")
    return found[0]


def _pytorch_flavour_data(root: Path) -> Path | None:
    """The data folder of an MLflow ``pytorch`` flavour model at ``root``, else None."""
    mlmodel = root / "MLmodel"
    if not mlmodel.is_file():
        return None
    import yaml  # a dependency of MLflow itself

    try:
        flavours = (yaml.safe_load(mlmodel.read_text()) or {}).get("flavors", {})
    except yaml.YAMLError as e:
        raise VersionError(f"the version's MLmodel file is not valid YAML: {_first_line(e)}") from None
    pytorch = flavours.get("pytorch") if isinstance(flavours, dict) else None
    if not isinstance(pytorch, dict):
        return None
    return root / str(pytorch.get("model_data", "data"))


def _refuse_mlflow_pickle(root: Path, path: Path, trust: bool) -> None:
    """MLflow's pickle format of the pytorch flavour: refused unless trusted (TorchScript is fine)."""
    if trust or not (path.parent / "pickle_module_info.txt").is_file():
        return
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            if any("/code/" in n for n in z.namelist()):
                return  # a TorchScript archive saved by the pickle format: no pickled code
    raise VersionError(
        f"{path.relative_to(root.resolve()).as_posix()} is MLflow's pytorch flavour in pickle format: loading it "
        "would run code stored in the file. Refused: rerun with --trust-checkpoint only if you trust where it came "
        "from, or log the model with serialization_format='pt2' (or a .pt2 / state_dict artifact)")


def download_run_file(run_id: str, name: str, dest: Path, tracking_uri: str) -> Path:
    """One artifact file of a run (``result.json`` of a baseline audit)."""
    mlflow = import_mlflow()
    try:
        return Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=name, dst_path=str(dest),
                                                        tracking_uri=tracking_uri, registry_uri=tracking_uri))
    except Exception as e:
        if is_unavailable(e):
            raise RegistryUnavailable(f"MLflow registry unreachable while downloading {name} of run {run_id}") from e
        raise GanauditError(f"cannot download {name} of run {run_id}: {_first_line(e)}") from None


def _listing(root: Path, limit: int = 8) -> str:
    files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    return (", ".join(files[:limit]) + (f", ... ({len(files)} in all)" if len(files) > limit else "")) or "none"
