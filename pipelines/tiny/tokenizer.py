"""A small CLIP byte-level BPE tokenizer written in code, in the published file layout
(`vocab.json`, `merges.txt`, `special_tokens_map.json`, `tokenizer_config.json`).

The vocabulary is laid out like OpenAI CLIP's: the 256 byte symbols, the same 256
with the end-of-word marker `</w>`, one token per merge in merge order, then
`<|startoftext|>` and `<|endoftext|>` (so `<|endoftext|>` has the highest id, as in
CLIP). The merges are learnt here, deterministically, from a short English corpus of
portrait-prompt words, so common prompt words become one or two tokens; any other
text still tokenizes, down to single bytes.
"""

from __future__ import annotations

import json
import re
from collections import Counter, defaultdict
from functools import lru_cache
from pathlib import Path

BOS = "<|startoftext|>"
EOS = "<|endoftext|>"
EOW = "</w>"
MODEL_MAX_LENGTH = 77

# words of typical portrait prompts; each line weighs its words once
_CORPUS = """
a photo of a man, a photo of a woman, portrait of a person, close up portrait photo
a professional headshot of a young woman smiling, studio lighting, soft light
an old man with a beard and glasses, black and white photograph, film grain
a girl with long red hair in a green dress standing in a field of flowers
a boy wearing a blue shirt and a red cap, sunny day, city street background
cinematic still of a person walking in the rain at night, neon lights, bokeh
oil painting of a king on a throne, renaissance style, highly detailed
watercolor illustration of a child reading a book under a tree in the park
a woman in a business suit in an office, natural light, sharp focus, 8k
a man in a leather jacket riding a motorcycle on a mountain road at sunset
fantasy portrait of an elf warrior with silver armor, digital art, trending
a smiling couple at the beach, golden hour, vacation photo, happy family
a chef cooking in a kitchen, a doctor in a hospital, an astronaut in space
anime style drawing of a student with short black hair and brown eyes
pencil sketch of a face, charcoal drawing, realistic skin texture, detailed eyes
best quality, masterpiece, high resolution, ultra realistic, photorealistic
worst quality, low quality, blurry, deformed, ugly, bad anatomy, extra fingers
nsfw, watermark, text, signature, cropped, out of frame, jpeg artifacts
a portrait of a woman with curly blonde hair wearing a white hat and earrings
a man with a mustache in a gray coat, winter, snow falling, cold morning
vintage photograph from the nineteen fifties, sepia tone, old camera lens
cyberpunk character with a robotic arm, futuristic city, purple and pink light
a person sitting at a table in a cafe drinking coffee, warm colors, cozy
a runner in sports clothes, dynamic pose, motion blur, stadium, evening
superhero costume, cape, comic book style, bold lines, vibrant colors
a teacher in a classroom, a soldier in uniform, a painter with a brush
looking at the camera, side view, profile, full body, half body, upper body
face, head, nose, mouth, lips, teeth, ears, neck, shoulders, hands, arms
young, old, middle aged, teenager, baby, elderly, adult, male, female
happy, sad, angry, surprised, serious, calm, laughing, crying, thinking
red, orange, yellow, green, blue, purple, pink, brown, black, white, gray
"""

# OpenAI CLIP's pre-tokenizer rule (letters runs, single digits, punctuation runs)
_WORD = re.compile(r"'s|'t|'re|'ve|'m|'ll|'d|[^\W\d_]+|\d|[^\s\w]+|_+")


@lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """The byte-level BPE alphabet: each byte maps to a printable unicode character
    (printable Latin-1 bytes map to themselves, the rest are shifted past 255)."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAC + 1)) + list(range(0xAE, 0xFF + 1))
    table: dict[int, str] = {}
    shift = 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + shift)
            shift += 1
    return table


def _word_counts(text: str) -> Counter[tuple[str, ...]]:
    enc = bytes_to_unicode()
    counts: Counter[tuple[str, ...]] = Counter()
    for word in _WORD.findall(text.lower()):
        symbols = [enc[b] for b in word.encode("utf-8")]
        symbols[-1] += EOW
        counts[tuple(symbols)] += 1
    return counts


def learn_merges(text: str = _CORPUS, max_merges: int = 1500) -> list[tuple[str, str]]:
    """Byte-level BPE merges learnt from `text`: repeatedly merge the most frequent
    adjacent pair (ties broken by the pair's string order, so the result never depends
    on dict ordering) until every word is one symbol or `max_merges` is reached."""
    counts = _word_counts(text)
    words = [list(w) for w in counts]
    freq = [counts[w] for w in counts]
    pair_count: Counter[tuple[str, str]] = Counter()
    where: dict[tuple[str, str], set[int]] = defaultdict(set)
    for i, w in enumerate(words):
        for pair in zip(w, w[1:]):
            pair_count[pair] += freq[i]
            where[pair].add(i)

    merges: list[tuple[str, str]] = []
    while len(merges) < max_merges:
        live = [(c, p) for p, c in pair_count.items() if c > 0]
        if not live:
            break
        best_count = max(c for c, _ in live)
        best = min(p for c, p in live if c == best_count)
        merges.append(best)
        joined = best[0] + best[1]
        for i in sorted(where.pop(best, ())):
            w = words[i]
            for pair in zip(w, w[1:]):
                pair_count[pair] -= freq[i]
            merged: list[str] = []
            j = 0
            while j < len(w):
                if j + 1 < len(w) and (w[j], w[j + 1]) == best:
                    merged.append(joined)
                    j += 2
                else:
                    merged.append(w[j])
                    j += 1
            words[i] = merged
            for pair in zip(merged, merged[1:]):
                pair_count[pair] += freq[i]
                where[pair].add(i)
        pair_count.pop(best, None)
    return merges


def build_vocab(merges: list[tuple[str, str]]) -> dict[str, int]:
    """CLIP's vocabulary order: bytes, bytes + `</w>`, merge results, then BOS and EOS."""
    base = list(bytes_to_unicode().values())
    tokens = base + [b + EOW for b in base]
    seen = set(tokens)
    for a, b in merges:
        t = a + b
        if t not in seen:  # two merge paths can spell the same token; keep its first id
            seen.add(t)
            tokens.append(t)
    tokens += [BOS, EOS]
    return {t: i for i, t in enumerate(tokens)}


# Merges appended after the learnt ones, for words a fixed prompt needs as one token,
# as OpenAI CLIP's vocabulary has them: Arc2Face writes its face embedding into the
# row of "id" in "photo of a id person" (foivospar/Arc2Face arc2face/utils.py), so
# "id" must be a single token. Appended last, they leave every learnt token's id as it was.
EXTRA_MERGES: tuple[tuple[str, str], ...] = (("i", "d" + EOW),)


@lru_cache(maxsize=1)
def _vocab_and_merges() -> tuple[dict[str, int], tuple[tuple[str, str], ...]]:
    merges = learn_merges() + list(EXTRA_MERGES)
    return build_vocab(merges), tuple(merges)


def vocab_size() -> int:
    return len(_vocab_and_merges()[0])


def special_ids() -> dict[str, int]:
    vocab = _vocab_and_merges()[0]
    return {"bos": vocab[BOS], "eos": vocab[EOS]}


def _added_token(content: str) -> dict:
    return {
        "content": content,
        "lstrip": False,
        "normalized": True,
        "rstrip": False,
        "single_word": False,
    }


def write_clip_tokenizer(dest: Path, pad_token: str = EOS) -> None:
    """Write the four published CLIP tokenizer files into `dest`. SDXL's first
    tokenizer pads with `<|endoftext|>`, its second (OpenCLIP bigG) with `!`."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    vocab, merges = _vocab_and_merges()
    if pad_token not in vocab:
        raise ValueError(f"pad token {pad_token!r} is not in the tiny CLIP vocabulary")
    (dest / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False, sort_keys=False) + "\n", encoding="utf-8")
    lines = ["#version: 0.2"] + [f"{a} {b}" for a, b in merges]
    (dest / "merges.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    special = {
        "bos_token": _added_token(BOS),
        "eos_token": _added_token(EOS),
        "pad_token": pad_token,
        "unk_token": _added_token(EOS),
    }
    (dest / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n", encoding="utf-8")
    config = {
        "add_prefix_space": False,
        "bos_token": _added_token(BOS),
        "do_lower_case": True,
        "eos_token": _added_token(EOS),
        "errors": "replace",
        "model_max_length": MODEL_MAX_LENGTH,
        "pad_token": pad_token,
        "tokenizer_class": "CLIPTokenizer",
        "unk_token": _added_token(EOS),
    }
    (dest / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
