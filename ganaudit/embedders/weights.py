"""Weight files of the pretrained embedders: where they come from, where they live, checksums.

Weights are never downloaded implicitly. They are looked up in the standard caches, the torch
hub checkpoint folder first (``$TORCH_HOME/hub/checkpoints``, by default
``~/.cache/torch/hub/checkpoints``, which is where ``torch.hub`` and pytorch-fid put them), or
given with ``--weights PATH``. ``fetch_weights`` (``ganaudit fetch-weights NAME``) downloads one
file on a connected machine; copy the file to the same folder on an offline one.

Checksums: ``sha256`` is the file's full SHA-256. Its provenance is kept beside it, because
not every author publishes one:

- ``published``: the authors publish it (OpenAI's CLIP URLs carry the SHA-256 in their path).
- ``pinned``: the authors publish only a prefix (pytorch-fid's file name carries ``6726825d``)
  or nothing; the full digest is the one several independent projects pin for the same URL and
  byte size. A mismatch on download is an error, so a wrong pin cannot pass silently.
- ``unknown``: nothing trustworthy found; the file is fetched unverified and its digest logged.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from ganaudit.errors import GanauditError
from ganaudit.plumbing import file_sha256

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WeightFile:
    """One downloadable weight file.

    Attributes:
        filename: the file's name in the cache folder (the name torch hub gives it).
        url: where ``fetch_weights`` downloads it from.
        sha256: full SHA-256 hex digest, or None when unknown.
        sha256_source: ``published``, ``pinned`` or ``unknown`` (see the module docstring).
        size: size in bytes where known.
        extra_dirs: other standard folders searched after the torch hub one (``~`` expanded).
    """

    filename: str
    url: str
    sha256: str | None
    sha256_source: str
    size: int | None = None
    extra_dirs: tuple[str, ...] = ()


_DINOV2 = "https://dl.fbaipublicfiles.com/dinov2"
_CLIP = "https://openaipublic.azureedge.net/clip/models"

WEIGHT_FILES: dict[str, WeightFile] = {
    "inception": WeightFile(
        "pt_inception-2015-12-05-6726825d.pth",
        "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth",
        "6726825d0af5f729cebd5821db510b11b1cfad8faad88a03f1befd49fb9129b2", "pinned", 95_628_359,
    ),
    "dinov2-vits14": WeightFile(
        "dinov2_vits14_pretrain.pth", f"{_DINOV2}/dinov2_vits14/dinov2_vits14_pretrain.pth",
        "b938bf1bc15cd2ec0feacfe3a1bb553fe8ea9ca46a7e1d8d00217f29aef60cd9", "pinned", 88_283_115,
    ),
    "dinov2-vitb14": WeightFile(
        "dinov2_vitb14_pretrain.pth", f"{_DINOV2}/dinov2_vitb14/dinov2_vitb14_pretrain.pth",
        "0b8b82f85de91b424aded121c7e1dcc2b7bc6d0adeea651bf73a13307fad8c73", "pinned",
    ),
    "dinov2-vitl14": WeightFile(
        "dinov2_vitl14_pretrain.pth", f"{_DINOV2}/dinov2_vitl14/dinov2_vitl14_pretrain.pth",
        "d5383ea8f4877b2472eb973e0fd72d557c7da5d3611bd527ceeb1d7162cbf428", "pinned", 1_217_586_395,
    ),
    "sscd": WeightFile(
        "sscd_disc_mixup.torchscript.pt",
        "https://dl.fbaipublicfiles.com/sscd-copy-detection/sscd_disc_mixup.torchscript.pt",
        "9f26bd4c848cc19b73d2ae92eea6e04886f61a7b764ceb7a13aeee62e6a6db56", "pinned", 98_791_638,
    ),
    "clip-vitb32": WeightFile(
        "ViT-B-32.pt", f"{_CLIP}/40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af/ViT-B-32.pt",
        "40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af", "published",
        extra_dirs=("~/.cache/clip",),
    ),
    "clip-vitl14": WeightFile(
        "ViT-L-14.pt", f"{_CLIP}/b8cca3fd41ae0c99ba7e8951adf17d267cdb84cd88be6f7c2e0eca1737a03836/ViT-L-14.pt",
        "b8cca3fd41ae0c99ba7e8951adf17d267cdb84cd88be6f7c2e0eca1737a03836", "published",
        extra_dirs=("~/.cache/clip",),
    ),
}


def hub_checkpoint_dir() -> Path:
    """The torch hub checkpoint folder, honouring ``TORCH_HOME`` (read at call time)."""
    import torch.hub

    return Path(torch.hub.get_dir()) / "checkpoints"


def weight_file(name: str) -> WeightFile:
    """The weight record of embedder ``name``; GanauditError when it has none."""
    if name not in WEIGHT_FILES:
        raise GanauditError(
            f"embedder {name!r} has no downloadable weights; ones that do: {', '.join(sorted(WEIGHT_FILES))}"
        )
    return WEIGHT_FILES[name]


def search_dirs(record: WeightFile) -> list[Path]:
    """Where a weight file is looked for, in order."""
    return [hub_checkpoint_dir(), *(Path(d).expanduser() for d in record.extra_dirs)]


def missing_weights_message(name: str) -> str:
    """One line: the file, its checksum, where it goes, and the command that fetches it."""
    record = weight_file(name)
    checksum = (f"SHA-256 {record.sha256} ({record.sha256_source})" if record.sha256
                else "published checksum unknown")
    return (
        f"embedder {name!r} needs the weight file {record.filename} ({checksum}), not found in "
        f"{', '.join(str(d) for d in search_dirs(record))}; put it in {hub_checkpoint_dir()} "
        f"(or pass --weights PATH); on a connected machine `ganaudit fetch-weights {name}` "
        f"downloads it from {record.url}"
    )


def find_weights(name: str, weights: Path | str | None = None) -> Path:
    """The weight file of embedder ``name``: ``weights`` if given, else the first cached copy.

    Raises:
        GanauditError: ``weights`` does not exist, or no cached copy was found (the message says
            which file is needed, its checksum, where to put it and how to fetch it).
    """
    if weights is not None:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise GanauditError(f"--weights {path}: no such file")
        return path
    record = weight_file(name)
    for folder in search_dirs(record):
        candidate = folder / record.filename
        if candidate.is_file():
            log.info("%s: weights %s", name, candidate)
            return candidate
    raise GanauditError(missing_weights_message(name))


def fetch_weights(name: str, dest_dir: Path | str | None = None) -> Path:
    """Download the weight file of embedder ``name`` (``ganaudit fetch-weights NAME``).

    Args:
        name: a registry name with weights (see ``WEIGHT_FILES``).
        dest_dir: target folder; default the torch hub checkpoint folder, where
            ``create_embedder`` looks first.

    Returns:
        The path of the (verified, where a checksum is known) file. An existing file whose
        checksum matches is kept and nothing is downloaded.

    Raises:
        GanauditError: unknown name, no network, or a checksum mismatch.
    """
    import torch.hub

    record = weight_file(name)
    dest_dir = Path(dest_dir).expanduser() if dest_dir is not None else hub_checkpoint_dir()
    target = dest_dir / record.filename
    if target.is_file() and record.sha256 and file_sha256(target) == record.sha256:
        log.info("%s: %s is already there and verified", name, target)
        return target
    try:
        dest_dir.mkdir(parents=True, exist_ok=True)
        # Downloads to a temporary file beside the target, checks the hash, then renames.
        torch.hub.download_url_to_file(record.url, str(target), hash_prefix=record.sha256, progress=True)
    except RuntimeError as e:  # torch hub's hash mismatch
        raise GanauditError(f"fetch-weights {name}: {record.url} did not match its checksum: {e}") from None
    except OSError as e:  # URLError is an OSError: offline, DNS, HTTP errors, disk full
        raise GanauditError(
            f"fetch-weights {name}: cannot download {record.url} to {target}: {getattr(e, 'reason', e)}; "
            f"on an offline machine copy {record.filename} from a connected one into {dest_dir}"
        ) from None
    if record.sha256 is None:
        log.warning("%s: fetched %s unverified (published checksum unknown); its SHA-256 is %s",
                    name, target, file_sha256(target))
    return target

