"""A seeded synthetic caption corpus: references and predictions that look like COCO/Flickr30K captions.

Every image gets a latent scene (who, how many, what colour, doing what, where); its references are
independent paraphrases of that scene and its prediction is one more paraphrase that sometimes gets a
detail wrong, so the n-gram overlap between candidates and references is realistic. The surface text is
deliberately messy in the ways that exercise PTB tokenization: mixed case, commas and final punctuation,
digits and times, hyphenated words, possessives and contractions (ASCII and curly apostrophes), unicode
quotes and dashes, parentheses, ellipses, abbreviations, doubled spaces and the odd newline. The scenes
use TIDA's skill words (gender, colour, counting), so skill subsets are populated.

Example:
    >>> refs, preds = synthetic_corpus(3, n_refs=5, seed=0)
    >>> sorted(refs) == sorted(preds) == ["0", "1", "2"], len(refs["0"])
    (True, 5)
    >>> synthetic_corpus(3, seed=0) == synthetic_corpus(3, seed=0)
    True
"""

from __future__ import annotations

import random

__all__ = ["synthetic_corpus"]

# Each concept has several wordings (first = the commonest, what a captioner says); references pick them
# independently, so they agree on the scene but not word for word - like five annotators.
_PEOPLE = [(["man", "guy", "person", "gentleman"], ["men", "guys", "people"]),
           (["woman", "lady", "person", "girl"], ["women", "ladies", "people"]),
           (["boy", "kid", "young boy", "child"], ["boys", "kids", "children"]),
           (["girl", "young girl", "kid", "child"], ["girls", "young girls", "kids"]),
           (["skier", "person", "man"], ["skiers", "people"]),
           (["surfer", "man", "person"], ["surfers", "people"]),
           (["player", "athlete", "man"], ["players", "athletes"])]
_ANIMALS = [(["dog", "puppy", "pup"], ["dogs", "puppies"]), (["cat", "kitten", "kitty"], ["cats", "kittens"]),
            (["horse", "pony"], ["horses", "ponies"]), (["bird", "pigeon", "seagull"], ["birds", "pigeons"]),
            (["cow", "bull"], ["cows", "cattle"]), (["giraffe"], ["giraffes"]),
            (["elephant", "baby elephant"], ["elephants"]), (["sheep", "lamb"], ["sheep", "lambs"]),
            (["zebra"], ["zebras"])]
_COLOURS = ["red", "green", "blue", "yellow", "purple", "black", "white", "brown", "orange", "grey"]
_COUNTS = {1: ["a", "one", "A single"], 2: ["two", "2", "a pair of"], 3: ["three", "3"], 4: ["four", "4"],
           5: ["five", "5"], 6: ["six", "6", "several"]}
_CLOTHES = ["shirt", "jacket", "hat", "dress", "helmet", "coat", "t-shirt", "sweater"]
# (verb wordings, [(object wordings), ...])
_ACTIONS = [
    (["riding", "rides", "on", "is riding"], [["a bike", "a bicycle"], ["a skateboard", "a skate board"],
                                              ["a wave", "a large wave", "the surf"], ["a horse", "a brown horse"],
                                              ["a motorcycle", "a motor bike", "a scooter"]]),
    (["holding", "holds", "carrying", "with"], [["an umbrella", "a black umbrella"], ["a frisbee", "a disc"],
                                               ["a kite", "a colorful kite"], ["a cell phone", "a phone"],
                                               ["a tennis racket", "a racquet"], ["a baseball bat", "a bat"]]),
    (["eating", "eats", "biting into", "having"], [["a sandwich", "a sub"], ["a slice of pizza", "some pizza"],
                                                  ["a hot dog", "a hotdog"], ["some cake", "a piece of cake"],
                                                  ["a donut", "a doughnut"]]),
    (["standing next to", "stands by", "standing near", "beside"], [["a fire hydrant", "a hydrant"],
                                                                   ["a stop sign", "a red sign"],
                                                                   ["a parked car", "a car"],
                                                                   ["a wooden fence", "a fence"],
                                                                   ["a tree", "a large tree"]]),
    (["playing with", "plays with", "playing with"], [["a ball", "a soccer ball"], ["a frisbee", "a disc"],
                                                     ["a toy", "a stuffed toy"], ["a kite", "a string"]]),
    (["sitting on", "sits on", "resting on", "laying on"], [["a bench", "a park bench", "a wooden bench"],
                                                           ["a couch", "a sofa"], ["a bed", "an unmade bed"],
                                                           ["the grass", "a lawn"], ["a brick wall", "a wall"]]),
    (["looking at", "watching", "staring at", "looking toward"], [["a laptop", "a computer"],
                                                                 ["the ocean", "the sea", "the water"],
                                                                 ["a menu", "the menu"],
                                                                 ["a clock tower", "a tall clock"],
                                                                 ["the camera", "something"]]),
]
_PLACES = [["in a park", "at the park", "in a grassy park", "in a field"],
           ["on a beach", "on the beach", "by the ocean", "on the sand"],
           ["on a city street", "on a street", "in the city", "downtown"],
           ["in a kitchen", "in the kitchen", "at home"], ["in a field", "in a grassy field", "on the grass"],
           ["near the water", "by a lake", "near a river"], ["in the snow", "on a snowy slope", "on snow"],
           ["at a train station", "on a platform", "near the tracks"],
           ["in front of a building", "outside a building", "by a building"],
           ["on a tennis court", "on a court"], ["in a living room", "inside a house", "indoors"],
           ["at the zoo", "in an enclosure", "in a pen"], ["down a snowy hill", "down a slope", "downhill"],
           ["on a busy sidewalk", "on the sidewalk", "on a street corner"]]
_ADJ = ["young", "old", "small", "large", "happy", "tall", "little", "well-dressed", "middle-aged",
        "5-year-old", "smiling"]
_TIMES = ["at 10:30", "at 3 o'clock", "at 7 p.m.", "around 2.5 hours before sunset", "on a sunny day",
          "at night", "during the day"]
_TAILS = ["while it's raining", "and isn't wearing shoes", "but doesn't look happy", "with his friend's bag",
          "with the owner's dog", "in black-and-white", "(in the background)", "– a busy scene –",
          "... it's a nice day", "in the U.S.", "with Mr. Smith", "on St. Patrick's day", "etc.",
          "next to a “NO PARKING” sign", "near a ‘STOP’ sign", "— a close-up", "with 2nd place ribbons",
          "and can't stop smiling", "who's wearing a hat", "with x-ray glasses"]


def _pick(rng: random.Random, options: list[str], typical: bool) -> str:
    """The commonest wording (a captioner; half of the annotators) or any of them."""
    return options[0] if typical or rng.random() < 0.2 else rng.choice(options)


def _subject(rng: random.Random, scene: dict, exact: bool, typical: bool) -> str:
    n, (single, plural), colour = scene["n"], scene["who"], scene["colour"]
    words = [rng.choice(_COUNTS[n])] if (exact or rng.random() < 0.7) else (["a"] if n == 1 else ["some"])
    if n == 1 and words[0] == "a" and rng.random() < 0.3:
        words = ["the"]
    if not typical and rng.random() < 0.45:
        words.append(rng.choice(_ADJ))
    noun = _pick(rng, single if n == 1 else plural, typical)
    if words[0] == "a" and (words[-1][0] in "aeiou" if len(words) > 1 else noun[0] in "aeiou"):
        words[0] = "an"
    if scene["clothes"] and scene["kind"] == "person" and rng.random() < (0.3 if typical else 0.6):
        return " ".join(words + [noun, "in", "a", colour, scene["clothes"]])
    if rng.random() < (0.4 if typical else 0.6):
        words.append(colour)
    return " ".join(words + [noun])


def _surface(rng: random.Random, text: str) -> str:
    """Human-like messiness: case, punctuation, quotes, spacing."""
    r = rng.random()
    if r < 0.7:
        text = text[0].upper() + text[1:]
    elif r < 0.78:
        text = text.title()
    elif r < 0.82:
        text = text.upper()
    words = text.split(" ")
    if len(words) > 4 and rng.random() < 0.12:
        i = rng.randrange(1, len(words) - 1)
        words[i] = words[i] + ","
    if len(words) > 3 and rng.random() < 0.08:
        i = rng.randrange(len(words))
        words[i] = rng.choice(["“", '"', "‘"]) + words[i] + rng.choice(["”", '"', "’"])
    if rng.random() < 0.05:
        i = rng.randrange(len(words))
        words[i] = words[i].upper()
    sep = " "
    text = sep.join(words)
    if rng.random() < 0.05:
        text = text.replace(" ", "  ", 1)
    if rng.random() < 0.02:
        text = text.replace(" ", "\n", 1)
    end = rng.random()
    if end < 0.55:
        text += "."
    elif end < 0.6:
        text += "!"
    elif end < 0.63:
        text += " ."
    elif end < 0.66:
        text += "..."
    elif end < 0.68:
        text += "…"
    if rng.random() < 0.03:
        text = " " + text + " "
    return text


def _caption(rng: random.Random, scene: dict, exact: bool = False, typical: bool = False) -> str:
    verbs, _ = scene["action"]
    subject = _subject(rng, scene, exact, typical)
    verb = _pick(rng, verbs, typical)
    obj = _pick(rng, scene["object"], typical)
    place = _pick(rng, scene["place"], typical)
    plural = scene["n"] > 1
    if verb == "is riding" and plural:
        verb = "are riding"
    form = 0 if typical else rng.random()
    if form < 0.55:
        parts = [subject, verb, obj] + ([place] if rng.random() < 0.75 else [])
    elif form < 0.7:
        parts = [place[0].upper() + place[1:] + ",", subject, verb, obj]
    elif form < 0.82:
        parts = ["There " + ("are" if plural else "is"), subject, verb, obj, place]
    elif form < 0.92:
        parts = [subject, "that " + ("are" if plural else "is"), verb, obj]
    else:
        parts = ["A close up of", subject, verb, obj]
    if not typical and rng.random() < 0.2:
        parts.append(rng.choice(_TIMES))
    if rng.random() < (0.1 if typical else 0.25):
        parts.append(rng.choice(_TAILS))
    if not typical and rng.random() < 0.1:
        owner = rng.choice(["man's", "woman’s", "girl's", "dog's", "children's"])
        parts.append(f"near the {owner} {rng.choice(['car', 'house', 'bike', 'toys'])}")
    return _surface(rng, " ".join(parts))


def _scene(rng: random.Random) -> dict:
    person = rng.random() < 0.6
    who = rng.choice(_PEOPLE if person else _ANIMALS)
    verbs, objects = rng.choice(_ACTIONS)
    return {"kind": "person" if person else "animal", "who": who, "n": rng.choice([1, 1, 1, 2, 2, 3, 4, 5, 6]),
            "colour": rng.choice(_COLOURS), "clothes": rng.choice(_CLOTHES), "action": (verbs, objects),
            "object": rng.choice(objects), "place": rng.choice(_PLACES)}


def synthetic_corpus(n_images: int = 5000, n_refs: int = 5, seed: int = 0
                     ) -> tuple[dict[str, list[str]], dict[str, str]]:
    """``(references, predictions)``: ``{id: [n_refs captions]}`` and ``{id: caption}``, ids ``"0"``...

    Deterministic in ``seed``. References word the scene independently (synonyms, word order, optional
    details); predictions are plainer and about 40% get the colour, count, object or place wrong, like a real
    captioner's mistakes (BLEU-4 ~0.5, CIDEr-D ~1.7 at the defaults).
    """
    if n_images < 1 or n_refs < 1:
        raise ValueError(f"synthetic_corpus needs n_images >= 1 and n_refs >= 1, got {n_images}, {n_refs}")
    rng = random.Random(seed)
    refs: dict[str, list[str]] = {}
    preds: dict[str, str] = {}
    for i in range(n_images):
        scene = _scene(rng)
        key = str(i)
        refs[key] = [_caption(rng, scene) for _ in range(n_refs)]
        guess = dict(scene)
        r = rng.random()
        if r < 0.12:
            guess["colour"] = rng.choice(_COLOURS)
        elif r < 0.22:
            guess["n"] = max(1, min(6, scene["n"] + rng.choice([-1, 1])))
        elif r < 0.32:
            guess["object"] = rng.choice(scene["action"][1])
        elif r < 0.4:
            guess["place"] = rng.choice(_PLACES)
        preds[key] = _caption(rng, guess, exact=rng.random() < 0.5, typical=rng.random() < 0.3)
    return refs, preds
