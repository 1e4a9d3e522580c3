"""Train the tiny toy-world CLIP that the tests and the README's quick start use.

    python scripts/train_toy_clip.py            # writes tests/fixtures/toy-clip/ in about 13 minutes
    python scripts/train_toy_clip.py --resume FIRST_STAGE_MODEL --stages noise   # the second stage only, one minute

Real CLIP weights cannot be downloaded everywhere, and a randomly initialised CLIP only proves
plumbing. This script trains a small transformers ``CLIPModel`` with its own small tokenizer on the
synthetic world of :mod:`datasette_imgsearch.toyworld` (four colours, three shapes), with fixed seeds,
in about eight and a half minutes on two CPU cores, then measures precision at 5 on fresh held-out images through
the real loading path (``SentenceTransformer(folder)``) and prints the figures.

A second stage (a minute) teaches the text tower, with the image tower frozen, that random strings
describe nothing. A text tower that has only ever read thirty words maps any string onto one of its
twelve classes ("xyzzy plugh" scored 0.65 on yellow triangles, above real matches), while a real CLIP,
trained on hundreds of millions of captions, scores nonsense well below real descriptions; the
match-strength calibration of :mod:`datasette_imgsearch.strength` needs the toy world to behave like
the real one there. Image vectors are unchanged by it, so catalogs built before stay valid.

A third stage (three minutes) teaches the image tower, with the text tower frozen, that words written on
a picture are not part of what it shows: half its pictures carry a sign or a label as the toy text world
draws them (:mod:`datasette_imgsearch.images.toytext`; it needs fonts-dejavu and fonts-wqy-zenhei). Real
CLIP has seen enough captioned photos not to take a yellow circle under a shop sign for a yellow square;
a tower trained on bare shapes did, and so ranked a picture that shows and says a query below one that
only says it. The captions never name the words, so the model still cannot read them. Text vectors are
unchanged by it, so catalogs built before stay searchable.

    python scripts/train_toy_clip.py --resume tests/fixtures/toy-clip --stages words   # the third stage only
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import shutil
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from transformers import CLIPConfig, CLIPModel, CLIPProcessor, CLIPTokenizer
from transformers.utils import logging as transformers_logging

try:
    from transformers import CLIPImageProcessorPil as ImageProcessor
except ImportError:  # transformers < 5, or torchvision installed
    from transformers import CLIPImageProcessor as ImageProcessor

from datasette_imgsearch.images import toytext, toyworld
from datasette_imgsearch.search.strength import random_texts

IMAGE_SIZE = 64
WORDS = sorted(
    {word for colour in toyworld.COLOURS for shape in toyworld.SHAPES for caption in toyworld.captions_for(colour, shape)
     for word in caption.split()}
)


def byte_characters() -> list[str]:
    """CLIP/GPT-2's 256 printable stand-ins for the bytes (``bytes_to_unicode``)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    others = [256 + n for n in range(256 - len(printable))]
    return [chr(c) for c in printable + others]


def make_tokenizer(folder: Path) -> CLIPTokenizer:
    """A byte-level BPE tokenizer whose merges spell the toy world's words; other words fall back to bytes."""
    chars = byte_characters()
    vocab = {c: i for i, c in enumerate(chars)}
    for c in chars:
        vocab[c + "</w>"] = len(vocab)
    merges: list[tuple[str, str]] = []
    for word in WORDS:
        pieces = list(word[:-1]) + [word[-1] + "</w>"]
        left = pieces[0]
        for right in pieces[1:]:
            if (left, right) not in merges:
                merges.append((left, right))
            left += right
            vocab.setdefault(left, len(vocab))
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    tokenizer = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"))
    tokenizer.model_max_length = 77
    return tokenizer


def make_model(tokenizer: CLIPTokenizer) -> CLIPModel:
    config = CLIPConfig(
        text_config=dict(
            vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=2, max_position_embeddings=77, bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        ),
        vision_config=dict(
            hidden_size=96, intermediate_size=192, num_hidden_layers=3, num_attention_heads=4,
            image_size=IMAGE_SIZE, patch_size=8,
        ),
        projection_dim=32,
    )
    return CLIPModel(config)


def jpeg_roundtrip(image: Image.Image, rng: random.Random) -> Image.Image:
    """Compress like a real file would be, so the model learns from what it will be shown."""
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=rng.randint(70, 95))
    buffer.seek(0)
    return Image.open(buffer).convert("RGB")


def make_dataset(count: int, seed: int, processor: CLIPProcessor) -> tuple[torch.Tensor, list[tuple[str, str]]]:
    rng = random.Random(seed)
    classes = toyworld.sample_classes(count, rng)
    images = [jpeg_roundtrip(toyworld.draw_image(c, s, rng), rng) for c, s in classes]
    pixels = processor(images=images, return_tensors="pt")["pixel_values"]
    return pixels, classes


def caption_facts(caption: str) -> tuple[str | None, str | None]:
    words = caption.split()
    colour = next((w for w in words if w in toyworld.COLOURS), None)
    shape = next((w for w in words if w in toyworld.SHAPES), None)
    return colour, shape


def make_worded_dataset(count: int, seed: int, processor: CLIPProcessor) -> tuple[torch.Tensor, list[tuple[str, str]]]:
    """Like :func:`make_dataset`, with every other picture drawn at 640x480 and given one or two words, as
    the toy text world draws them."""
    rng = random.Random(seed)
    classes = toyworld.sample_classes(count, rng)
    images = []
    for number, (colour, shape) in enumerate(classes):
        if number % 2:
            picture = toyworld.draw_image(colour, shape, rng)
        else:
            picture = toyworld.draw_image(colour, shape, rng, 480).resize((640, 480), Image.Resampling.BICUBIC)
            vocabulary = toytext.CHINESE if rng.random() < 1 / 3 else toytext.ENGLISH
            picture = toytext.draw_words(picture, tuple(rng.sample(vocabulary, rng.choice((1, 1, 2)))), rng)
        images.append(jpeg_roundtrip(picture, rng))
    pixels = processor(images=images, return_tensors="pt")["pixel_values"]
    return pixels, classes


def train(model: CLIPModel, tokenizer: CLIPTokenizer, pixels: torch.Tensor, classes: list[tuple[str, str]],
          steps: int, batch_size: int, seed: int, learning_rate: float = 2e-3, image_only: bool = False) -> None:
    """Contrastive training with soft targets: every caption that truly describes an image is a positive.
    ``image_only`` trains the image tower alone (text vectors stay as they are)."""
    rng = random.Random(seed)
    all_captions = sorted({cap for c in toyworld.COLOURS for s in toyworld.SHAPES for cap in toyworld.captions_for(c, s)})
    tokens = tokenizer(all_captions, padding=True, return_tensors="pt")
    facts = [caption_facts(c) for c in all_captions]
    frozen = [*model.text_model.parameters(), *model.text_projection.parameters(), model.logit_scale] if image_only else []
    for parameter in frozen:
        parameter.requires_grad = False
    trained = [parameter for parameter in model.parameters() if parameter.requires_grad]
    optimiser = torch.optim.AdamW(trained, lr=learning_rate, weight_decay=0.05)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=learning_rate, total_steps=steps, pct_start=0.1)
    model.train()
    started = time.time()
    for step in range(steps):
        batch = rng.sample(range(len(classes)), batch_size)
        chosen = [rng.choice([i for i, f in enumerate(facts) if _describes(f, classes[b])]) for b in batch]
        targets = torch.tensor([[float(_describes(facts[t], classes[b])) for t in chosen] for b in batch])
        images = F.normalize(model.get_image_features(pixel_values=pixels[batch]).pooler_output, dim=-1)
        text_output = model.get_text_features(
            input_ids=tokens["input_ids"][chosen], attention_mask=tokens["attention_mask"][chosen]
        )
        texts = F.normalize(text_output.pooler_output, dim=-1)
        logits = model.logit_scale.exp().clamp(max=100) * images @ texts.T
        loss = (F.cross_entropy(logits, targets / targets.sum(1, keepdim=True))
                + F.cross_entropy(logits.T, targets.T / targets.T.sum(1, keepdim=True))) / 2
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        schedule.step()
        if step % 100 == 0 or step == steps - 1:
            print(f"step {step:5d}  loss {loss.item():.3f}  {time.time() - started:.0f}s", flush=True)
    for parameter in frozen:
        parameter.requires_grad = True
    model.eval()


def train_text_against_noise(model: CLIPModel, tokenizer: CLIPTokenizer, pixels: torch.Tensor,
                             classes: list[tuple[str, str]], steps: int, seed: int) -> None:
    """The second stage: the same contrastive loss with the image tower frozen, plus 48 random strings per
    batch as captions that describe no image, so nonsense ends up far from every picture."""
    rng = random.Random(seed)
    all_captions = sorted({cap for c in toyworld.COLOURS for s in toyworld.SHAPES for cap in toyworld.captions_for(c, s)})
    facts = [caption_facts(c) for c in all_captions]
    with torch.no_grad():
        images = F.normalize(model.get_image_features(pixel_values=pixels).pooler_output, dim=-1)
    for parameter in model.parameters():
        parameter.requires_grad = False
    text_parameters = list(model.text_model.parameters()) + list(model.text_projection.parameters())
    for parameter in text_parameters:
        parameter.requires_grad = True
    optimiser = torch.optim.AdamW(text_parameters, lr=5e-4)
    model.train()
    started = time.time()
    for step in range(steps):
        batch = rng.sample(range(len(classes)), 96)
        chosen = [rng.choice([i for i, f in enumerate(facts) if _describes(f, classes[b])]) for b in batch]
        noise = random_texts(48, seed=rng.randrange(2**32))
        tokens = tokenizer([all_captions[i] for i in chosen] + noise, padding=True, return_tensors="pt")
        texts = F.normalize(model.get_text_features(**tokens).pooler_output, dim=-1)
        targets = torch.tensor([[float(_describes(facts[t], classes[b])) for t in chosen] for b in batch])
        logits = model.logit_scale.exp().clamp(max=100) * images[batch] @ texts.T
        with_noise = torch.cat([targets, torch.zeros(len(batch), len(noise))], dim=1)
        captions_only = logits[:, : len(chosen)]
        loss = (F.cross_entropy(logits, with_noise / with_noise.sum(1, keepdim=True))
                + F.cross_entropy(captions_only.T, targets.T / targets.T.sum(1, keepdim=True))) / 2
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        if step % 100 == 0 or step == steps - 1:
            print(f"noise step {step:4d}  loss {loss.item():.3f}  {time.time() - started:.0f}s", flush=True)
    model.eval()


def _describes(fact: tuple[str | None, str | None], cls: tuple[str, str]) -> bool:
    colour, shape = fact
    return (colour is None or colour == cls[0]) and (shape is None or shape == cls[1])


def precision_at_5(folder: Path, seed: int, count: int) -> dict[str, float]:
    """Held-out precision at 5 through the product's loading path, on fresh JPEG files."""
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(folder), device="cpu")
    with tempfile.TemporaryDirectory() as tmp:
        world = toyworld.write_world(tmp, count=count, seed=seed)
        vectors = model.encode([Image.open(w.path) for w in world], normalize_embeddings=True)
    labels = [(w.colour, w.shape) for w in world]

    def p5(query: np.ndarray, wanted, exclude: int | None = None) -> float:
        order = [i for i in np.argsort(-(vectors @ query)) if i != exclude][:5]
        return sum(wanted(labels[i]) for i in order) / 5

    text = lambda q: model.encode([q], normalize_embeddings=True)[0]  # noqa: E731
    figures = {}
    for colour in toyworld.COLOURS:
        for shape in toyworld.SHAPES:
            figures[f"a {colour} {shape}"] = p5(text(f"a {colour} {shape}"), lambda label, c=colour, s=shape: label == (c, s))
    for colour in toyworld.COLOURS:
        figures[f"something {colour}"] = p5(text(f"something {colour}"), lambda label, c=colour: label[0] == c)
    for shape in toyworld.SHAPES:
        figures[f"a {shape}"] = p5(text(f"a {shape}"), lambda label, s=shape: label[1] == s)
    image_scores = [p5(vectors[i], lambda label, want=labels[i]: label == want, exclude=i) for i in range(len(labels))]
    figures["image queries (mean)"] = float(np.mean(image_scores))
    noise = model.encode(random_texts(200, seed=seed), normalize_embeddings=True)
    captions = model.encode([f"a {c} {s}" for c in toyworld.COLOURS for s in toyworld.SHAPES], normalize_embeddings=True)
    print(f"best score of 200 random strings: {float((vectors @ noise.T).max()):.3f}; "
          f"of the 12 class captions, the lowest best: {float((vectors @ captions.T).max(0).min()):.3f}")
    return figures


def main() -> None:
    transformers_logging.disable_progress_bar()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default="tests/fixtures/toy-clip")
    parser.add_argument("--images", type=int, default=12000)
    parser.add_argument("--steps", type=int, default=3100)
    parser.add_argument("--batch-size", type=int, default=112)
    parser.add_argument("--noise-steps", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--word-images", type=int, default=4000)
    parser.add_argument("--word-steps", type=int, default=400)
    parser.add_argument("--resume", help="start from the model in this folder, leaving out the first stage")
    parser.add_argument("--stages", help="which stages run, of shapes,noise,words (default: all; after --resume, "
                                         "noise,words)")
    args = parser.parse_args()
    stages = set((args.stages or ("noise,words" if args.resume else "shapes,noise,words")).split(","))
    if args.resume and "shapes" in stages:
        parser.error("--resume starts from a trained model: the shapes stage is the one it leaves out")
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    output = Path(args.output)
    started = time.time()
    if args.resume:
        processor = CLIPProcessor.from_pretrained(args.resume)
        tokenizer = processor.tokenizer
        model = CLIPModel.from_pretrained(args.resume)
    else:
        tokenizer = make_tokenizer(output)
        side = {"height": IMAGE_SIZE, "width": IMAGE_SIZE}
        image_processor = ImageProcessor(size={"shortest_edge": IMAGE_SIZE}, crop_size=side)
        processor = CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer)
        pixels, classes = make_dataset(args.images, args.seed, processor)
        print(f"{len(classes)} training images in {time.time() - started:.0f}s", flush=True)
        model = make_model(tokenizer)
        train(model, tokenizer, pixels, classes, args.steps, args.batch_size, args.seed)
    if "noise" in stages:
        pixels, classes = make_dataset(3000, args.seed + 5, processor)
        train_text_against_noise(model, tokenizer, pixels, classes, args.noise_steps, args.seed)
    if "words" in stages:
        pixels, classes = make_worded_dataset(args.word_images, args.seed + 7, processor)
        train(model, tokenizer, pixels, classes, args.word_steps, args.batch_size, args.seed, 5e-4, image_only=True)
    if args.resume:  # the tokenizer and processor files as they were
        if Path(args.resume).resolve() != output.resolve():
            shutil.copytree(args.resume, output, dirs_exist_ok=True)
    else:
        processor.save_pretrained(output)
    model.save_pretrained(output)
    size = sum(f.stat().st_size for f in output.iterdir())
    print(f"wrote {output} ({size / 1e6:.1f} MB) after {time.time() - started:.0f}s")
    figures = precision_at_5(output, seed=args.seed + 1000, count=240)
    print("\nheld-out precision at 5 (240 fresh images)")
    for query, value in figures.items():
        print(f"  {query:<24} {value:.2f}")
    print(f"  {'lowest':<24} {min(figures.values()):.2f}")


if __name__ == "__main__":
    main()
