"""TIDA captions: skill detection with noun phrases, skill files, and counterfactual caption edits."""

import json
import random

import pytest

from augment.cli import main
from augment.counterfactual import CaptionEdit, counterfactuals, sample_counterfactual
from augment.skills import (
    SKILL_DATA_DIR,
    SKILL_WORDS,
    SKILLS,
    Skill,
    detect_skills,
    find_skills,
    load_skill,
    load_skills,
)

# A counting skill with "one" and digits, as a user would write it: edits then cross one and need morphology.
COUNTING_WITH_ONE = """\
name: counting
kind: number
groups:
  count: [one, two, three, four, 1, 2, 3, 4]
"""


@pytest.fixture
def counting_with_one(tmp_path):
    path = tmp_path / "counting.yaml"
    path.write_text(COUNTING_WITH_ONE)
    return load_skills([path])["counting"]


def edited(caption, skills=None):
    return [e.edited for e in counterfactuals(caption, skills)]


# ---- skills and their files ------------------------------------------------------------------------------


def test_default_skills_are_the_tida_paper_lists():
    assert SKILLS == ("gender", "color", "counting")
    assert SKILL_WORDS == {
        "gender": {"male": ("boy", "boys", "man", "men", "guy", "guys"),
                   "female": ("girl", "girls", "woman", "women")},
        "color": {"color": ("red", "green", "blue", "yellow", "purple")},
        "counting": {"count": ("two", "three", "four", "five", "six")},
    }


@pytest.mark.parametrize("path", sorted(SKILL_DATA_DIR.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_shipped_skill_file_loads_and_is_named_after_its_file(path):
    skill = load_skill(path)
    assert skill.name == path.stem
    assert all(skill.alternatives(w) for w in skill.words)


def test_shipped_skills_include_size_and_shape():
    assert sorted(load_skills()) == ["color", "counting", "gender", "shape", "size"]


def test_user_file_adds_a_skill_that_detection_and_edits_use(tmp_path):
    (tmp_path / "texture.yaml").write_text("name: texture\nrole: modifier\ngroups:\n  texture: [furry, smooth]\n")
    skills = load_skills([tmp_path])
    assert set(skills) == {"color", "counting", "gender", "shape", "size", "texture"}
    assert [(m.skill, m.word, m.phrase) for m in find_skills("A furry red hat.", skills)] == [
        ("texture", "furry", "A furry red hat"), ("color", "red", "A furry red hat")]
    assert edited("A furry hat.", [skills["texture"]]) == ["A smooth hat."]


def test_user_file_replaces_the_shipped_skill_of_the_same_name(counting_with_one):
    assert counting_with_one.words == ("one", "two", "three", "four", "1", "2", "3", "4")
    assert counting_with_one.alternatives("two") == ("one", "three")
    assert counting_with_one.alternatives("4") == ("3",)


@pytest.mark.parametrize("text, message", [
    ("name: x\ngroups: {g: [a, b]}\ncolour: 1\n", "unknown skill keys ['colour']"),
    ("name: x\ngroups: {g: [lonely]}\n", "['lonely'] have nothing to become"),
    ("name: x\ngroups: {g: [red, red hot]}\n", "'red hot' is not a single word"),
    ("name: x\nkind: number\ngroups: {g: [two, dozen]}\n", "['dozen'] are not numbers"),
    ("name: x\ngroups: {g: [a, b]}\ncounterparts: {c: a}\n", "counterparts.c: 'c' is not a word of any group"),
    ("name: x\ngroups: {g: [a, b], h: [b, c]}\n", "word 'b' is in groups 'g' and 'h'"),
    ("groups: {g: [a, b]}\n", "missing key 'name'"),
])
def test_bad_skill_file_is_an_error_naming_the_file(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ValueError) as err:
        load_skill(path)
    assert message in str(err.value)
    assert str(path) in str(err.value)


def test_unknown_skill_name_is_an_error():
    with pytest.raises(ValueError, match="unknown skill 'texture'"):
        find_skills("A cat.", ["texture"])


# ---- detection -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("caption, skills, expected", [
    ("A woman holds two red balloons.", None,
     [("gender", "woman", "A woman"), ("counting", "two", "two red balloons"), ("color", "red", "two red balloons")]),
    ("The little girl in a blue t-shirt.", None,
     [("gender", "girl", "The little girl"), ("color", "blue", "a blue t-shirt")]),
    ("A red fire truck parked on the street.", None, [("color", "red", "A red fire truck")]),
    ("A smiling young woman's red hat.", None,
     [("gender", "woman", "A smiling young woman"), ("color", "red", "red hat")]),
    ("Two men play guitar.", None, [("counting", "two", "Two men"), ("gender", "men", "Two men")]),
    ("Two of the men.", None, [("counting", "two", "Two"), ("gender", "men", "the men")]),
    ("A woman in a red and white shirt.", None,
     [("gender", "woman", "A woman"), ("color", "red", "a red and white shirt")]),
    ("A man in red walks his dog.", ["color"], [("color", "red", "red")]),
    ("A boy wearing red shoes.", ["color"], [("color", "red", "red shoes")]),
    ("A big dog by a town square.", ["size", "shape"], [("size", "big", "A big dog")]),
    ("A round table and a square.", ["shape"], [("shape", "round", "A round table")]),
])
def test_find_skills_gives_word_and_noun_phrase(caption, skills, expected):
    matches = find_skills(caption, skills)
    assert [(m.skill, m.word, m.phrase) for m in matches] == expected
    for m in matches:
        assert caption[m.start:m.end].lower() == m.word
        assert caption[m.phrase_start:m.phrase_end] == m.phrase


def test_find_skills_records_the_group():
    assert [m.group for m in find_skills("A man and two women.")] == ["male", "count", "female"]


def test_digits_count_only_as_whole_numbers(counting_with_one):
    matches = find_skills("Version 2.5 of 2nd place, 1990s, 4 cats at 3:30.", [counting_with_one])
    assert [(m.word, m.phrase) for m in matches] == [("4", "4 cats")]


def test_detect_skills_ignores_digits_with_the_paper_lists():
    assert detect_skills("2 dogs and 3 cats.") == set()
    assert detect_skills("Two dogs.") == {"counting"}


# ---- counterfactual edits --------------------------------------------------------------------------------

COLORS = ("green", "blue", "yellow", "purple")

# (caption, skills, every edited caption in order), each hand-checked.
TRICKY = [
    # several skills in one caption
    ("A woman holds two red balloons.", None,
     ["A man holds two red balloons.", "A woman holds three red balloons."]
     + [f"A woman holds two {c} balloons." for c in COLORS]),
    # pronouns: possessive "her" -> "his", object "her" -> "him", he/she, himself/herself
    ("A girl hugs her brother.", None, ["A boy hugs his brother."]),
    ("A woman smiles while a dog licks her.", None, ["A man smiles while a dog licks him."]),
    ("The man walks his dog and talks to him.", None, ["The woman walks her dog and talks to her."]),
    ("The boy says he did it himself.", None, ["The girl says she did it herself."]),
    ("The man says the bag is his.", None, ["The woman says the bag is hers."]),
    ("She and her friend watch two boys.", None,
     ["She and her friend watch three boys.", "She and her friend watch two girls."]),
    # pronouns repaired only where they refer to the edited word: the nearest singular word of its group
    ("A man and a woman hug; he smiles at her.", None,
     ["A woman and a woman hug; she smiles at her.", "A man and a man hug; he smiles at him."]),
    ("A man and a boy; he waves.", None, ["A woman and a boy; he waves.", "A man and a girl; she waves."]),
    ("A woman and her two girls.", None,
     ["A man and his two girls.", "A woman and her three girls.", "A woman and her two boys."]),
    ("HIS BOY.", None, ["HER GIRL."]),
    # capitals
    ("Woman in a purple dress.", None,
     ["Man in a purple dress.", "Woman in a red dress.", "Woman in a green dress.", "Woman in a blue dress.",
      "Woman in a yellow dress."]),
    ("TWO MEN ON A BENCH.", None, ["THREE MEN ON A BENCH.", "TWO WOMEN ON A BENCH."]),
    ("HE AND TWO BOYS.", ["gender"], ["HE AND TWO GIRLS."]),
    # possessives
    ("The woman's bag is red.", ["gender"], ["The man's bag is red."]),
    ("Two women's hats.", None, ["Three women's hats.", "Two men's hats."]),
    # TIDA's one-way guy -> girl, and six -> five at the top of the list
    ("Six guys and a girl.", None, ["Five guys and a girl.", "Six girls and a girl.", "Six guys and a boy."]),
    # punctuation between skill words
    ("A red car, a blue bus!", ["color"],
     [f"A {c} car, a blue bus!" for c in COLORS]
     + [f"A red car, a {c} bus!" for c in ("red", "green", "yellow", "purple")]),
    # size: counterparts, only where the word modifies a noun
    ("A little girl with a big dog.", ["size"],
     ["A big girl with a big dog.", "A little girl with a small dog.", "A little girl with a little dog."]),
    ("The dog is big.", ["size"], []),
    # shape and "a"/"an"
    ("A round table in a town square.", ["shape"],
     ["A square table in a town square.", "A rectangular table in a town square.",
      "A triangular table in a town square.", "An oval table in a town square."]),
    ("An oval mirror.", ["shape"],
     ["A round mirror.", "A square mirror.", "A rectangular mirror.", "A triangular mirror."]),
    ("AN OVAL MIRROR.", ["shape"],
     ["A ROUND MIRROR.", "A SQUARE MIRROR.", "A RECTANGULAR MIRROR.", "A TRIANGULAR MIRROR."]),
    # digits are not in the paper's counting list
    ("A man walks 2 dogs.", ["counting"], []),
]


@pytest.mark.parametrize("caption, skills, expected", TRICKY, ids=[row[0] for row in TRICKY])
def test_counterfactuals_of_tricky_captions(caption, skills, expected):
    assert edited(caption, skills) == expected


# (caption, every edited caption) with a counting skill that has "one" and digits.
TRICKY_COUNTS = [
    ("One dog is running.", ["Two dogs are running."]),
    ("Two dogs are running.", ["One dog is running.", "Three dogs are running."]),
    ("A man walks 2 dogs.", ["A man walks 1 dog.", "A man walks 3 dogs."]),
    ("Two puppies play in the snow.", ["One puppy plays in the snow.", "Three puppies play in the snow."]),
    ("One child runs.", ["Two children run."]),
    ("One woman watches.", ["Two women watch."]),
    ("One dog's bone.", ["Two dogs' bone."]),
    ("Two dogs' toys.", ["One dog's toys.", "Three dogs' toys."]),
    ("Two men's hats.", ["One man's hats.", "Three men's hats."]),
    ("TWO DOGS ARE BARKING.", ["ONE DOG IS BARKING.", "THREE DOGS ARE BARKING."]),
    ("Two dogs that play.", ["One dog that plays.", "Three dogs that play."]),
    ("One dog isn't barking.", ["Two dogs aren't barking."]),
    ("Two dogs ran home.", ["One dog ran home.", "Three dogs ran home."]),
    ("Two dogs outside.", ["One dog outside.", "Three dogs outside."]),
    ("Two of the dogs are asleep.", ["One of the dogs is asleep.", "Three of the dogs are asleep."]),
    ("Two red fire trucks.", ["One red fire truck.", "Three red fire trucks."]),
    ("A two-year-old boy.", ["A one-year-old boy.", "A three-year-old boy."]),
    ("Four cats, 3.5 kg.", ["Three cats, 3.5 kg."]),
]


@pytest.mark.parametrize("caption, expected", TRICKY_COUNTS, ids=[row[0] for row in TRICKY_COUNTS])
def test_count_edits_that_cross_one_fix_noun_possessive_and_verb(counting_with_one, caption, expected):
    assert edited(caption, [counting_with_one]) == expected


def test_an_before_a_new_colour_that_starts_with_a_vowel(tmp_path):
    (tmp_path / "color.yaml").write_text("name: color\ngroups:\n  color: [red, orange]\n")
    skills = load_skills([tmp_path])
    assert edited("A red apple and an orange.", skills["color"]) == ["An orange apple and an orange.",
                                                                       "A red apple and a red."]


def test_edits_record_word_span_and_phrases():
    edit = counterfactuals("A woman holds two red balloons.", ["color"])[0]
    assert edit == CaptionEdit(skill="color", word="red", new_word="green", start=18, end=21,
                               caption="A woman holds two red balloons.", edited="A woman holds two green balloons.",
                               phrase="two red balloons", new_phrase="two green balloons")


def test_new_phrase_follows_the_noun_change(counting_with_one):
    edit = counterfactuals("One dog is running.", [counting_with_one])[0]
    assert (edit.word, edit.new_word, edit.phrase, edit.new_phrase) == ("One", "Two", "One dog", "Two dogs")


@pytest.mark.parametrize("caption, skills", [(row[0], row[1]) for row in TRICKY if row[2]])
def test_every_edit_changes_the_caption_at_its_word(caption, skills):
    edits = counterfactuals(caption, skills)
    assert edits  # only rows with expected edits are listed here
    for e in edits:
        assert e.edited != e.caption
        assert e.caption[e.start:e.end] == e.word
        assert e.word.lower() != e.new_word.lower()


# ---- sampling --------------------------------------------------------------------------------------------


def test_sample_is_seeded_and_reaches_every_edit():
    caption = "A woman holds two red balloons."
    assert sample_counterfactual(caption, rng=3) == sample_counterfactual(caption, rng=3)
    drawn = {sample_counterfactual(caption, rng=seed).edited for seed in range(100)}
    assert drawn == set(edited(caption))


def test_sample_draws_a_word_first_then_its_alternative():
    rng = random.Random(0)
    skills = [e.skill for e in (sample_counterfactual("A woman holds two red balloons.", rng=rng)
                                for _ in range(600))]
    # Three skill words: each about a third of the draws, though colour has four alternatives.
    assert all(150 < skills.count(s) < 250 for s in ("gender", "counting", "color"))


def test_sample_keeps_to_the_given_skill_and_returns_none_without_one():
    assert sample_counterfactual("A woman holds two red balloons.", "counting", rng=0).edited == \
        "A woman holds three red balloons."
    assert sample_counterfactual("A woman holds a cat.", "color", rng=0) is None


# ---- command line ----------------------------------------------------------------------------------------


def test_cli_counterfactual_prints_every_edit(capsys):
    assert main(["counterfactual", "A woman holds two red balloons."]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [e["edited"] for e in out[0]["edits"]] == edited("A woman holds two red balloons.")
    assert out[0]["caption"] == "A woman holds two red balloons."
    assert out[0]["edits"][0] == {"skill": "gender", "word": "woman", "new_word": "man", "start": 2, "end": 7,
                                  "edited": "A man holds two red balloons.", "phrase": "A woman",
                                  "new_phrase": "A man"}


def test_cli_counterfactual_with_a_skill_file_and_sampling(tmp_path, capsys):
    path = tmp_path / "counting.yaml"
    path.write_text(COUNTING_WITH_ONE)
    assert main(["counterfactual", "--skill-file", str(path), "--skill", "counting", "--sample",
                 "One dog is here.", "A cat."]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [[e["edited"] for e in c["edits"]] for c in out] == [["Two dogs are here."], []]


def test_cli_unknown_skill_is_an_error(capsys):
    assert main(["counterfactual", "--skill", "texture", "A cat."]) == 2
    assert "unknown skill(s) ['texture']" in capsys.readouterr().err


def test_cli_skills_counts_a_dataset(tmp_path, capsys):
    from PIL import Image

    from vlm.data import Record, write_imagefolder

    write_imagefolder(tmp_path, [Record("0.png", ["Two men in red.", "A dog."]), Record("1.png", ["A big cat."])],
                      [Image.new("RGB", (4, 4)), Image.new("RGB", (4, 4))])
    assert main(["skills", "--data", str(tmp_path)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["captions_with_skill"] == {"gender": 1, "color": 1, "counting": 1}
    assert main(["skills", "--data", str(tmp_path), "--skill", "size"]) == 0
    assert json.loads(capsys.readouterr().out)["images_with_skill"] == {"size": 1}
