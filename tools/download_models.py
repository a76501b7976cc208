"""Fetch MuseTalk's weights into models/ in the layout musetalk/loader.py reads.

    python -m tools.download_models                 # v1.5 (default): ~3.9 GB
    python -m tools.download_models --version v1    # v1.0 UNet + openai whisper tiny.pt
    HF_ENDPOINT=https://hf-mirror.com python -m tools.download_models   # through a mirror

Files come from the Hugging Face hub with huggingface_hub (progress bars,
interrupted downloads resume where they stopped, HF_ENDPOINT picks a mirror).
v1.0's whisper tiny.pt comes from OpenAI's URL and is checked by its SHA-256.
Both versions also get BiSeNet face parsing (models/face-parse-bisent/, the
masks genavatar.py draws when it is there): 79999_iter.pth from the HF mirror
MuseTalk's Windows script uses, resnet18-5c106cde.pth from download.pytorch.org
(checked against the SHA-256 prefix in its name, torchvision's convention).
Licences: MuseTalk code MIT; the weights' HF repo is tagged creativeml-openrail-m
(use-based restrictions), sd-vae-ft-mse MIT, whisper MIT, face-parsing.PyTorch MIT.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import sys
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from avatars.faceparse import BACKBONE_WEIGHTS, PARSER_DIR, PARSER_WEIGHTS
from musetalk.loader import VAE_DIR, WHISPER_DIR

logger = logging.getLogger("download_models")

ROOT = Path(__file__).resolve().parents[1]
MUSETALK_REPO = "TMElyralab/MuseTalk"
VAE_REPO = "stabilityai/sd-vae-ft-mse"
WHISPER_REPO = "openai/whisper-tiny"
TINY_PT_SHA256 = "65147644a518d12f04e32d6f3b26facc3f8dd46e5390956a9424a650c0ce22b9"
TINY_PT_URL = f"https://openaipublic.azureedge.net/main/whisper/models/{TINY_PT_SHA256}/tiny.pt"
FACE_PARSE_REPO = "ManyOtherFunctions/face-parse-bisent"
RESNET18_SHA256_PREFIX = "5c106cde"
RESNET18_URL = f"https://download.pytorch.org/models/{BACKBONE_WEIGHTS}"
URL_CHUNK = 1 << 20


@dataclass(frozen=True)
class HubFile:
    """One file of a hub repo, stored at local_dir/filename (subfolders kept)."""

    repo_id: str
    filename: str
    local_dir: str  # relative to models/

    def path(self, models_dir: Path) -> Path:
        return models_dir / self.local_dir / self.filename


@dataclass(frozen=True)
class UrlFile:
    url: str
    sha256: str  # the whole digest, or its leading hex digits where only those are published
    relative: str

    def path(self, models_dir: Path) -> Path:
        return models_dir / self.relative


def plan(version: str) -> list[HubFile | UrlFile]:
    """What `version` needs; the paths match musetalk.loader.required_files."""
    unet_folder, unet_weights = {"v15": ("musetalkV15", "unet.pth"), "v1": ("musetalk", "pytorch_model.bin")}[version]
    files: list[HubFile | UrlFile] = [
        HubFile(MUSETALK_REPO, f"{unet_folder}/musetalk.json", "."),
        HubFile(MUSETALK_REPO, f"{unet_folder}/{unet_weights}", "."),
        HubFile(VAE_REPO, "config.json", VAE_DIR),
        HubFile(VAE_REPO, "diffusion_pytorch_model.bin", VAE_DIR),
    ]
    if version == "v15":
        files += [HubFile(WHISPER_REPO, name, WHISPER_DIR)
                  for name in ("config.json", "pytorch_model.bin", "preprocessor_config.json")]
    else:
        files.append(UrlFile(TINY_PT_URL, TINY_PT_SHA256, f"{WHISPER_DIR}/tiny.pt"))
    files += [HubFile(FACE_PARSE_REPO, PARSER_WEIGHTS, PARSER_DIR),
              UrlFile(RESNET18_URL, RESNET18_SHA256_PREFIX, f"{PARSER_DIR}/{BACKBONE_WEIGHTS}")]
    return files


def fetch_hub(item: HubFile, models_dir: Path) -> Path:
    from huggingface_hub import hf_hub_download

    return Path(hf_hub_download(item.repo_id, item.filename, local_dir=models_dir / item.local_dir))


def fetch_url(item: UrlFile, models_dir: Path) -> Path:
    """HTTP download that resumes a partial file (Range request) and checks the SHA-256."""
    target = item.path(models_dir)
    if target.is_file() and _sha256(target).startswith(item.sha256):
        return target
    partial = target.with_name(target.name + ".incomplete")
    target.parent.mkdir(parents=True, exist_ok=True)
    done = partial.stat().st_size if partial.exists() else 0
    request = urllib.request.Request(item.url, headers={"Range": f"bytes={done}-"} if done else {})
    with urllib.request.urlopen(request, timeout=60) as response:
        if done and response.status != 206:
            done = 0  # the server ignored the range: start over
        total = done + int(response.headers.get("Content-Length", 0))
        with open(partial, "ab" if done else "wb") as out, \
                tqdm(total=total, initial=done, unit="B", unit_scale=True, desc=target.name) as bar:
            while block := response.read(URL_CHUNK):
                out.write(block)
                bar.update(len(block))
    if not _sha256(partial).startswith(item.sha256):
        partial.unlink()
        raise OSError(f"{item.url} arrived corrupted (SHA-256 mismatch): run the script again")
    partial.rename(target)
    return target


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(URL_CHUNK):
            digest.update(block)
    return digest.hexdigest()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", choices=["v15", "v1", "all"], default="v15")
    parser.add_argument("--models-dir", dest="models_dir", type=Path, default=ROOT / "models")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from huggingface_hub import constants

    logger.info("downloading into %s from %s (set HF_ENDPOINT to use a mirror)", args.models_dir, constants.ENDPOINT)
    versions = ["v15", "v1"] if args.version == "all" else [args.version]
    items = list(dict.fromkeys(item for version in versions for item in plan(version)))
    for item in items:
        try:
            path = fetch_hub(item, args.models_dir) if isinstance(item, HubFile) else fetch_url(item, args.models_dir)
        except Exception as exc:  # network and hub errors: say which file and that a rerun resumes
            logger.error("could not fetch %s (%s: %s); run the script again to resume",
                         item.path(args.models_dir), type(exc).__name__, exc)
            return 1
        logger.info("ok %s", path)
    logger.info("done: start the server with `python app.py --model musetalk`")
    return 0


if __name__ == "__main__":
    sys.exit(main())
