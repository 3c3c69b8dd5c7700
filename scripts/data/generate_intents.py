#!/usr/bin/env python3
"""Expand the voice-assistant templates into labelled utterances: `intents.jsonl`.

    python scripts/data/generate_intents.py [--check]

Reads `intent_templates.txt` (`intent<TAB>template`, `{slot}` placeholders) and `slot_values.json`
(the values of each slot; `song_by` pairs a song with its artist, for templates naming both), and
writes one JSON object per line:

    {"text": "turn on the kitchen lights", "intent": "lights_on",
     "slots": [{"slot": "room", "value": "kitchen", "start": 12, "end": 19}], "split": "train"}

`start`/`end` are character offsets into `text`. The split is held back by *template* and by
*value*, so that the eval sentences test what a head learned rather than what it memorised: a
fifth of each intent's templates (ranked by a hash of their text) yield eval sentences only, and
a fifth of each slot's values (ranked the same way) fill eval sentences only. Everything is a pure
function of the two input files: the same files give the same `intents.jsonl` byte for byte
(`--check` says whether the committed file is up to date).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import re
import sys
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
TEMPLATES = HERE / "intent_templates.txt"
VALUES = HERE / "slot_values.json"
OUTPUT = HERE / "intents.jsonl"
HELD_BACK = 5  # one in HELD_BACK templates and values is eval-only (20 %)
PER_SLOTTED_TEMPLATE = 4  # sentences drawn from a template with slots (before de-duplication)
PER_PLAIN_TEMPLATE = 2  # ... and from one without (the second with a prefix or suffix)
_PLACEHOLDER = re.compile(r"\{(\w+)\}")
_PREFIXES = ("", "", "", "", "", "hey computer, ", "okay, ", "um, ")
_SUFFIXES = ("", "", "", "", "", " please", " thanks", " now")
_QUESTION = ("what", "how", "is", "will", "do", "can", "could", "should", "any")


@dataclass(frozen=True)
class Span:
    slot: str
    value: str
    start: int
    end: int


@dataclass(frozen=True)
class Template:
    intent: str
    text: str
    eval_only: bool


def _rank_key(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()


def _held_back(items: Sequence[str]) -> set[str]:
    """Every HELD_BACK-th item in hash order: a stable, order-independent fifth of `items`."""
    ranked = sorted(items, key=_rank_key)
    return {item for i, item in enumerate(ranked) if i % HELD_BACK == 0}


def read_templates(path: Path = TEMPLATES) -> list[Template]:
    by_intent: dict[str, list[str]] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip() or line.startswith("#"):
            continue
        intent, sep, text = line.partition("\t")
        if not sep or not intent or not text.strip():
            raise SystemExit(f"{path}:{number}: expected `intent<TAB>template`, got {line!r}")
        by_intent.setdefault(intent, []).append(text.strip())
    templates = []
    for intent, texts in by_intent.items():
        held = _held_back([f"{intent}\t{t}" for t in texts])
        templates += [Template(intent, t, f"{intent}\t{t}" in held) for t in texts]
    return templates


def read_values(path: Path = VALUES) -> tuple[dict[str, list[str]], list[tuple[str, str]]]:
    """(slot -> values, (song, artist) pairs)."""
    doc = json.loads(path.read_text(encoding="utf-8"))
    pairs = [(str(song), str(artist)) for song, artist in doc.pop("song_by")]
    values = {slot: [str(v) for v in vals] for slot, vals in doc.items()}
    values["song"] = [song for song, _ in pairs]
    return values, pairs


def _fill(template: str, choose: dict[str, str]) -> tuple[str, list[Span]]:
    out, spans, pos = "", [], 0
    for match in _PLACEHOLDER.finditer(template):
        out += template[pos : match.start()]
        value = choose[match.group(1)]
        spans.append(Span(match.group(1), value, len(out), len(out) + len(value)))
        out += value
        pos = match.end()
    return out + template[pos:], spans


def _decorate(
    text: str, spans: list[Span], rng: random.Random, plain: bool
) -> tuple[str, list[Span]]:
    """A spoken prefix or suffix, a capital or a question mark: what varies between speakers."""
    prefix = "" if plain else rng.choice(_PREFIXES)
    suffix = "" if plain or text.endswith("please") else rng.choice(_SUFFIXES)
    if text.split(" ", 1)[0].removesuffix("'s") in _QUESTION and rng.random() < 0.5:
        suffix += "?"
    starts_with_value = bool(spans) and spans[0].start == 0
    if not prefix and not starts_with_value and rng.random() < 0.3:
        text = text[:1].upper() + text[1:]
    n = len(prefix)
    return prefix + text + suffix, [Span(s.slot, s.value, s.start + n, s.end + n) for s in spans]


def _choices(
    names: list[str],
    pairs: list[tuple[str, str]],
    allowed: dict[str, list[str]],
    rng: random.Random,
) -> dict[str, str]:
    choose = {name: rng.choice(allowed[name]) for name in names}
    if "song" in choose and "artist" in choose:  # a real pairing, both of them allowed here
        fit = [p for p in pairs if p[0] in allowed["song"] and p[1] in allowed["artist"]]
        choose["song"], choose["artist"] = rng.choice(fit)
    return choose


def generate() -> Iterator[dict[str, object]]:
    """The labelled sentences, in template order (see the module docstring)."""
    values, pairs = read_values()
    held = {slot: _held_back(vals) for slot, vals in values.items()}
    train_values = {slot: [v for v in vals if v not in held[slot]] for slot, vals in values.items()}
    seen: set[str] = set()
    for template in read_templates():
        names = _PLACEHOLDER.findall(template.text)
        unknown = set(names) - set(values)
        if unknown:
            raise SystemExit(f"template {template.text!r} names unknown slots {sorted(unknown)}")
        rng = random.Random(f"{template.intent}\t{template.text}")  # stable per template
        allowed = values if template.eval_only else train_values
        count = PER_SLOTTED_TEMPLATE if names else PER_PLAIN_TEMPLATE
        for i in range(count):
            choose = _choices(names, pairs, allowed, rng)
            text, spans = _fill(template.text, choose)
            text, spans = _decorate(text, spans, rng, plain=not names and i == 0)
            if text.lower() in seen:
                continue
            seen.add(text.lower())
            yield {
                "text": text,
                "intent": template.intent,
                "slots": [asdict(s) for s in spans],
                "split": "eval" if template.eval_only else "train",
            }


def render() -> str:
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in generate())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--check", action="store_true", help="exit 1 when intents.jsonl is not what it should be"
    )
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = OUTPUT.read_text(encoding="utf-8") if OUTPUT.exists() else ""
        if current != text:
            print(f"{OUTPUT} is out of date: run {Path(__file__).name}", file=sys.stderr)
            return 1
        return 0
    OUTPUT.write_text(text, encoding="utf-8")
    rows = text.count("\n")
    evals = text.count('"split": "eval"')
    print(f"wrote {OUTPUT}: {rows} sentences ({rows - evals} train, {evals} eval)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
