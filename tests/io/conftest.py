"""Files for the I/O tests, written once per session by `io_fixtures` (fixed seeds)."""

from __future__ import annotations

import pytest
from io_fixtures import (
    sar_scene,
    smooth_image,
    write_geotiff,
    write_svs,
    write_tiff_pyramid,
)


@pytest.fixture(scope="session")
def io_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("io")


@pytest.fixture(scope="session")
def rgb_image():
    return smooth_image(600, 700, 3)


@pytest.fixture(scope="session")
def jpeg_pyramid(io_dir, rgb_image):
    """600 x 700 RGB, JPEG tiles of 128, 3 levels, OME with 0.5 um pixels."""
    return write_tiff_pyramid(
        io_dir / "jpeg.ome.tif", rgb_image, compression="jpeg", pixel_size_um=0.5
    )


@pytest.fixture(scope="session")
def svs(io_dir):
    """512 x 640, levels 1 and 4 (exact: OpenSlide interpolates at fractional downsamples)."""
    return write_svs(io_dir / "aperio.svs", smooth_image(512, 640, 3, seed=1))


@pytest.fixture(scope="session")
def sar():
    return sar_scene(300, 400)


@pytest.fixture(scope="session")
def geotiff(io_dir, sar):
    return write_geotiff(io_dir / "VV_VH_dB.tif", sar)
