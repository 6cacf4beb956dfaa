"""Caption edits used as re-ranker negatives: they must change meaning, not give themselves away."""

import random

from training.text_edits import change_object, flip_relation, random_edit, swap_attributes

OBJECTS = ["circle", "square", "triangle", "cross"]


def test_swap_exchanges_object_colours_and_every_mention():
    caption = "A red circle and a blue square; the square is left of the red circle."
    swapped = swap_attributes(caption, random.Random(0))
    assert swapped == "A blue circle and a red square; the square is left of the blue circle."


def test_swap_never_recolours_the_background():
    caption = "On a black background, a red circle and a blue square."
    for seed in range(20):
        swapped = swap_attributes(caption, random.Random(seed))
        assert swapped == "On a black background, a blue circle and a red square."
    assert swap_attributes("On a black background, a white star.", random.Random(0)) is None


def test_flip_relation_and_change_object():
    caption = "A red circle is left of a blue square."
    assert flip_relation(caption, random.Random(0)) == "A red circle is right of a blue square."
    changed = change_object("A red circle; the circle is small.", random.Random(0), OBJECTS)
    noun = changed.split()[2].rstrip(";")
    assert noun != "circle" and noun in OBJECTS
    assert changed == f"A red {noun}; the {noun} is small."  # every mention changes


def test_random_edit_changes_the_caption_or_says_it_cannot():
    assert random_edit("There is a cat.", random.Random(0), OBJECTS) is None
    caption = "A red circle and a blue square."
    for seed in range(10):
        edited = random_edit(caption, random.Random(seed), OBJECTS)
        assert edited is not None and edited != caption
