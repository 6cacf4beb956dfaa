"""Caption edits used as re-ranker negatives: they must change meaning, not give themselves away."""

import random

import numpy as np

from xmr.training.text_edits import change_object, flip_relation, swap_attributes, swap_operands

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


def test_swap_operands_exchanges_the_two_objects_of_a_relation():
    objects = OBJECTS + ["background"]  # "beige background" makes it a learned object word
    cases = {
        "A red circle is left of a blue square.": "A blue square is left of a red circle.",
        "On a gray background, a big red circle to the left of a cross.":
            "On a gray background, a cross to the left of a big red circle.",
        "A red circle with a blue square to its left.":
            "A blue square with a red circle to its left.",
        "A red circle with a blue square under it on a black background.":
            "A blue square with a red circle under it on a black background.",
        # A third object after the relation is no operand of it.
        "A red circle with a blue square under it, and there is also a cross.":
            "A blue square with a red circle under it, and there is also a cross.",
        "A cross and a red circle; the circle is above the cross.":
            "A cross and a red circle; the cross is above the circle.",
    }  # fmt: skip
    for caption, swapped in cases.items():
        assert swap_operands(caption, random.Random(0), objects) == swapped
    for caption in (
        "There is a red circle and a blue square; the square is on the left.",  # one operand
        "A red circle is left of a red circle.",  # exchanging equals changes nothing
        "A red circle.",
    ):
        assert swap_operands(caption, random.Random(0), objects) is None, caption


def test_caption_edits_encode_every_edit_that_applies_at_its_row(encoder):
    """The trainer's text negatives: each caption's swap, flip and object change, encoded
    once; a batch gets exactly its captions' edits, tagged with their batch rows."""
    from xmr.training.reranker_training.edits import caption_edits

    caption = "A red circle is left of a blue square."
    # 5 mentions after a colour make a word an object: circle, square, triangle
    captions = [caption] * 5 + ["A green triangle."] * 5 + ["There is a cat."]
    edits = caption_edits(encoder, captions, random.Random(0))
    assert (edits.rows[:5] >= 0).all() and (edits.rows[10] == -1).all()
    # only an object change applies
    assert list(edits.rows[5] >= 0) == [False, False, True, False]
    swap, flip, operands = edits.rows[0, 0], edits.rows[0, 1], edits.rows[0, 3]
    expected = encoder.encode_texts(
        [
            "A blue circle is left of a red square.",
            "A red circle is right of a blue square.",
            "A blue square is left of a red circle.",
        ]
    )
    # (batch composition moves float16 tokens by ~1e-4; a wrong text moves them by ~1)
    np.testing.assert_allclose(edits.tokens[swap].float(), expected.tokens[0], atol=2e-3)
    np.testing.assert_allclose(edits.tokens[flip].float(), expected.tokens[1], atol=2e-3)
    np.testing.assert_allclose(edits.tokens[operands].float(), expected.tokens[2], atol=2e-3)
    tokens, lengths, batch_rows, vectors = edits.of(np.array([10, 0, 10]))
    assert list(batch_rows) == [1, 1, 1, 1] and len(tokens) == len(vectors) == 4
    assert int(lengths[0]) == int(expected.lengths[0])
