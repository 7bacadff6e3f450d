"""Test images written with the real libraries (tifffile, rasterio), with fixed seeds.

Each writer uses the library directly, never xtimage's writers, so reader tests check
xtimage against files it did not make. Run as a script to write every fixture into a
folder for a look: ``python tests/io/io_fixtures.py /tmp/xt-fixtures``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

MPP = 0.499  # the Aperio fixture's microns per pixel
UTM_33N = "EPSG:32633"


def smooth_image(height: int, width: int, channels: int, dtype: str = "uint8", seed: int = 0):
    """(C, H, W) gradients plus mild noise: compresses like a photo, every pixel distinct."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    bands = [
        (yy / height * 200 + 20 * np.sin(xx / 17 + c) + 10 * c + rng.normal(0, 3, (height, width)))
        for c in range(channels)
    ]
    image = np.stack(bands)
    if np.dtype(dtype).kind == "f":
        return image.astype(dtype)
    info = np.iinfo(dtype)
    return np.clip(image, info.min, info.max).astype(dtype)


def write_tiff_pyramid(
    path: Path,
    image: np.ndarray,
    tile: int | None = 128,
    compression: str | None = "zlib",
    levels: int = 3,
    ome: bool = True,
    bigtiff: bool = False,
    pixel_size_um: float | None = None,
    rowsperstrip: int | None = None,
) -> Path:
    """A (pyramidal) TIFF of ``image`` (C, H, W); level k is ``image[:, ::2**k, ::2**k]``."""
    import tifffile

    channels = image.shape[0]
    rgb = channels == 3 and image.dtype == np.uint8
    metadata = {"axes": "YXS" if channels > 1 else "YX"}
    if pixel_size_um is not None:
        metadata.update(PhysicalSizeX=pixel_size_um, PhysicalSizeY=pixel_size_um)
    options = dict(
        compression=compression,
        photometric="rgb" if rgb else "minisblack",
        planarconfig="contig" if channels > 1 else None,
    )
    if tile is not None:
        options["tile"] = (tile, tile)
    if rowsperstrip is not None:
        options["rowsperstrip"] = rowsperstrip

    def hwc(k: int) -> np.ndarray:
        level = image[:, :: 2**k, :: 2**k]
        return level.transpose(1, 2, 0) if channels > 1 else level[0]

    with tifffile.TiffWriter(path, bigtiff=bigtiff, ome=ome) as tif:
        tif.write(hwc(0), subifds=levels - 1, metadata=metadata if ome else None, **options)
        for k in range(1, levels):
            tif.write(hwc(k), subfiletype=1, **options)
    return path


def tiff_levels(path: Path) -> list[np.ndarray]:
    """Every level of a TIFF decoded whole by tifffile, as (C, H, W)."""
    import tifffile

    with tifffile.TiffFile(path) as tif:
        series = tif.series[0]
        arrays = [level.asarray() for level in series.levels]
        axes = series.axes
    if axes.endswith("S"):
        return [np.moveaxis(a, -1, 0) for a in arrays]
    return [a if a.ndim == 3 else a[None] for a in arrays]


def write_svs(path: Path, image: np.ndarray, tile: int = 128) -> Path:
    """An Aperio-style SVS: tiled JPEG level 0, a stripped thumbnail, a 4x level.

    The vendor description string (with ``MPP``) makes OpenSlide pick its Aperio driver.
    """
    import tifffile

    rgb = image.transpose(1, 2, 0)
    h, w = rgb.shape[:2]
    head = "Aperio Image Library v12.0.15\r\n"
    options = dict(
        compression="jpeg", compressionargs={"level": 95}, photometric="rgb", metadata=None
    )
    level1 = rgb[::4, ::4]
    thumb = rgb[::16, ::16]
    with tifffile.TiffWriter(path) as tif:
        tif.write(
            rgb,
            tile=(tile, tile),
            description=f"{head}{w}x{h} [0,0 {w}x{h}] ({tile}x{tile}) JPEG/RGB Q=95"
            f"|AppMag = 20|MPP = {MPP}",
            **options,
        )
        tif.write(
            thumb, description=f"{head}{w}x{h} -> {thumb.shape[1]}x{thumb.shape[0]}", **options
        )
        tif.write(
            level1,
            tile=(tile, tile),
            description=f"{head}{w}x{h} [0,0 {w}x{h}] ({tile}x{tile}) -> "
            f"{level1.shape[1]}x{level1.shape[0]} JPEG/RGB Q=95",
            **options,
        )
    return path


def sar_scene(height: int, width: int, seed: int = 0) -> np.ndarray:
    """(2, H, W) float32 VV/VH-like dB values with a nodata (-32768) wedge at the left."""
    rng = np.random.default_rng(seed)
    data = rng.normal([[[-15.0]], [[-24.0]]], 6.0, (2, height, width)).astype(np.float32)
    rows = np.arange(height)[:, None]
    cols = np.arange(width)[None, :]
    data[:, cols < (height - rows) * width // (3 * height)] = -32768
    return data


def write_geotiff(
    path: Path,
    data: np.ndarray,
    crs: str = UTM_33N,
    origin: tuple[float, float] = (499000.0, 4001000.0),
    pixel: float = 10.0,
    nodata: float | None = -32768,
    tile: int = 128,
    overviews: tuple[int, ...] = (2, 4),
) -> Path:
    """A tiled, deflate GeoTIFF of ``data`` (C, H, W) with a CRS, nodata and overviews."""
    import rasterio
    from affine import Affine
    from rasterio.enums import Resampling

    profile = dict(
        driver="GTiff",
        height=data.shape[1],
        width=data.shape[2],
        count=data.shape[0],
        dtype=data.dtype.name,
        crs=crs,
        transform=Affine(pixel, 0.0, origin[0], 0.0, -pixel, origin[1]),
        nodata=nodata,
        tiled=True,
        blockxsize=tile,
        blockysize=tile,
        compress="deflate",
    )
    with rasterio.open(path, "w", **profile) as ds:
        ds.write(data)
        if overviews:
            ds.build_overviews(list(overviews), Resampling.nearest)
    return path


def main(folder: str) -> None:
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    write_tiff_pyramid(out / "pyramid.ome.tif", smooth_image(600, 700, 3), pixel_size_um=0.5)
    write_svs(out / "aperio.svs", smooth_image(1000, 1200, 3))
    write_geotiff(out / "VV_VH_dB.tif", sar_scene(300, 400))


if __name__ == "__main__":
    main(sys.argv[1])
