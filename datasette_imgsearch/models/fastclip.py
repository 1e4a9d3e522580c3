"""CLIP's two towers in plain torch, read straight from a model folder: a cold start without the import chain.

``import sentence_transformers`` costs four times ``import torch`` (it pulls in transformers, its CLIP
classes and much more), and a one-off ``search`` paid it every time. The ViT-B/32 recipe needs far
less: a byte-level BPE tokenizer (the ``tokenizers`` library), the weights (``safetensors`` or a torch
file), and two pre-norm transformers. This module runs exactly those, the way transformers' CLIPModel
computes them, for the folder layouts CLIP models ship in: a Hugging Face CLIP folder, and a
sentence-transformers folder whose single module is one (``clip-ViT-B-32`` on the hub).

Anything else, or anything unusual in one of those (another activation, another image processor, a
missing tokenizer file), makes :func:`load` return None and the caller falls back to
sentence-transformers. ``tests/test_fastclip.py`` checks vectors and tokens against it.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from datasette_imgsearch.models.names import hub_repository

ACTIVATIONS = ("quick_gelu", "gelu")
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
PROCESSOR_DEFAULTS: dict[str, Any] = {  # CLIPImageProcessor's own defaults, for keys a config leaves out
    "do_resize": True, "size": {"shortest_edge": 224}, "resample": 3, "do_center_crop": True,
    "crop_size": {"height": 224, "width": 224}, "do_rescale": True, "rescale_factor": 1 / 255,
    "do_normalize": True, "image_mean": CLIP_MEAN, "image_std": CLIP_STD, "do_convert_rgb": True,
}
# CLIPTextConfig's and CLIPVisionConfig's defaults (the ViT-B/32 shapes), which save_pretrained leaves out.
TEXT_DEFAULTS: dict[str, Any] = {"num_hidden_layers": 12, "num_attention_heads": 8, "eos_token_id": 49407,
                                 "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5}
VISION_DEFAULTS: dict[str, Any] = {"num_hidden_layers": 12, "num_attention_heads": 12, "patch_size": 32,
                                   "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5}
CLIP_SPLIT = r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""


def clip_folder(folder: Path) -> Path | None:
    """The folder holding the CLIP files: ``folder`` itself, or the one module of a sentence-transformers
    folder when that module is a CLIP model; None for any other layout."""
    modules = folder / "modules.json"
    if modules.is_file():
        try:
            listed = json.loads(modules.read_text())
        except ValueError:
            return None
        if len(listed) != 1 or not str(listed[0].get("type", "")).endswith(("CLIPModel", "Transformer")):
            return None
        folder = folder / str(listed[0].get("path", ""))
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return None
    return folder if config.get("model_type") == "clip" else None


def hub_folder(name: str) -> Path | None:
    """Where a hub model is cached, without touching the network; None if it is not cached."""
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(hub_repository(name), local_files_only=True))
    except Exception:
        return None


def image_processor(folder: Path) -> SimpleNamespace | None:
    """The image processor's settings (from ``preprocessor_config.json`` or transformers 5's
    ``processor_config.json``), with older integer sizes spelled as dicts; None if it is not CLIP's kind."""
    config: dict[str, Any] | None = None
    for name, key in (("preprocessor_config.json", None), ("processor_config.json", "image_processor")):
        try:
            found = json.loads((folder / name).read_text())
        except (OSError, ValueError):
            continue
        config = found.get(key) if key else found
        if config:
            break
    if not config or "CLIP" not in str(config.get("image_processor_type", config.get("feature_extractor_type", "CLIP"))):
        return None
    values = {**PROCESSOR_DEFAULTS, **config}
    if isinstance(values["size"], int):
        values["size"] = {"shortest_edge": values["size"]}
    if isinstance(values["crop_size"], int):
        values["crop_size"] = {"height": values["crop_size"], "width": values["crop_size"]}
    return SimpleNamespace(**values)


def has_text_tokenizer(folder: Path) -> bool:
    """Whether ``folder`` holds what :func:`text_tokenizer` reads, without the time it takes to read it."""
    return (folder / "tokenizer.json").is_file() or ((folder / "vocab.json").is_file() and (folder / "merges.txt").is_file())


def text_tokenizer(folder: Path, max_length: int) -> Any:
    """CLIP's tokenizer: ``tokenizer.json`` as saved, or built from ``vocab.json`` and ``merges.txt`` the way
    transformers builds ``CLIPTokenizer``; padded to the longest text and cut at ``max_length`` tokens."""
    from tokenizers import Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import BPE

    settings: dict[str, Any] = {}
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        try:
            settings = {**json.loads((folder / name).read_text()), **settings}
        except (OSError, ValueError):
            pass

    def special(key: str, default: str) -> str:
        value = settings.get(key, default)
        return str(value.get("content", default) if isinstance(value, dict) else value)

    bos, eos, pad, unk = (special("bos_token", "<|startoftext|>"), special("eos_token", "<|endoftext|>"),
                          special("pad_token", "<|endoftext|>"), special("unk_token", "<|endoftext|>"))
    if (folder / "tokenizer.json").is_file():
        tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    elif (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file():
        vocab = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
        lines = (folder / "merges.txt").read_text(encoding="utf-8").splitlines()
        merges = [(first, second) for first, second in
                  (line.split() for line in lines if line and not line.startswith("#version"))]
        tokenizer = Tokenizer(BPE(vocab=vocab, merges=merges, dropout=None, continuing_subword_prefix="",
                                  end_of_word_suffix="</w>", fuse_unk=False, unk_token=unk))
        tokenizer.normalizer = normalizers.Sequence(
            [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()]
        )
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(CLIP_SPLIT), behavior="removed", invert=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False),
        ])
        tokenizer.decoder = decoders.ByteLevel()
        eos_id, bos_id = tokenizer.token_to_id(eos), tokenizer.token_to_id(bos)
        if eos_id is None or bos_id is None:
            return None  # not CLIP's vocabulary: transformers' own tokenizer reads it
        tokenizer.post_processor = processors.RobertaProcessing((eos, eos_id), (bos, bos_id), False, False)
    else:
        return None
    pad_id = tokenizer.token_to_id(pad)
    if pad_id is None:
        return None
    tokenizer.enable_padding(pad_id=pad_id, pad_token=pad)
    tokenizer.enable_truncation(max_length=min(max_length, int(settings.get("model_max_length", max_length))))
    return tokenizer


def read_weights(folder: Path) -> dict[str, Any] | None:
    import torch

    if (folder / "model.safetensors").is_file():
        from safetensors.torch import load_file

        return load_file(str(folder / "model.safetensors"))
    if (folder / "pytorch_model.bin").is_file():
        return torch.load(folder / "pytorch_model.bin", map_location="cpu", weights_only=True)
    return None


@dataclass
class Tower:
    """One pre-norm transformer stack of CLIP (text or vision), as a prefix into the weights."""

    weights: dict[str, Any]
    prefix: str
    layers: int
    heads: int
    eps: float
    activation: str

    def w(self, name: str) -> Any:
        return self.weights[f"{self.prefix}.{name}"]

    def norm(self, x: Any, name: str) -> Any:
        import torch.nn.functional as F

        return F.layer_norm(x, (x.shape[-1],), self.w(f"{name}.weight"), self.w(f"{name}.bias"), self.eps)

    def linear(self, x: Any, name: str) -> Any:
        import torch.nn.functional as F

        return F.linear(x, self.w(f"{name}.weight"), self.w(f"{name}.bias"))

    def encode(self, x: Any, causal: bool) -> Any:
        import torch
        import torch.nn.functional as F

        batch, length, width = x.shape
        size = width // self.heads
        for i in range(self.layers):
            layer = f"encoder.layers.{i}"
            h = self.norm(x, f"{layer}.layer_norm1")
            q, k, v = (self.linear(h, f"{layer}.self_attn.{p}_proj").view(batch, length, self.heads, size).transpose(1, 2)
                       for p in ("q", "k", "v"))
            h = F.scaled_dot_product_attention(q, k, v, is_causal=causal, scale=1 / math.sqrt(size))
            x = x + self.linear(h.transpose(1, 2).reshape(batch, length, width), f"{layer}.self_attn.out_proj")
            h = self.linear(self.norm(x, f"{layer}.layer_norm2"), f"{layer}.mlp.fc1")
            h = h * torch.sigmoid(1.702 * h) if self.activation == "quick_gelu" else F.gelu(h)
            x = x + self.linear(h, f"{layer}.mlp.fc2")
        return x


class ClipTowers:
    """A CLIP model's text and image towers with their projections; vectors as transformers' CLIPModel gives."""

    def __init__(self, config: dict[str, Any], weights: dict[str, Any], device: str) -> None:
        self.config = config
        self.weights = {key: value.to(device) for key, value in weights.items()}
        self.text = self._text_tower(self.weights)
        self._half_text: tuple[Tower, dict[str, Any]] | None = None
        vision = {**VISION_DEFAULTS, **(config.get("vision_config") or {})}
        self.vision = Tower(self.weights, "vision_model", int(vision["num_hidden_layers"]),
                            int(vision["num_attention_heads"]), float(vision["layer_norm_eps"]), vision["hidden_act"])
        self.eos_token_id = int({**TEXT_DEFAULTS, **(config.get("text_config") or {})}["eos_token_id"])
        self.patch = int(vision["patch_size"])
        self.dimension = int(self.weights["text_projection.weight"].shape[0])
        self.max_positions = int(self.weights["text_model.embeddings.position_embedding.weight"].shape[0])

    def _text_tower(self, weights: dict[str, Any]) -> Tower:
        text = {**TEXT_DEFAULTS, **(self.config.get("text_config") or {})}
        return Tower(weights, "text_model", int(text["num_hidden_layers"]), int(text["num_attention_heads"]),
                     float(text["layer_norm_eps"]), text["hidden_act"])

    def half_text(self) -> tuple[Tower, dict[str, Any]]:
        """The text tower with a half-precision copy of its weights (bfloat16 on a CPU, float16 on a GPU),
        made once. Autocast would convert every weight again at each call, which for one short query costs
        more than the arithmetic it saves (docs/performance.md)."""
        import torch

        if self._half_text is None:
            device = next(iter(self.weights.values())).device
            dtype = torch.bfloat16 if device.type == "cpu" else torch.float16
            weights = {key: value.to(dtype) for key, value in self.weights.items() if key.startswith("text_")}
            self._half_text = (self._text_tower(weights), weights)
        return self._half_text

    def encode_text(self, input_ids: Any, half: bool = False) -> Any:
        """Unnormalised text vectors: the last layer at each text's end-of-text token, projected."""
        import torch

        tower, weights = self.half_text() if half else (self.text, self.weights)
        x = weights["text_model.embeddings.token_embedding.weight"][input_ids]
        x = x + weights["text_model.embeddings.position_embedding.weight"][: input_ids.shape[1]]
        # Right padding follows the end-of-text token, and a causal mask keeps it out of everything before.
        x = tower.norm(tower.encode(x, causal=True), "final_layer_norm")
        if self.eos_token_id == 2:  # configs of the first CLIP releases: the end token has the largest id
            ends = input_ids.argmax(dim=-1)
        else:
            ends = (input_ids == self.eos_token_id).int().argmax(dim=-1)
        pooled = x[torch.arange(x.shape[0], device=x.device), ends]
        return pooled @ weights["text_projection.weight"].T

    def encode_images(self, pixel_values: Any) -> Any:
        """Unnormalised image vectors: the class token after the last layer, normalised and projected."""
        import torch
        import torch.nn.functional as F

        weights = self.weights
        kernel = weights["vision_model.embeddings.patch_embedding.weight"]
        patches = F.conv2d(pixel_values, kernel, stride=self.patch)
        patches = patches.flatten(2).transpose(1, 2)
        cls = weights["vision_model.embeddings.class_embedding"].to(patches.dtype).expand(patches.shape[0], 1, -1)
        x = torch.cat([cls, patches], dim=1)
        x = x + weights["vision_model.embeddings.position_embedding.weight"][: x.shape[1]]
        x = self.vision.encode(self.vision.norm(x, "pre_layrnorm"), causal=False)
        pooled = self.vision.norm(x[:, 0], "post_layernorm")
        return pooled @ weights["visual_projection.weight"].T


@dataclass
class FastClip:
    """What :class:`embed.Embedder` needs from a CLIP folder to run without sentence-transformers."""

    towers: ClipTowers
    tokenizer: Any
    image_processor: SimpleNamespace


def load(name: str, device: str, local: bool) -> FastClip | None:
    """The model ``name`` (a local folder when ``local``, else a hub name, only if cached) as plain-torch
    towers, or None when its layout or settings are not the ones this module reproduces."""
    folder = Path(name).expanduser() if local else hub_folder(name)
    folder = clip_folder(folder) if folder is not None and folder.is_dir() else None
    if folder is None:
        return None
    config = json.loads((folder / "config.json").read_text())
    text = {**TEXT_DEFAULTS, **(config.get("text_config") or {})}
    vision = {**VISION_DEFAULTS, **(config.get("vision_config") or {})}
    if text["hidden_act"] not in ACTIVATIONS or vision["hidden_act"] not in ACTIVATIONS:
        return None
    processor = image_processor(folder)
    weights = read_weights(folder)
    if processor is None or weights is None:
        return None
    needed = ("text_projection.weight", "visual_projection.weight", "vision_model.embeddings.class_embedding",
              "text_model.embeddings.position_embedding.weight")
    if any(key not in weights for key in needed):
        return None
    towers = ClipTowers(config, weights, device)
    tokenizer = text_tokenizer(folder, towers.max_positions)
    return None if tokenizer is None else FastClip(towers, tokenizer, processor)
