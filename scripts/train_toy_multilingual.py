"""Train the toy world's multilingual text model: Chinese and Russian queries in the toy CLIP's space.

    python scripts/train_toy_multilingual.py    # writes tests/fixtures/toy-multilingual/ in about a minute

This is the toy-world stand-in for sentence-transformers' ``clip-ViT-B-32-multilingual-v1``, and it
is made the same way: a student text encoder (a small BERT with mean pooling and a dense layer) is
trained to put each caption where the teacher, the toy CLIP's own text tower, puts the English
caption with the same meaning. So the catalog's image vectors need no re-embedding. The tokenizer
is BERT's WordPiece with Chinese characters split one by one (``tokenize_chinese_chars``), accents
kept (Russian's й and ё stay themselves) and every word it does not know read as ``[UNK]``.

Some Chinese and Russian phrasings are held out of training, ``红色的圆`` among them; the script
measures precision at 5 for each of them on fresh images, through ``SentenceTransformer(folder)``.
Random strings of CJK characters, Cyrillic and accented words are taught to mean what random ASCII
means to the teacher (nothing near any picture), so match strength works for the student's nonsense.
"""

from __future__ import annotations

import argparse
import os
import random
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from sentence_transformers import SentenceTransformer
from sentence_transformers.sentence_transformer.modules import Dense, Pooling, Transformer
from transformers import BertConfig, BertModel, BertTokenizerFast
from transformers.utils import logging as transformers_logging

from datasette_imgsearch.images import toyworld
from datasette_imgsearch.search.strength import random_texts

TEACHER = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "toy-clip"

# Each language: its words for the colours and shapes (full form, short form) and its phrasings,
# each paired with the English template that means the same. {C}/{S}: full form, {c}/{s}: short form.
CHINESE = {
    "colours": {"red": ("红色", "红"), "green": ("绿色", "绿"), "blue": ("蓝色", "蓝"), "yellow": ("黄色", "黄")},
    "shapes": {"circle": ("圆形", "圆"), "square": ("正方形", "方块"), "triangle": ("三角形", "三角")},
    "class": [("一个{C}的{S}", "a {colour} {shape}"), ("{C}{S}", "{colour} {shape}"),
              ("一张{C}{S}的照片", "a photo of a {colour} {shape}"), ("{c}{s}", "{colour} {shape}"),
              ("{c}{S}", "a {colour} {shape}"), ("一个{c}{S}的照片", "a picture of a {colour} {shape}")],
    "held_out": [("{C}的{s}", "a {colour} {shape}"), ("一个{c}{s}", "a {colour} {shape}"),
                 ("一张{C}的{s}的照片", "a photo of a {colour} {shape}")],
    "colour": [("{C}的东西", "something {colour}"), ("{C}", "{colour}"), ("{c}", "{colour}"),
               ("一个{C}的东西", "a {colour} thing")],
    "shape": [("一个{S}", "a {shape}"), ("{S}的照片", "a photo of a {shape}"), ("{S}", "{shape}"), ("{s}", "{shape}")],
}
RUSSIAN = {
    "colours": {"red": ("красный",) * 2, "green": ("зелёный",) * 2, "blue": ("синий",) * 2, "yellow": ("жёлтый",) * 2},
    "shapes": {"circle": ("круг",) * 2, "square": ("квадрат",) * 2, "triangle": ("треугольник",) * 2},
    "class": [("{C} {S}", "{colour} {shape}"), ("это {C} {S}", "a {colour} {shape}"),
              ("фото {C} {S}", "a photo of a {colour} {shape}")],
    "held_out": [("фото: это {C} {S}", "a photo of a {colour} {shape}"), ("{S} {C}", "{colour} {shape}")],
    "colour": [("{C} цвет", "something {colour}"), ("{C}", "{colour}"), ("что-то {C}", "a {colour} thing")],
    "shape": [("{S}", "{shape}"), ("это {S}", "a {shape}"), ("фото {S}", "a photo of a {shape}")],
}
LANGUAGES = {"zh": CHINESE, "ru": RUSSIAN}
FILLERS = ("xq", "zzv", "ъйх", "乙丙")  # words the vocabulary lacks, to teach the model to let [UNK] pass
NOISE_PAIRS = 150


def pairs(language: dict, kinds: tuple[str, ...]) -> list[tuple[str, str, tuple[str | None, str | None]]]:
    """(caption in the language, English caption, (colour, shape) it describes) for the given kinds."""
    found = []
    for kind in kinds:
        for template, english in language[kind]:
            for colour, (full_c, short_c) in language["colours"].items():
                for shape, (full_s, short_s) in language["shapes"].items():
                    if kind == "colour" and shape != "circle" or kind == "shape" and colour != "red":
                        continue  # one caption per colour (or shape), not one per class
                    text = template.format(C=full_c, c=short_c, S=full_s, s=short_s)
                    meaning = english.format(colour=colour, shape=shape)
                    found.append((text, meaning, (None if kind == "shape" else colour, None if kind == "colour" else shape)))
    return found


def english_pairs() -> list[tuple[str, str, tuple[str | None, str | None]]]:
    captions = {caption for c in toyworld.COLOURS for s in toyworld.SHAPES for caption in toyworld.captions_for(c, s)}
    return [(caption, caption, (None, None)) for caption in sorted(captions)]


def make_tokenizer(folder: Path, texts: list[str]) -> BertTokenizerFast:
    """WordPiece over every word and Chinese character of the training captions."""
    folder.mkdir(parents=True, exist_ok=True)
    words: set[str] = set()
    for text in texts:
        for word in text.lower().replace(":", " : ").split():
            pieces = [ch for ch in word] if any("\u4e00" <= ch <= "\u9fff" for ch in word) else [word]
            words.update(pieces)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ":", "-"] + sorted(words - {":", "-"})
    (folder / "vocab.txt").write_text("".join(f"{token}\n" for token in vocab), encoding="utf-8")
    return BertTokenizerFast(str(folder / "vocab.txt"), do_lower_case=True, strip_accents=False,
                             tokenize_chinese_chars=True, model_max_length=64)


def make_student(tokenizer: BertTokenizerFast, dimension: int, folder: Path) -> SentenceTransformer:
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                        num_attention_heads=2, max_position_embeddings=64, pad_token_id=tokenizer.pad_token_id)
    BertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    transformer = Transformer(str(folder), max_seq_length=64)
    pooling = Pooling(64, "mean")
    dense = Dense(64, dimension, activation_function=torch.nn.Identity())
    return SentenceTransformer(modules=[transformer, pooling, dense], device="cpu")


def train(student: SentenceTransformer, texts: list[str], targets: torch.Tensor, steps: int, seed: int) -> None:
    """Cosine distillation: each caption's vector towards the teacher's vector of its English meaning."""
    rng = random.Random(seed)
    optimiser = torch.optim.AdamW(student.parameters(), lr=3e-3, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=3e-3, total_steps=steps, pct_start=0.1)
    student.train()
    started = time.time()
    for step in range(steps):
        batch = rng.sample(range(len(texts)), min(64, len(texts)))
        chosen = [_with_filler(texts[i], rng) for i in batch]
        features = student.preprocess(chosen)
        output = student(features)["sentence_embedding"]
        loss = (1 - F.cosine_similarity(output, targets[batch])).mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        schedule.step()
        if step % 200 == 0 or step == steps - 1:
            print(f"step {step:5d}  loss {loss.item():.4f}  {time.time() - started:.0f}s", flush=True)
    student.eval()


def _with_filler(text: str, rng: random.Random) -> str:
    if rng.random() < 0.2:
        return f"{text} {rng.choice(FILLERS)}" if rng.random() < 0.5 else f"{rng.choice(FILLERS)} {text}"
    return text


def precision_at_5(student_folder: Path, held_out: list[tuple[str, str, tuple[str | None, str | None]]],
                   seed: int, count: int) -> dict[str, float]:
    """Held-out precision at 5 of each held-out caption, on fresh images, through the loading path."""
    teacher = SentenceTransformer(str(TEACHER), device="cpu")
    student = SentenceTransformer(str(student_folder), device="cpu")
    with tempfile.TemporaryDirectory() as tmp:
        world = toyworld.write_world(tmp, count=count, seed=seed)
        vectors = teacher.encode([Image.open(w.path) for w in world], normalize_embeddings=True)
    labels = [(w.colour, w.shape) for w in world]
    queries = student.encode([text for text, _, _ in held_out], normalize_embeddings=True)
    figures = {}
    for (text, _, (colour, shape)), query in zip(held_out, queries):
        top = np.argsort(-(vectors @ query))[:5]
        figures[text] = sum(labels[i] == (colour, shape) for i in top) / 5
    return figures


def main() -> None:
    transformers_logging.disable_progress_bar()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default="tests/fixtures/toy-multilingual")
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    started = time.time()
    training = english_pairs()
    held_out = []
    for language in LANGUAGES.values():
        training += pairs(language, ("class", "colour", "shape"))
        held_out += pairs(language, ("held_out",))
    vocabulary = [text for text, _, _ in training]
    # Random text in the student's scripts means what random ASCII means to the teacher: nothing.
    noise = random_texts(NOISE_PAIRS, seed=args.seed + 1, foreign=True)
    training += [(text, english, (None, None)) for text, english in zip(noise, random_texts(NOISE_PAIRS, seed=args.seed + 2))]
    teacher = SentenceTransformer(str(TEACHER), device="cpu")
    targets = torch.from_numpy(teacher.encode([english for _, english, _ in training], normalize_embeddings=True))
    output = Path(args.output)
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = make_tokenizer(Path(tmp), vocabulary)
        student = make_student(tokenizer, targets.shape[1], Path(tmp))
    train(student, [text for text, _, _ in training], targets, args.steps, args.seed)
    student.save(str(output), create_model_card=False)
    size = sum(f.stat().st_size for f in output.rglob("*") if f.is_file())
    print(f"wrote {output} ({size / 1e6:.2f} MB, {len(training)} training captions) after {time.time() - started:.0f}s")
    figures = precision_at_5(output, held_out, seed=args.seed + 2000, count=240)
    print("\nheld-out precision at 5 (240 fresh images)")
    for query, value in figures.items():
        print(f"  {query:<20} {value:.2f}")
    print(f"  {'lowest':<20} {min(figures.values()):.2f}")


if __name__ == "__main__":
    main()
