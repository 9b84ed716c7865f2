"""The device input path's files: bytes read by loader workers, decoded as a batch (on the CPU here), bad files
skipped. Real files written with Pillow in an ImageFolder tree: the kinds ImageNet holds (RGB, grayscale and CMYK
JPEGs, a PNG named .JPEG) and broken ones (truncated, garbage, empty, a JPEG with a damaged Huffman table)."""

from __future__ import annotations

import io
import logging
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

import mec.encoded
from mec.data import DataIntegrityError
from mec.encoded import (
    EncodedBatch,
    EncodedImages,
    ImageDecoder,
    build_encoded_dataset,
    collate_encoded,
    for_device_decoder,
    image_format,
    jpeg_frame,
)

# torchvision 0.29 deprecates its decoders (TorchCodec supersedes them); the warning is not what is tested here.
pytestmark = pytest.mark.filterwarnings("ignore:The image decoding and encoding capabilities:DeprecationWarning")

# torchvision's CPU decoders gave exactly Pillow's convert("RGB") for every good kind here (torchvision 0.29.1,
# Pillow 13.0, both on libjpeg-turbo). One grey level allows libjpeg builds whose IDCT rounds differently.
JPEG_TOLERANCE = 1

GOOD = ("rgb", "gray", "cmyk", "progressive", "png")
BAD = ("truncated", "garbage", "empty", "corrupt")


def _picture(height: int = 30, width: int = 40, seed: int = 0) -> Image.Image:
    """Smooth gradients plus noise: chroma and detail like a photo's, so JPEG's subsampling and IDCT matter."""
    y, x = np.mgrid[:height, :width]
    pixels = np.stack([x * 6, y * 8, (x + y) * 3], axis=-1) + np.random.default_rng(seed).integers(0, 40, (height,
                                                                                                          width, 3))
    return Image.fromarray((pixels % 256).astype(np.uint8))


def _jpeg(image: Image.Image, **options) -> bytes:
    out = io.BytesIO()
    image.save(out, "JPEG", quality=90, **options)
    return out.getvalue()


def _file_bytes() -> dict[str, bytes]:
    """Every kind of file, by name: the good ones decode, the bad ones do not."""
    picture = _picture()
    rgb = _jpeg(picture)
    png = io.BytesIO()
    picture.save(png, "PNG")
    corrupt = bytearray(rgb)
    dht = corrupt.find(b"\xff\xc4")  # after the frame header: the headers parse, the decoder fails
    corrupt[dht + 4:dht + 30] = bytes(26)
    return {
        "rgb": rgb,
        "gray": _jpeg(picture.convert("L")),
        "cmyk": _jpeg(picture.convert("CMYK")),  # Adobe APP14, 4 components, as Photoshop's CMYK files
        "progressive": _jpeg(picture, progressive=True),
        "png": png.getvalue(),  # ImageNet has a PNG named .JPEG
        "truncated": rgb[: int(len(rgb) * 0.6)],
        "garbage": bytes(np.random.default_rng(1).integers(0, 256, 300, dtype=np.uint8)),
        "empty": b"",
        "corrupt": bytes(corrupt),
    }


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    """root/train/a/<good>.JPEG and root/train/b/<bad>.JPEG plus b/zz_rgb.JPEG (so each class has a good file)."""
    root = tmp_path_factory.mktemp("encoded")
    for name, data in _file_bytes().items():
        folder = root / "train" / ("a" if name in GOOD else "b")
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{name}.JPEG").write_bytes(data)
    (root / "train" / "b" / "zz_rgb.JPEG").write_bytes(_jpeg(_picture(seed=2)))
    return root


@pytest.fixture(scope="module")
def dataset(tree) -> EncodedImages:
    return build_encoded_dataset("imagefolder", tree)


def _index(dataset: EncodedImages, name: str) -> int:
    return next(i for i, (path, _) in enumerate(dataset.samples) if Path(path).stem == name)


def _batch(dataset: EncodedImages, names: list[str]) -> EncodedBatch:
    return collate_encoded([dataset[_index(dataset, name)] for name in names])


def _pillow_rgb(path: str) -> torch.Tensor:
    with Image.open(path) as image:
        return torch.from_numpy(np.array(image.convert("RGB"))).permute(2, 0, 1)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_files_come_through_the_loader_as_their_bytes(dataset, num_workers):
    loader = DataLoader(dataset, batch_size=4, num_workers=num_workers, collate_fn=collate_encoded)
    seen = []
    for batch in loader:
        assert isinstance(batch, EncodedBatch) and batch.labels.dtype == batch.indices.dtype == torch.int64
        for data, label, index in zip(batch.data, batch.labels.tolist(), batch.indices.tolist(), strict=True):
            path, target = dataset.samples[index]
            assert data.dtype == torch.uint8 and data.dim() == 1
            assert data.numpy().tobytes() == Path(path).read_bytes() and label == target
            seen.append(index)
    assert sorted(seen) == list(range(len(dataset)))
    assert dataset.targets == [label for _, label in dataset.samples] and len(set(dataset.targets)) == 2


def test_a_batch_pickles_as_one_buffer_and_an_unreadable_file_reads_as_no_bytes(dataset, tmp_path):
    batch = _batch(dataset, ["rgb", "empty", "png"])
    again = pickle.loads(pickle.dumps(batch))
    assert [d.numpy().tobytes() for d in again.data] == [d.numpy().tobytes() for d in batch.data]
    assert again.data[0].untyped_storage().data_ptr() == again.data[2].untyped_storage().data_ptr()  # one buffer
    assert torch.equal(again.labels, batch.labels) and torch.equal(again.indices, batch.indices)
    # A batch made by hand (tensors of their own) pickles too.
    loose = EncodedBatch([torch.arange(3, dtype=torch.uint8), torch.arange(5, dtype=torch.uint8)],
                         torch.tensor([0, 1]), torch.tensor([4, 2]))
    assert [d.tolist() for d in pickle.loads(pickle.dumps(loose)).data] == [[0, 1, 2], [0, 1, 2, 3, 4]]

    missing = EncodedImages([(str(tmp_path / "gone.JPEG"), 3)])
    data, label, index = missing[0]
    assert data.numel() == 0 and data.dtype == torch.uint8 and (label, index) == (3, 0)


def test_the_header_parser_reads_each_kind():
    files = _file_bytes()
    expected = {"rgb": (0xC0, 3), "gray": (0xC0, 1), "cmyk": (0xC0, 4), "progressive": (0xC2, 3),
                "corrupt": (0xC0, 3)}
    for name, (marker, components) in expected.items():
        frame = jpeg_frame(files[name])
        assert frame is not None, name
        assert (frame.marker, frame.components, frame.precision, frame.height, frame.width, frame.complete) == (
            marker, components, 8, 30, 40, True), name
    truncated = jpeg_frame(files["truncated"])
    assert truncated is not None and truncated.components == 3 and not truncated.complete
    assert jpeg_frame(files["rgb"][:-1]).complete is False  # cut by one byte: no EOI
    assert jpeg_frame(files["rgb"] + b"trailing bytes").complete  # bytes after EOI: whole
    for name in ("png", "garbage", "empty"):
        assert jpeg_frame(files[name]) is None, name
    assert jpeg_frame(files["rgb"][:100]) is None  # cut inside the headers: no frame header to read
    assert [image_format(files[name]) for name in ("rgb", "png", "garbage", "empty")] == [
        "jpeg", "png", "unknown", "empty"]


def test_the_parser_walks_app_segments_and_fill_bytes_and_ignores_an_eoi_before_the_scan():
    picture = _picture()
    with_exif = _jpeg(picture, exif=b"Exif\x00\x00" + b"\xff\xd9" * 20, icc_profile=b"\x00" * 3000)
    frame = jpeg_frame(with_exif)
    assert frame is not None and frame.components == 3 and frame.complete
    # An EOI inside an APP segment (an EXIF thumbnail's) does not make a cut file look whole.
    assert not jpeg_frame(with_exif[: len(with_exif) - 50]).complete
    # Fill bytes (FF FF ...) before a marker are allowed by T.81.
    rgb = _file_bytes()["rgb"]
    padded = rgb[:2] + b"\xff\xff" + rgb[2:]
    assert jpeg_frame(padded) == jpeg_frame(rgb)


def test_only_whole_8bit_huffman_jpegs_with_1_or_3_components_go_to_the_device_decoder():
    files = _file_bytes()
    chosen = {name for name, data in files.items() if for_device_decoder(data)}
    assert chosen == {"rgb", "gray", "progressive", "corrupt"}  # corrupt: its headers are whole (fails later)

    rgb = bytearray(files["rgb"])
    sof = rgb.find(b"\xff\xc0")
    for marker in (0xC3, 0xC9):  # lossless, arithmetic-coded: not nvJPEG's
        other = bytearray(rgb)
        other[sof + 1] = marker
        assert jpeg_frame(bytes(other)).marker == marker and not for_device_decoder(bytes(other))
    twelve_bit = bytearray(rgb)
    twelve_bit[sof + 4] = 12
    assert jpeg_frame(bytes(twelve_bit)).precision == 12 and not for_device_decoder(bytes(twelve_bit))


def test_good_files_decode_as_pillow_converts_them_and_jpegs_go_in_one_batched_call(dataset, monkeypatch):
    calls = []
    real = mec.encoded.decode_jpeg

    def recording(data, **kwargs):
        calls.append((len(data) if isinstance(data, list) else 1, kwargs))
        return real(data, **kwargs)

    monkeypatch.setattr(mec.encoded, "decode_jpeg", recording)
    decoder = ImageDecoder([path for path, _ in dataset.samples], "cpu")
    batch = _batch(dataset, list(GOOD))
    decoded = decoder(batch)
    # rgb, gray, progressive: one call with the list on the decoder's device; cmyk and png took the CPU path.
    assert calls == [(3, {"mode": mec.encoded.ImageReadMode.RGB, "device": torch.device("cpu")})]
    assert decoded.skipped == [] and decoder.skipped_total == 0
    assert torch.equal(decoded.labels, batch.labels)
    for name, image in zip(GOOD, decoded.images, strict=True):
        expected = _pillow_rgb(dataset.samples[_index(dataset, name)][0])
        assert image.dtype == torch.uint8 and image.shape == expected.shape == (3, 30, 40), name
        difference = (image.int() - expected.int()).abs().max().item()
        assert difference <= (0 if name == "png" else JPEG_TOLERANCE), (name, difference)


def test_bad_files_are_skipped_once_each_with_a_warning_and_their_slots_refilled(dataset, caplog):
    names = ["truncated", "rgb", "garbage", "empty", "corrupt", "cmyk", "zz_rgb"]
    paths = [dataset.samples[_index(dataset, name)][0] for name in names]
    decoder = ImageDecoder([path for path, _ in dataset.samples], torch.device("cpu"))
    batch = _batch(dataset, names)
    with caplog.at_level(logging.WARNING, logger="mec.encoded"):
        decoded = decoder(batch)
    bad = [paths[i] for i in (0, 2, 3, 4)]
    assert decoded.skipped == bad and decoder.skipped_total == 4
    assert len(decoded.images) == len(decoded.labels) == len(names)  # the batch keeps its size
    warnings = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    assert len(warnings) == 4
    for path, reason in zip(bad, ["truncated", "not an image format", "empty file (0 bytes)", "Bogus"], strict=True):
        assert sum(path in message for message in warnings) == 1
        assert reason in next(message for message in warnings if path in message), reason
    # Each skipped slot holds the next decoded image of the batch, with its label (b's files are label 1).
    labels = batch.labels.tolist()
    for slot, source in {0: 1, 2: 5, 3: 5, 4: 5}.items():
        assert decoded.images[slot] is decoded.images[source]
        assert decoded.labels[slot].item() == labels[source]
    assert decoded.labels.tolist() == [0, 0, 0, 0, 0, 0, 1]

    # The same files in a later epoch: counted again, not warned about again.
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="mec.encoded"):
        assert decoder(batch).skipped == bad
    assert decoder.skipped_total == 8 and not caplog.records


def test_a_skipped_last_slot_takes_the_first_image_and_a_batch_of_bad_files_raises(dataset):
    decoder = ImageDecoder([path for path, _ in dataset.samples], "cpu")
    decoded = decoder(_batch(dataset, ["gray", "empty"]))
    assert decoded.images[1] is decoded.images[0] and decoder.skipped_total == 1

    with pytest.raises(DataIntegrityError, match=r"none of the 3 files .*truncated\.JPEG \(starts like JPEG"):
        decoder(_batch(dataset, ["truncated", "garbage", "empty"]))
    assert decoder.skipped_total == 4


def test_an_unreadable_file_is_skipped_naming_why(tmp_path, caplog):
    good = tmp_path / "good.JPEG"
    good.write_bytes(_file_bytes()["rgb"])
    gone = tmp_path / "gone.JPEG"
    dataset = EncodedImages([(str(good), 0), (str(gone), 1)])
    decoder = ImageDecoder([str(good), str(gone)], "cpu")
    with caplog.at_level(logging.WARNING, logger="mec.encoded"):
        decoded = decoder(collate_encoded([dataset[0], dataset[1]]))
    assert decoded.skipped == [str(gone)] and decoded.labels.tolist() == [0, 0]
    assert "could not read it (FileNotFoundError" in caplog.text and str(gone) in caplog.text


def test_the_encoded_data_set_is_the_folder_data_set_and_cifar_is_refused(dataset, tree):
    from mec.data import build_eval_dataset

    folder = build_eval_dataset("imagefolder", tree, None, "train")
    assert dataset.samples == folder.samples and len(dataset) == len(GOOD) + len(BAD) + 1
    with pytest.raises(ValueError, match="cifar10 .*device input path needs an image-folder data set"):
        build_encoded_dataset("cifar10", tree)
    with pytest.raises(ValueError, match="unknown data set 'mnist'"):
        build_encoded_dataset("mnist", tree)
    with pytest.raises(FileNotFoundError, match="val"):
        build_encoded_dataset("imagefolder", tree, "val")
