"""Finding a lost target again by its colours (vlm_ros.tracking.colour), on drawn images."""

import numpy as np
import pytest

from vlm_ros.core.types import Box
from vlm_ros.tracking.colour import ColourImage, ColourSettings, colour_model, find_by_colour

GREEN, BLUE, GREY = (40, 200, 60), (30, 60, 220), (128, 128, 128)


def drawn(*patches) -> ColourImage:
    """A grey 640x480 image with (x, y, w, h, rgb) patches painted on it."""
    image = np.full((480, 640, 3), 90, np.uint8)
    for x, y, w, h, colour in patches:
        image[y:y + h, x:x + w] = colour
    return ColourImage(image, ColourSettings())


@pytest.fixture(scope="module")
def green():
    """The model of a 48x48 green square seen in full view."""
    model = colour_model(drawn((100, 100, 48, 48, GREEN)), Box(100, 100, 148, 148), None)
    assert model is not None and model.pixels == 12 * 12
    return model


def test_a_target_half_in_view_is_found_with_its_extent_at_full_resolution(green):
    # (the search's reduced pixels along its edges mix it with the background; here they are whole: 6x12 of 12x12)
    mask = find_by_colour(drawn((616, 200, 24, 48, GREEN), (300, 50, 48, 48, BLUE)), green, [])
    assert mask is not None and mask.source == "colour"
    assert (mask.x0, mask.y0, mask.x0 + mask.data.shape[1], mask.y0 + mask.data.shape[0]) == (616, 200, 640, 248)
    assert mask.data.all()


def test_too_little_of_it_too_much_of_its_colour_or_inside_a_visible_track_is_not_the_target(green):
    assert find_by_colour(drawn((628, 200, 12, 48, GREEN)), green, []) is None  # a quarter of it
    assert find_by_colour(drawn((0, 0, 200, 120, GREEN)), green, []) is None  # a green wall: 10 times its pixels
    assert find_by_colour(drawn((300, 200, 48, 48, GREEN)), green, [Box(290, 190, 360, 260)]) is None  # a track's
    assert find_by_colour(drawn((300, 200, 48, 48, BLUE)), green, []) is None  # another colour
    assert find_by_colour(drawn((300, 200, 48, 48, GREEN)), green, [Box(0, 0, 320, 480)]) is not None  # half out


def test_a_grey_target_or_one_whose_colours_another_object_shares_has_no_colour_model():
    box = Box(100, 100, 148, 148)
    assert colour_model(drawn((100, 100, 48, 48, GREY)), box, None) is None
    assert colour_model(drawn((100, 100, 48, 48, GREEN), (400, 300, 40, 40, GREEN)), box, None) is None  # twins
    assert colour_model(drawn((100, 100, 48, 48, GREEN), (400, 300, 8, 8, GREEN)), box, None) is not None  # a speck
