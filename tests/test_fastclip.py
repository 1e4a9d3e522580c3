"""fastclip: CLIP's towers in plain torch give sentence-transformers' tokens and vectors, without its imports."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from datasette_imgsearch.models import embedder as embedder_module
from datasette_imgsearch.models.embedder import Embedder

TEXTS = ["a red circle", "Something   YELLOW!", "it's a photo of 42 cats", "红色的圆", "café crème", "x" * 300,
         "a " * 100, ""]


def pictures() -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, size, dtype=np.uint8)) for size in ((300, 200, 3), (90, 160, 3))]


def without_tokenizer_json(folder: Path, tmp_path: Path) -> Path:
    """A copy that has only vocab.json and merges.txt, as the hub's clip-ViT-B-32 folder has."""
    copy = tmp_path / "vocab-and-merges"
    shutil.copytree(folder, copy)
    (copy / "tokenizer.json").unlink()
    return copy


def legacy_layout(folder: Path, tmp_path: Path) -> Path:
    """The hub layout of sentence-transformers/clip-ViT-B-32: modules.json naming one 0_CLIPModel module."""
    root = tmp_path / "legacy"
    shutil.copytree(folder, root / "0_CLIPModel")
    module = {"idx": 0, "name": "0", "path": "0_CLIPModel", "type": "sentence_transformers.models.CLIPModel"}
    (root / "modules.json").write_text(json.dumps([module]))
    return root


def gelu_model(tmp_path: Path, toy_model: str) -> Path:
    """A random CLIP with exact GELU and the first releases' end-token rule (eos_token_id 2)."""
    from transformers import CLIPConfig, CLIPModel, CLIPProcessor

    processor = CLIPProcessor.from_pretrained(toy_model)
    config = CLIPConfig(
        text_config=dict(vocab_size=len(processor.tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=77, hidden_act="gelu", eos_token_id=2),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                           image_size=64, patch_size=16, hidden_act="gelu"),
        projection_dim=24,
    )
    folder = tmp_path / "gelu"
    CLIPModel(config).save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


@pytest.fixture(params=["hugging face folder", "vocab and merges only", "legacy hub layout", "other dimension",
                        "gelu and eos id 2"])
def clip_folder(request: pytest.FixtureRequest, tmp_path: Path, toy_model: str, other_dimension_model: Path) -> Path:
    return {
        "hugging face folder": lambda: Path(toy_model),
        "vocab and merges only": lambda: without_tokenizer_json(Path(toy_model), tmp_path),
        "legacy hub layout": lambda: legacy_layout(Path(toy_model), tmp_path),
        "other dimension": lambda: other_dimension_model,
        "gelu and eos id 2": lambda: gelu_model(tmp_path, toy_model),
    }[request.param]()


def test_plain_clip_gives_the_tokens_and_vectors_of_sentence_transformers(clip_folder: Path) -> None:
    plain = Embedder(str(clip_folder), "cpu", "fp32")
    reference = Embedder(str(clip_folder), "cpu", "fp32", plain=False)
    assert plain.clip is not None and reference.clip is None
    tokens = [encoding.ids for encoding in plain.clip.tokenizer.encode_batch(TEXTS)]
    assert tokens == reference.model.preprocess(TEXTS)["input_ids"].tolist()
    assert plain.dimension == reference.dimension and plain.input_size == reference.input_size
    texts = (plain.encode_texts(TEXTS) * reference.encode_texts(TEXTS)).sum(axis=1)
    images = (plain.encode_images(pictures()) * reference.encode_images(pictures())).sum(axis=1)
    assert texts.min() >= 0.9999 and images.min() >= 0.9999, (texts, images)


def test_bf16_on_the_plain_towers_stays_within_cosine_0_999(toy_model: str) -> None:
    fp32, bf16 = Embedder(toy_model, "cpu", "fp32"), Embedder(toy_model, "cpu", "bf16")
    assert (fp32.encode_texts(TEXTS) * bf16.encode_texts(TEXTS)).sum(axis=1).min() >= 0.999
    assert (fp32.encode_images(pictures()) * bf16.encode_images(pictures())).sum(axis=1).min() >= 0.999


@pytest.mark.parametrize("change", ["another activation", "another image processor", "no weights"])
def test_a_folder_fastclip_does_not_reproduce_goes_through_sentence_transformers(
    tmp_path: Path, toy_model: str, change: str
) -> None:
    folder = tmp_path / "changed"
    shutil.copytree(toy_model, folder)
    if change == "another activation":
        config = json.loads((folder / "config.json").read_text())
        config["text_config"]["hidden_act"] = "gelu_new"
        (folder / "config.json").write_text(json.dumps(config))
    elif change == "another image processor":
        config = json.loads((folder / "processor_config.json").read_text())
        config["image_processor"]["size"] = {"longest_edge": 64}
        (folder / "processor_config.json").write_text(json.dumps(config))
    else:
        (folder / "model.safetensors").rename(folder / "weights.safetensors")
    if change == "no weights":
        assert embedder_module._plain_clip(str(folder), "cpu") is None
        return
    embedder = Embedder(str(folder), "cpu", "fp32")
    assert embedder.clip is None and embedder.encode_texts(["a red circle"]).shape == (1, 32)


def test_other_models_and_the_switch_go_through_sentence_transformers(
    toy_multilingual: str, toy_model: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert Embedder(toy_multilingual, "cpu").clip is None
    monkeypatch.setattr(embedder_module, "PLAIN_CLIP", False)
    assert Embedder(toy_model, "cpu").clip is None


def modules_after(code: str) -> set[str]:
    """Which heavy modules a fresh interpreter has imported after running ``code`` (the builder too: only
    ``build`` needs it)."""
    probe = code + "\nimport sys, json; print(json.dumps(sorted(m for m in ('torch', 'sentence_transformers', " \
                   "'transformers', 'datasette', 'datasette_imgsearch.build.builder') if m in sys.modules)))"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stderr
    return set(json.loads(result.stdout.strip().splitlines()[-1]))


@pytest.mark.slow
def test_a_cold_search_imports_neither_sentence_transformers_nor_datasette_nor_the_builder(shared_catalog: Path) -> None:
    search = ("from click.testing import CliRunner\nfrom datasette_imgsearch.cli import cli\n"
              f"result = CliRunner().invoke(cli, ['search', {str(shared_catalog)!r}, 'a red circle', '--json', "
              "'--runtime', 'torch'])\n"
              "assert result.exit_code == 0, result.output")
    assert modules_after(search) == {"torch"}
    info = search.replace("'search'", "'info'").replace(", 'a red circle', '--json', '--runtime', 'torch'", "")
    assert modules_after(info) == set()  # info and --help load no model code at all
