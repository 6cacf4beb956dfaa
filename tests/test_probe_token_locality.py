"""The token-locality probe's patch mapping (benchmarks/probe_token_locality.py): a corpus
object's centre, mapped through the shipped model's preprocessing, lands in the patch token
the object changes, read off the shipped vision tower's own patch projection."""

from __future__ import annotations

import sys

import pytest
from conftest import REPO
from PIL import Image

sys.path.insert(0, str(REPO / "benchmarks"))
from probe_token_locality import input_point, patch_index  # noqa: E402

from xmr.training.corpus.render import render_scene  # noqa: E402
from xmr.training.corpus.scenes import Scene, SceneObject  # noqa: E402

PATCH, GRID = 8, (8, 8)  # xmr-tiny: 64 px input, 8 px patches
# Off the diagonal (row != column) and away from patch borders, so the object covers its
# centre patch and a mapping that swaps x and y cannot pass.
POSITIONS = [(11, 44), (45, 20), (28, 5), (52, 58), (2, 30)]


@pytest.fixture(scope="module")
def encoder():
    from xmr.retrieval.encoder import load_encoder

    return load_encoder("xmr-tiny", "cpu")  # the shipped model and its preprocessing


@pytest.fixture(scope="module")
def preprocess(encoder):
    return encoder.preprocess


def _scene(x: int | None, y: int | None) -> Scene:
    """A small red square centred in scene pixel (x, y); None: the background alone."""
    objects = () if x is None else (SceneObject("square", "red", "small", x, y),)
    return Scene(background="gray", objects=objects, relation=None)


def _token_patch(encoder, image: Image.Image, background: Image.Image) -> int | None:
    """Where the object is, in the model's own token order: the patch token of the vision
    tower's patch projection (`conv1`, flattened as open_clip flattens it for the tokens)
    that the object changes most against the bare background (None: it changes none, the
    object was cropped away)."""
    import torch

    visual = encoder.model.visual
    pixels = torch.stack([encoder.preprocess(image), encoder.preprocess(background)])
    with torch.inference_mode():
        patches = visual.conv1(pixels).flatten(2).transpose(1, 2)  # (2, N, width)
    change = (patches[0] - patches[1]).norm(dim=-1)  # (N,)
    return int(change.argmax()) if float(change.max()) > 1e-3 else None


def _mapped(scene: Scene, image: Image.Image, preprocess, mapping=input_point) -> int | None:
    obj = scene.objects[0]
    point = mapping(obj.x, obj.y, scene.canvas, *image.size, preprocess)
    return patch_index(point, PATCH, GRID)


def _cases(size: tuple[int, int]):
    """(scene, image of `size` showing the whole scene, the bare background) per position."""

    def draw(scene: Scene) -> Image.Image:
        image = render_scene(scene, max(size))
        return image if image.size == size else image.resize(size, Image.Resampling.NEAREST)

    background = draw(_scene(None, None))
    for x, y in POSITIONS:
        scene = _scene(x, y)
        yield scene, draw(scene), background


@pytest.mark.parametrize("size", [(64, 64), (160, 160), (192, 128)])
def test_object_centre_maps_to_the_patch_it_shows_in(encoder, size):
    """64 px: the corpus's images (the pipeline leaves them as they are); 160 px: resized
    to the input; 192 x 128: resized on its short side and centre-cropped, so an object
    near the left edge is cut away and maps to no patch."""
    results = [
        (_mapped(scene, image, encoder.preprocess), _token_patch(encoder, image, background))
        for scene, image, background in _cases(size)
    ]
    assert [mapped for mapped, _ in results] == [truth for _, truth in results]
    if size == (192, 128):  # the object at x = 2 lies in the 16 px cropped off the left
        assert results[-1] == (None, None)
    assert len({truth for _, truth in results if truth is not None}) >= 4  # distinct patches


def _transposed(x, y, canvas, width, height, preprocess):
    point = input_point(y, x, canvas, height, width, preprocess)
    return None if point is None else (point[0], point[1])


def _uncropped(x, y, canvas, width, height, preprocess):
    """Scales to the input's short side but forgets the centre crop's offset."""
    scale = min(64 / width, 64 / height)
    return (x + 0.5) * width / canvas * scale, (y + 0.5) * height / canvas * scale


def _unresized(x, y, canvas, width, height, preprocess):
    """The centre in the image's pixels, taken as the input's: right only for 64 px images."""
    return (x + 0.5) * width / canvas, (y + 0.5) * height / canvas


@pytest.mark.parametrize(
    "broken, size",
    [(_transposed, (64, 64)), (_uncropped, (192, 128)), (_unresized, (160, 160))],
)
def test_a_broken_mapping_disagrees_with_the_tokens(encoder, broken, size):
    """The check above catches mappings that swap x and y, skip the crop, or skip the
    resize: each puts some object in a patch it is not in."""
    disagreements = [
        _mapped(scene, image, encoder.preprocess, broken)
        != _token_patch(encoder, image, background)
        for scene, image, background in _cases(size)
    ]
    assert any(disagreements)


def test_unmodelled_geometry_is_refused():
    from torchvision import transforms

    flip = transforms.Compose([transforms.RandomHorizontalFlip(), transforms.ToTensor()])
    with pytest.raises(ValueError, match="RandomHorizontalFlip"):
        input_point(10, 10, 64, 64, 64, flip)
