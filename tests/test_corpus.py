"""The synthetic shapes corpus: determinism, caption truth, hard negatives, faithful pixels,
unique scenes, and the Karpathy JSON layout."""

import json
import random
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from xmr.retrieval.errors import InputError
from xmr.training.corpus import (
    BACKGROUNDS,
    COLOURS,
    RELATION_MARGIN,
    SHADING_AMPLITUDE,
    SHAPES,
    Scene,
    SceneObject,
    canonical_description,
    captions_for,
    describe,
    is_caption_true,
    is_phrase_true,
    make_corpus,
    negatives_for,
    render_scene,
    sample_scenes,
)

ABSOLUTE = re.compile(r" is (?:on the left|on the right|at the top|on top|at the bottom)")
RELATION_WORDS = {"left", "right", "above", "below", "over", "under", "beneath", "top", "bottom"}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("corpus")
    make_corpus(out, n_images=200, seed=7)
    return out, json.loads((out / "captions.json").read_text())


@pytest.fixture(scope="module")
def scenes() -> list[Scene]:
    return sample_scenes(2000, seed=3)


def _pixels(folder: Path) -> list[np.ndarray]:
    return [np.asarray(Image.open(p)) for p in sorted((folder / "images").glob("*.png"))]


def _words(caption: str) -> list[str]:
    # "a red ..." becomes "an orange ...": the article follows the colour, so ignore a/an.
    return ["a" if t == "an" else t for t in re.findall(r"[a-z]+", caption.lower())]


def _red_circle_left_of_blue_square() -> Scene:
    return Scene(
        background="gray",
        objects=(
            SceneObject("circle", "red", "small", x=14, y=30),
            SceneObject("square", "blue", "big", x=46, y=34),
        ),
        relation=(0, "left", 1),
    )


def test_same_seed_gives_identical_corpus_and_other_seed_differs(tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    make_corpus(a, n_images=30, seed=11)
    make_corpus(b, n_images=30, seed=11)
    make_corpus(c, n_images=30, seed=12)
    assert (a / "captions.json").read_bytes() == (b / "captions.json").read_bytes()
    pixels_a, pixels_b = _pixels(a), _pixels(b)
    assert len(pixels_a) == 30
    assert all(np.array_equal(x, y) for x, y in zip(pixels_a, pixels_b, strict=True))
    assert (a / "captions.json").read_bytes() != (c / "captions.json").read_bytes()
    assert not all(np.array_equal(x, y) for x, y in zip(pixels_a, _pixels(c), strict=True))


def test_worker_processes_write_the_same_corpus(tmp_path):
    make_corpus(tmp_path / "one", n_images=20, seed=5)
    make_corpus(tmp_path / "two", n_images=20, seed=5, workers=2)
    one, two = tmp_path / "one", tmp_path / "two"
    assert (one / "captions.json").read_bytes() == (two / "captions.json").read_bytes()
    for png in sorted((one / "images").glob("*.png")):
        assert png.read_bytes() == (two / "images" / png.name).read_bytes()


def test_every_caption_is_true_and_names_every_object(corpus):
    _, data = corpus
    for image in data["images"]:
        scene = Scene.from_json(image["scene"])
        raws = [s["raw"] for s in image["sentences"]]
        assert len(raws) == 5 and len(set(raws)) == 5
        for raw in raws:
            assert is_caption_true(scene, raw), (raw, image["scene"])
            for obj in scene.objects:
                # Size words may sit before the colour, never between colour and shape.
                assert f"{obj.colour} {obj.shape}" in raw.lower(), (raw, obj)
            if len(scene.objects) > 1:
                assert set(_words(raw)) & RELATION_WORDS, raw


def test_every_negative_is_false(corpus):
    _, data = corpus
    kinds = dict.fromkeys(
        ("attribute_swap", "relation_swap", "operand_swap", "shape_change", "colour_change"), 0
    )
    for image in data["images"]:
        scene = Scene.from_json(image["scene"])
        negatives = image["negatives"]
        assert negatives, image["imgid"]
        for kind, text in negatives.items():
            kinds[kind] += 1
            assert not is_caption_true(scene, text), (kind, text, image["scene"])
        if len(scene.objects) > 1:
            assert {"relation_swap", "operand_swap"} <= set(negatives)
        else:
            assert set(negatives) == {"shape_change", "colour_change"}
    assert all(count > 20 for count in kinds.values()), kinds


def test_attribute_swap_exchanges_two_colour_words_of_the_paired_caption(corpus):
    _, data = corpus
    swaps = 0
    for image in data["images"]:
        if "attribute_swap" not in image["negatives"]:
            continue
        swaps += 1
        true_raw = next(
            s["raw"] for s in image["sentences"] if s["sentid"] == image["negatives_of"]
        )
        true, swapped = _words(true_raw), _words(image["negatives"]["attribute_swap"])
        assert len(true) == len(swapped)
        changed = {(t, s) for t, s in zip(true, swapped, strict=True) if t != s}
        assert len(changed) == 2, (true_raw, image["negatives"]["attribute_swap"])
        (c1, c2), (c3, c4) = sorted(changed)
        assert {c1, c2} <= set(COLOURS) and (c3, c4) == (c2, c1)
    assert swaps > 50


def test_negatives_pair_with_the_first_caption_for_an_equally_seeded_rng():
    scene = _red_circle_left_of_blue_square()
    first = captions_for(scene, random.Random(5), n=5)[0]
    negatives = negatives_for(scene, random.Random(5))
    assert describe(scene, random.Random(5), n=1).captions[0] == first
    assert set(negatives) == {
        "attribute_swap",
        "relation_swap",
        "operand_swap",
        "shape_change",
        "colour_change",
    }
    assert all(not is_caption_true(scene, text) for text in negatives.values())


def test_relation_negatives_reverse_the_word_or_exchange_the_objects(corpus):
    """relation_swap changes only relation words of the paired caption; operand_swap keeps
    the words (a bag of words cannot tell it from the truth) and changes their order."""
    _, data = corpus
    operand_swaps = bag_of_words_blind = 0
    for image in data["images"]:
        negatives = image["negatives"]
        if "operand_swap" not in negatives:
            continue
        operand_swaps += 1
        true_raw = next(
            s["raw"] for s in image["sentences"] if s["sentid"] == image["negatives_of"]
        )
        true, flipped = _words(true_raw), _words(negatives["relation_swap"])
        # ("at the top" becomes "at the bottom" or "on top": filler words may change too)
        filler = RELATION_WORDS | {"to", "the", "of", "on", "at"}
        assert flipped != true
        assert [w for w in flipped if w not in filler] == [w for w in true if w not in filler]
        swapped = _words(negatives["operand_swap"])
        assert swapped != true
        if not ABSOLUTE.search(true_raw.lower()):  # "the circle is on the left" names one
            # The same words, up to where a colour or a size synonym lands ("the square" may
            # become "the pink square", "big" "large", as a mention moves to the other object).
            synonym = {"little": "small", "large": "big"}
            assert {synonym.get(w, w) for w in swapped} == {synonym.get(w, w) for w in true}
            bag_of_words_blind += 1
    assert operand_swaps > 50 and bag_of_words_blind > 40


def test_phrases_are_true_short_and_varied(corpus):
    _, data = corpus
    forms = set()
    for image in data["images"]:
        scene = Scene.from_json(image["scene"])
        phrases = image["phrases"]
        assert len(phrases) == 3 and len(set(phrases)) == 3, phrases
        for phrase in phrases:
            assert is_phrase_true(scene, phrase), (phrase, image["scene"])
            assert len(phrase.split()) <= 9 and not phrase.endswith(".")
            first = phrase.split()[0]
            forms.add(first if first in ("a", "an", "one", "two", "three") else "bare")
            forms.add("and" if " and " in phrase else "one item")
    assert forms == {"a", "an", "one", "two", "three", "bare", "and", "one item"}


def test_phrase_checker_reads_counts_plurals_and_pairs():
    scene = _red_circle_left_of_blue_square()
    for true in ("a red circle", "red circle", "circles", "a circle", "one circle",
                 "two shapes", "a small red circle", "one blue square",
                 "red circle and blue square", "a red circle and a big blue square"):  # fmt: skip
        assert is_phrase_true(scene, true), true
    for false in ("a blue circle", "two circles", "three shapes", "a big red circle",
                  "crosses", "red circle and blue cross", "one shape"):  # fmt: skip
        assert not is_phrase_true(scene, false), false
    with pytest.raises(InputError):
        is_phrase_true(scene, "a red circle left of a blue square")


def test_phrases_leave_the_sentences_and_negatives_as_before(corpus):
    """Phrases draw from their own RNG: each image's sentences and negatives are exactly
    what `describe` writes from the image's own seed, as before phrases existed."""
    _, data = corpus
    for image in data["images"][:40]:
        scene = Scene.from_json(image["scene"])
        again = describe(scene, random.Random(f"xmr-shapes/7/{image['imgid']}"))
        assert [s["raw"] for s in image["sentences"]] == again.captions
        assert image["negatives"] == again.negatives


def test_load_dataset_adds_phrases_only_when_asked(corpus):
    from xmr.evaluation.datasets import load_dataset

    out, data = corpus
    plain = load_dataset(out / "captions.json", split="val")
    with_phrases = load_dataset(out / "captions.json", split="val", phrases=True)
    records = [im for im in data["images"] if im["split"] == "val"]
    assert len(plain.captions) == 5 * len(records)
    assert len(with_phrases.captions) == 8 * len(records)
    first = with_phrases.image_to_texts[0]
    assert [with_phrases.captions[t] for t in first[5:]] == records[0]["phrases"]


def test_rendering_puts_each_colour_at_each_centre():
    for scene in sample_scenes(40, seed=9):
        pixels = np.asarray(render_scene(scene)).astype(int)
        assert pixels.shape == (64, 64, 3)
        for obj in scene.objects:
            assert tuple(pixels[obj.y, obj.x]) == COLOURS[obj.colour], (obj, scene.shading)
        corner = pixels[0, 0] - np.array(BACKGROUNDS[scene.background])
        assert np.abs(corner).max() <= SHADING_AMPLITUDE
    flat = _red_circle_left_of_blue_square()
    assert tuple(np.asarray(render_scene(flat))[0, 0]) == BACKGROUNDS["gray"]


def test_rendering_scales_positions_with_image_size():
    scene = _red_circle_left_of_blue_square()
    big = np.asarray(render_scene(scene, size=128))
    assert big.shape == (128, 128, 3)
    for obj in scene.objects:
        assert tuple(big[2 * obj.y, 2 * obj.x]) == COLOURS[obj.colour]


def test_relations_and_placement_are_geometrically_sound(scenes):
    for scene in scenes:
        margin = RELATION_MARGIN * scene.canvas
        if scene.relation is not None:
            i, direction, j = scene.relation
            a, b = scene.objects[i], scene.objects[j]
            if direction == "left":
                assert a.x + margin <= b.x and abs(b.y - a.y) < abs(b.x - a.x)
            else:
                assert direction == "above"
                assert a.y + margin <= b.y and abs(b.x - a.x) < abs(b.y - a.y)
        half = {"small": 7, "big": 12}  # bounding-box half sides on a 64 px canvas
        for k, a in enumerate(scene.objects):
            assert (
                half[a.size] <= a.x < 64 - half[a.size] and half[a.size] <= a.y < 64 - half[a.size]
            )
            for b in scene.objects[k + 1 :]:
                reach = half[a.size] + half[b.size]
                assert abs(a.x - b.x) >= reach or abs(a.y - b.y) >= reach, scene


def test_scenes_vary_and_have_unique_descriptions(scenes):
    descriptions = [canonical_description(s) for s in scenes]
    assert len(set(descriptions)) == len(scenes)
    counts = [len(s.objects) for s in scenes]
    assert counts.count(1) < 0.15 * len(scenes) and counts.count(3) > 0.3 * len(scenes)
    assert {o.shape for s in scenes for o in s.objects} == set(SHAPES)
    assert all(o.colour != s.background for s in scenes for o in s.objects)
    assert sample_scenes(50, seed=3) == scenes[:50]


def test_scene_json_round_trips(scenes):
    for scene in scenes[:100]:
        assert Scene.from_json(json.loads(json.dumps(scene.to_json()))) == scene


def test_karpathy_layout(corpus):
    out, data = corpus
    assert data["dataset"] == "xmr-shapes" and data["seed"] == 7
    images = data["images"]
    assert [im["imgid"] for im in images] == list(range(200))
    splits = [im["split"] for im in images]
    assert (splits.count("train"), splits.count("val"), splits.count("test")) == (160, 20, 20)
    assert splits[-20:] == ["test"] * 20  # the last images form the test split
    sentids = []
    for im in images:
        assert im["filepath"] == "images"
        assert (out / im["filepath"] / im["filename"]).is_file()
        assert set(im) >= {"filename", "sentences", "sentids", "scene", "negatives", "split"}
        assert im["sentids"] == [s["sentid"] for s in im["sentences"]]
        assert im["negatives_of"] in im["sentids"]
        for s in im["sentences"]:
            assert s["imgid"] == im["imgid"]
            assert (
                s["tokens"]
                == s["raw"].lower().replace(",", "").replace(";", "").replace(".", "").split()
            )
        sentids += im["sentids"]
    assert len(set(sentids)) == len(sentids) == 1000
    assert Image.open(out / "images" / images[0]["filename"]).size == (64, 64)


def test_make_corpus_refuses_bad_arguments_and_existing_corpus(corpus, tmp_path):
    out, _ = corpus
    with pytest.raises(InputError):
        make_corpus(out, n_images=10, seed=1)
    again = tmp_path / "again"
    make_corpus(again, n_images=4, seed=1)
    make_corpus(again, n_images=3, seed=2, overwrite=True)
    assert json.loads((again / "captions.json").read_text())["seed"] == 2
    with pytest.raises(InputError):
        make_corpus(tmp_path / "x", n_images=0, seed=1)
    with pytest.raises(InputError):
        make_corpus(tmp_path / "y", n_images=10, seed=1, split_fractions=(0.5, 0.1, 0.1))


def test_progress_reports_reach_the_total(tmp_path):
    calls = []
    make_corpus(
        tmp_path, n_images=12, seed=1, progress=lambda done, total: calls.append((done, total))
    )
    assert calls[-1] == (12, 12) and all(t == 12 for _, t in calls)


def test_checker_accepts_true_and_rejects_wrong_captions():
    scene = _red_circle_left_of_blue_square()
    true = [
        "A red circle left of a blue square.",
        "a small red circle is to the left of a large blue square on a gray background",
        "On a gray background, there is a blue square and a red circle; the circle is on the left.",
        "A blue square with a red circle to its left.",
        "An image of a blue square on the right of a red circle.",
        "A blue square and a red circle; the red circle is left of the square.",
    ]
    wrong = [
        "A green circle left of a blue square.",  # colour
        "A red triangle left of a blue square.",  # shape
        "A red circle right of a blue square.",  # relation reversed
        "A blue square left of a red circle.",  # objects exchanged
        "A blue circle left of a red square.",  # colours swapped
        "A red circle above a blue square.",  # wrong axis
        "A big red circle left of a blue square.",  # size
        "A red circle left of a blue square on a white background.",  # background
        "There is a red circle and a blue square; the circle is on the right.",
        "There is a red circle, a blue square and a green star.",  # extra object
        "A red circle with a blue square to its left.",
        "The red circle is left of the star.",  # "the" needs exactly one referent
    ]
    assert all(is_caption_true(scene, c) for c in true), [
        c for c in true if not is_caption_true(scene, c)
    ]
    assert not any(is_caption_true(scene, c) for c in wrong), [
        c for c in wrong if is_caption_true(scene, c)
    ]
    with pytest.raises(InputError):
        is_caption_true(scene, "A dog chasing a ball.")


def test_checker_needs_unique_referent_for_the():
    scene = Scene(
        background="white",
        objects=(
            SceneObject("circle", "red", "small", x=14, y=30),
            SceneObject("circle", "blue", "big", x=46, y=32),
        ),
        relation=(0, "left", 1),
    )
    assert is_caption_true(scene, "The red circle is on the left.")
    assert not is_caption_true(scene, "The circle is on the left.")  # which circle?
    assert is_caption_true(scene, "A circle left of a circle.")
