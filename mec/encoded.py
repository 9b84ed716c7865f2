"""The device input path's data: image files read as bytes in loader workers, decoded as a batch in the main process.

What runs where, and why (issue 14):

- Loader workers only read files (`EncodedImages`): item i is the bytes of file i as a uint8 tensor, its label and
  i. Decoding and augmenting in the workers is what keeps a GPU waiting on CPU cores in the per-image path
  (`mec.data`), so the workers do the one thing that needs no compute. `collate_encoded` packs a batch's files
  into one shared-memory buffer, so a batch crosses from a worker to the main process as one tensor, not one
  shared-memory segment per file.
- `ImageDecoder` decodes a batch in the main process on the job's device. Whole (not cut short) 8-bit baseline,
  extended or progressive Huffman-coded JPEGs with 1 (grayscale) or 3 (YCbCr) components go to torchvision's
  JPEG decoder on that device in ONE batched `decode_jpeg` call: nvJPEG on a GPU, libjpeg-turbo on the CPU (the
  same code with device "cpu", which is what the tests run). If that call raises (one bad file fails the whole
  call), the files are decoded one by one on the device, and those that fail go to the CPU path.
- The CPU path, whose images are then moved to the device, takes everything else: 4-component (CMYK / YCCK,
  Adobe) JPEGs, which the CPU decoders convert as Pillow does (measured; ImageNet has about 20) and nvJPEG is
  not relied on to; 12-bit, arithmetic-coded and lossless JPEGs, which nvJPEG does not decode; JPEGs without
  an end-of-image marker after their first scan (cut short: see below); and other formats (PNG, GIF, WebP,
  BMP, ... named .JPEG). It is torchvision's `decode_image(..., mode=RGB)` where that gives 8-bit RGB (JPEG,
  8-bit PNG, GIF, WebP), else Pillow's `convert("RGB")` (BMP, TIFF, 16-bit PNG, ...: the per-image path's
  decoder). Whatever decoded it, an image is uint8 [3, H, W].

Measured with torchvision 0.29.1 and Pillow 13.0 (both libjpeg-turbo), CPU: `decode_jpeg(..., mode=RGB)` of RGB,
grayscale, CMYK (Adobe, as Pillow writes it) and progressive JPEGs, and `decode_image(..., mode=RGB)` of 8-bit
PNG (RGB, RGBA, LA, palette, 1-bit), GIF and lossless WebP files, equal Pillow's `convert("RGB")` exactly
(tests/test_encoded.py checks RGB, grayscale, CMYK and progressive JPEGs and a PNG). A truncated JPEG (cut anywhere,
even only its last byte) makes both torchvision's decoder ("Image is incomplete or truncated") and Pillow ("image
file is truncated"; `ImageFile.LOAD_TRUNCATED_IMAGES` is left False) raise, so it is skipped, never passed as
whole; it never reaches nvJPEG, whose handling of a cut stream was not measured here. nvJPEG's IDCT and chroma
upsampling differ from libjpeg-turbo's, so on a GPU 1/3-component JPEGs can differ from Pillow by a few grey
levels (not measured here: no GPU). A JPEG whose entropy-coded data is damaged but complete decodes (libjpeg
resynchronises on the next marker, with grey or garbled blocks) on every path: nothing detects it.

Skipped files: a file that no path decodes (truncated, not an image, empty, or unreadable in the worker) is
skipped with one `logging` warning naming it and why (the first time a decoder skips it), counted in
`ImageDecoder.skipped_total` (once per skip: a file bad in three epochs counts three), listed in the batch's
`DecodedBatch.skipped`, and its slot takes another image of the batch with that image's label, so the batch
keeps its size. If every file of a batch fails, `mec.data.DataIntegrityError` names them.

torchvision 0.29 deprecates its image decoders in favour of TorchCodec (a DeprecationWarning on each call, hidden
by Python's default filters); they are the decoders issue 14 names, and TorchCodec is not a dependency.
"""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torchvision
from PIL import Image, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset, Subset, get_worker_info
from torchvision.io import ImageReadMode, decode_image, decode_jpeg

from mec.batch_augment import to_device
from mec.config import FOLDER_DATASETS
from mec.data import DataIntegrityError, _build_dataset
from mec.data import skipped_images as data_skipped

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------------------------
# Workers: bytes only.


@dataclass
class EncodedBatch:
    """A batch of files as the loader gives it: bytes, labels and dataset indices, on the CPU."""

    data: list[torch.Tensor]  # one uint8 1-D tensor of the file's bytes per sample
    labels: torch.Tensor  # int64 [N]
    indices: torch.Tensor  # int64 [N], the samples' dataset indices
    # The one buffer `data` are consecutive views of, when `collate_encoded` made them (see `__reduce__`).
    _buffer: torch.Tensor | None = field(default=None, repr=False, compare=False)

    def __reduce__(self):
        # A loader worker pickles the batch to send it to the main process, and torch gives every tensor pickled
        # that way a shared-memory segment (and a file descriptor) of its own: hundreds per batch at ImageNet
        # batch sizes, enough to exhaust descriptors. Sending one buffer and the sizes gives one segment per batch.
        sizes = [int(d.numel()) for d in self.data]
        buffer = self._buffer if _views_of(self.data, self._buffer) else torch.cat([d.reshape(-1) for d in self.data])
        return _unpack_batch, (buffer, sizes, self.labels, self.indices)


def _views_of(data: list[torch.Tensor], buffer: torch.Tensor | None) -> bool:
    """Whether `data` are the consecutive pieces of `buffer`, in order (as `collate_encoded` made them)."""
    if buffer is None or sum(d.numel() for d in data) != buffer.numel():
        return False
    base = buffer.untyped_storage().data_ptr() + buffer.storage_offset()
    offset = 0
    for piece in data:
        if piece.numel() and piece.data_ptr() != base + offset:
            return False
        offset += piece.numel()
    return True


def _unpack_batch(buffer: torch.Tensor, sizes: list[int], labels: torch.Tensor, indices: torch.Tensor) -> EncodedBatch:
    return EncodedBatch(list(torch.split(buffer, sizes)), labels, indices, buffer)


class EncodedImages(Dataset):
    """Item i: (bytes of file i as a uint8 1-D tensor, label, i). Workers only read files.

    A file that cannot be read (OSError) gives an empty tensor: `ImageDecoder` skips it, naming the file, in the
    main process, where the skip is counted (a worker's count would be lost with the worker).
    """

    def __init__(self, samples: Sequence[tuple[str, int]]) -> None:
        self.samples = [(str(path), int(label)) for path, label in samples]
        self.targets = [label for _, label in self.samples]

    @classmethod
    def from_folder(cls, folder: torchvision.datasets.ImageFolder) -> EncodedImages:
        """The files of an ImageFolder (its `samples`: paths and labels), in its order."""
        return cls(folder.samples)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, int]:
        path, label = self.samples[index]
        try:
            with open(path, "rb") as fh:
                data = bytearray(fh.read())  # writable, so that torch.frombuffer shares it without a warning
        except OSError:
            data = bytearray()
        encoded = torch.frombuffer(data, dtype=torch.uint8) if data else torch.empty(0, dtype=torch.uint8)
        return encoded, label, index


def collate_encoded(items: Sequence[tuple[torch.Tensor, int, int]]) -> EncodedBatch:
    """The DataLoader's collate_fn for `EncodedImages`: the files' bytes as views of one buffer, labels, indices.

    In a worker the buffer is in shared memory, so that sending the batch to the main process copies nothing more
    (`EncodedBatch.__reduce__`).
    """
    sizes = [int(data.numel()) for data, _, _ in items]
    total = sum(sizes)
    if get_worker_info() is not None:
        buffer = torch.empty(total, dtype=torch.uint8).share_memory_()
    else:
        buffer = torch.empty(total, dtype=torch.uint8)
    pieces = list(torch.split(buffer, sizes))
    for piece, (data, _, _) in zip(pieces, items, strict=True):
        piece.copy_(data)
    labels = torch.tensor([label for _, label, _ in items], dtype=torch.int64)
    indices = torch.tensor([index for _, _, index in items], dtype=torch.int64)
    return EncodedBatch(pieces, labels, indices, buffer)


def build_encoded_dataset(
    name: str, root: str | os.PathLike, split: str = "train", digits_params: dict | None = None
) -> EncodedImages:
    """The files of folder data set `name` under `root` (split "train" or "val") as `EncodedImages`.

    The same files, labels and order as `mec.data.build_pretrain_dataset`'s folder data sets ("digits" renders
    its tree first, with `digits_params`).
    """
    if name in ("cifar10", "cifar100"):
        raise ValueError(f"{name} is stored as pickled arrays, not image files: the device input path needs an "
                         f"image-folder data set (one of {list(FOLDER_DATASETS)})")
    # Any other name outside FOLDER_DATASETS: mec.data raises, listing the data sets.
    return EncodedImages.from_folder(_build_dataset(name, root, None, split, False, digits_params))


# ---------------------------------------------------------------------------------------------------------------
# What a file is, from its bytes.

JPEG_SOI = b"\xff\xd8\xff"
# SOFn markers (C0-CF) that start a frame header; C4 (DHT), C8 (JPG, reserved) and CC (DAC) share the range.
_NOT_SOF = (0xC4, 0xC8, 0xCC)
# Markers without a length field: TEM and the restart markers RST0-7 (SOI and EOI do not occur while walking).
_STANDALONE = {0x01, *range(0xD0, 0xD8)}
_SOS, _EOI = 0xDA, 0xD9
# Frames nvJPEG decodes: baseline, extended and progressive Huffman (not lossless C3, not arithmetic C9-CB/CD-CF).
DEVICE_SOF = (0xC0, 0xC1, 0xC2)
DEVICE_COMPONENTS = (1, 3)  # grayscale, YCbCr; 4 (CMYK / YCCK) goes to the CPU

_MAGIC = (
    (b"\x89PNG\r\n\x1a\n", "png"), (b"GIF87a", "gif"), (b"GIF89a", "gif"), (b"BM", "bmp"),
    (b"II*\x00", "tiff"), (b"MM\x00*", "tiff"),
)


def image_format(data: bytes | memoryview) -> str:
    """The format the bytes start like: "jpeg", "png", "gif", "webp", "bmp", "tiff", "empty" or "unknown"."""
    head = bytes(data[:12])
    if not head:
        return "empty"
    if head.startswith(JPEG_SOI):
        return "jpeg"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    return next((name for magic, name in _MAGIC if head.startswith(magic)), "unknown")


@dataclass(frozen=True)
class JpegFrame:
    """A JPEG file's frame header (its first SOFn segment), and whether the file reaches its end."""

    marker: int  # 0xC0 baseline, 0xC1 extended, 0xC2 progressive, ... (ITU T.81 table B.1)
    precision: int  # bits per sample
    height: int
    width: int
    components: int  # 1 grayscale, 3 YCbCr (or RGB), 4 CMYK / YCCK
    complete: bool  # an end-of-image marker follows the first scan: the file was not cut short


def jpeg_frame(data: bytes | memoryview) -> JpegFrame | None:
    """The frame header of JPEG bytes, or None if they do not start like a JPEG or hold no whole frame header.

    Walks the marker segments from SOI to the first SOFn; `complete` looks for EOI after the first SOS segment.
    Entropy-coded data cannot contain FF D9 (an FF byte in it is followed by 00 or a restart marker), so an EOI
    there ends the image: every scan of a progressive JPEG comes before it. A file cut anywhere lacks it.
    """
    data = memoryview(data).cast("B")
    if bytes(data[:3]) != JPEG_SOI:
        return None
    size, pos, frame = len(data), 2, None
    while pos + 1 < size:
        if data[pos] != 0xFF:
            return None  # not at a marker: a damaged header
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte before a marker
            pos += 1
            continue
        if marker in _STANDALONE:
            pos += 2
            continue
        if marker == _EOI or pos + 4 > size:
            return None
        length = data[pos + 2] << 8 | data[pos + 3]  # counts itself, not the marker
        if 0xC0 <= marker <= 0xCF and marker not in _NOT_SOF:
            if length < 8 or pos + 10 > size:
                return None
            frame = (marker, data[pos + 4], data[pos + 5] << 8 | data[pos + 6], data[pos + 7] << 8 | data[pos + 8],
                     data[pos + 9])
        elif marker == _SOS:
            if frame is None:
                return None  # a scan before any frame header
            return JpegFrame(*frame, complete=_has_eoi_after(data, pos + 2 + length))
        pos += 2 + length
    return None


def _has_eoi_after(data: memoryview, start: int) -> bool:
    if bytes(data[-2:]) == b"\xff\xd9":
        return len(data) - 2 >= start  # the usual end: no search needed
    return bytes(data[start:]).find(b"\xff\xd9") >= 0  # trailing bytes after EOI (rare): search


def for_device_decoder(data: bytes | memoryview) -> bool:
    """Whether `ImageDecoder` sends these bytes to the device's JPEG decoder (nvJPEG on a GPU), not the CPU path.

    Yes for whole 8-bit Huffman-coded (baseline, extended, progressive) JPEGs with 1 or 3 components; every other
    file is decoded on the CPU (see the module docstring).
    """
    frame = jpeg_frame(data)
    return (frame is not None and frame.marker in DEVICE_SOF and frame.precision == 8
            and frame.components in DEVICE_COMPONENTS and frame.complete)


# ---------------------------------------------------------------------------------------------------------------
# The main process: decoding.


@dataclass
class DecodedBatch:
    """A decoded batch: one RGB image per input sample, the labels, and the files skipped."""

    images: list[torch.Tensor]  # [3, H, W] uint8 on the decoder's device, one per input sample (sizes differ)
    labels: torch.Tensor  # int64 [N] on the device
    skipped: list[str]  # paths of the files that could not be decoded in this batch


class UndecodableImage(Exception):
    """No decoder reads the file; the message says why (what its bytes start like, each decoder's error)."""


def _short(err: BaseException) -> str:
    # torchvision's messages start with the C++ source location; the reason is the last part.
    text = str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
    return text.rsplit(".cpp:", 1)[-1].lstrip("0123456789, ") or text


def decode_on_cpu(data: torch.Tensor) -> torch.Tensor:
    """RGB uint8 [3, H, W] of any image file's bytes, on the CPU: torchvision where it gives 8-bit RGB, else Pillow.

    Raises `UndecodableImage` with both decoders' reasons when neither reads the file.
    """
    reasons = []
    if data.numel() == 0:
        raise UndecodableImage("no bytes")
    try:
        image = decode_image(data, mode=ImageReadMode.RGB)
        if image.dtype == torch.uint8 and image.dim() == 3 and image.shape[0] == 3:
            return image
        # 16-bit PNGs decode to uint16: Pillow's 8-bit conversion is what the per-image path gives.
        reasons.append(f"torchvision gave {image.dtype} {tuple(image.shape)}")
    except (RuntimeError, ValueError) as err:
        reasons.append(f"torchvision: {_short(err)}")
    try:
        with Image.open(io.BytesIO(data.numpy().tobytes())) as opened:
            rgb = np.array(opened.convert("RGB"))  # convert() loads the whole file: a truncated one raises here
        return torch.from_numpy(rgb).permute(2, 0, 1).contiguous()
    except UnidentifiedImageError:
        reasons.append("Pillow: not an image format it knows")  # its message names a BytesIO, not the file
    except Exception as err:  # Pillow raises OSError, SyntaxError, ValueError, DecompressionBombError, ...
        reasons.append(f"Pillow: {type(err).__name__}: {err}")
    kind = image_format(_bytes_of(data))
    head = f"starts like {kind.upper()}" if kind != "unknown" else f"starts {bytes(data[:8].tolist()).hex(' ')}"
    raise UndecodableImage(f"{head}; " + "; ".join(reasons))


class ImageDecoder:
    """Decodes `EncodedBatch`es to RGB uint8 images on `device`, skipping files that do not decode.

    See the module docstring for which files go where. `skipped_total` counts the files skipped since
    construction (each time one is skipped), for the run's metrics.
    """

    def __init__(self, paths: Sequence[str], device: torch.device | str) -> None:
        self.paths = [str(path) for path in paths]  # paths[i] names dataset index i, for the warnings
        self.device = torch.device(device)
        self.skipped_total = 0
        self._warned: set[str] = set()

    def __call__(self, batch: EncodedBatch) -> DecodedBatch:
        n = len(batch.data)
        paths = [self.paths[index] for index in batch.indices.tolist()]
        images: list[torch.Tensor | None] = [None] * n
        device_slots = [i for i, data in enumerate(batch.data) if for_device_decoder(_bytes_of(data))]
        for i, image in self._decode_on_device(batch, device_slots, paths).items():
            images[i] = image
        # The rest, and any JPEG the device's decoder failed on, on the CPU.
        reasons: dict[int, str] = {}
        for i in range(n):
            if images[i] is None:
                try:
                    images[i] = to_device(decode_on_cpu(batch.data[i]), self.device)
                except UndecodableImage as err:
                    reasons[i] = _why_no_bytes(paths[i]) if batch.data[i].numel() == 0 else str(err)
        return self._fill_skipped(batch, paths, images, reasons)

    def _decode_on_device(self, batch: EncodedBatch, slots: list[int], paths: list[str]) -> dict[int, torch.Tensor]:
        """slot -> image for the batch's `slots` that the device's JPEG decoder reads; failed ones are left out."""
        if not slots:
            return {}
        try:
            # On a GPU: one batched nvJPEG call for all of them (torchvision's decode_jpegs_cuda).
            images = decode_jpeg([batch.data[i] for i in slots], mode=ImageReadMode.RGB, device=self.device)
            return dict(zip(slots, images, strict=True))
        except torch.OutOfMemoryError:
            raise  # not a bad file
        except (RuntimeError, ValueError):
            pass  # one bad file fails the whole call (torchvision returns no partial results): find it file by file
        decoded = {}
        for i in slots:
            try:
                decoded[i] = decode_jpeg(batch.data[i], mode=ImageReadMode.RGB, device=self.device)
            except torch.OutOfMemoryError:
                raise
            except (RuntimeError, ValueError) as err:
                log.debug("the %s JPEG decoder failed on %s (%s); trying the CPU path", self.device, paths[i],
                          _short(err))
        return decoded

    def _fill_skipped(self, batch: EncodedBatch, paths: list[str], images: list[torch.Tensor | None],
                      reasons: dict[int, str]) -> DecodedBatch:
        """Warn about and count the skipped files, and give each skipped slot another image of the batch."""
        skipped = [paths[i] for i in sorted(reasons)]
        self.skipped_total += len(skipped)
        for i in sorted(reasons):
            if paths[i] not in self._warned:  # one warning per file, however many epochs it is skipped in
                self._warned.add(paths[i])
                log.warning("skipped %s: cannot be decoded as an image (%s); another image of the batch takes its "
                            "place", paths[i], reasons[i])
        good = [i for i, image in enumerate(images) if image is not None]
        if reasons and not good:
            named = "; ".join(f"{paths[i]} ({reasons[i]})" for i in sorted(reasons)[:3])
            more = f"; and {len(reasons) - 3} more" if len(reasons) > 3 else ""
            raise DataIntegrityError(f"none of the {len(images)} files of a batch decodes as an image: {named}{more}")
        # The batch keeps its size: under DDP every rank must run the same number of samples per step (the loss
        # gathers equal-sized batches from all ranks), so a skipped file's slot takes the next decoded image of
        # the batch (cyclically) and its label, rather than shrinking this rank's batch.
        labels = batch.labels.clone()
        for i in sorted(reasons):
            j = next((k for k in good if k > i), good[0])
            images[i], labels[i] = images[j], labels[j]
        return DecodedBatch(images, to_device(labels, self.device), skipped)  # type: ignore[arg-type]


def _why_no_bytes(path: str) -> str:
    """Why a file came with no bytes: empty on disk, or the worker could not read it (its size checked here)."""
    try:
        size = os.path.getsize(path)
    except OSError as err:
        return f"the loader worker could not read it ({type(err).__name__}: {err})"
    return "empty file (0 bytes)" if size == 0 else f"the loader worker could not read it (got 0 of its {size} bytes)"


def _bytes_of(data: torch.Tensor) -> memoryview:
    """The bytes of a CPU uint8 tensor, without a copy."""
    return memoryview(data.numpy()) if data.numel() else memoryview(b"")


# ---------------------------------------------------------------------------------------------------------------
# Loaders of decoded batches.


# A view of a decoded batch: (images, the loader's CPU generator) -> float [N, 3, S, S] (`mec.batch_eval`'s CenterView,
# ProbeTrainView), or a tuple of such batches (pretraining's views, `mec.batch_augment.BatchTwoView`).
View = Callable[[Sequence[torch.Tensor], torch.Generator], torch.Tensor | tuple[torch.Tensor, ...]]


def encoded_images(dataset: Dataset) -> EncodedImages | None:
    """The `EncodedImages` a data set is (or a `Subset` of: its items keep the whole set's indices), else None."""
    while isinstance(dataset, Subset):
        dataset = dataset.dataset
    return dataset if isinstance(dataset, EncodedImages) else None


class DecodedLoader:
    """A DataLoader of `EncodedBatch`es read as (images, labels) batches on `device`, as a per-image loader gives
    them: each batch is decoded there (`ImageDecoder`, which counts and names the files it skips) and `view` makes
    the float batch, drawing from `generator` (a CPU generator; `set_epoch` reseeds it with the sampler)."""

    def __init__(self, loader: DataLoader, device: torch.device | str, view: View) -> None:
        encoded = encoded_images(loader.dataset)
        if encoded is None:
            raise ValueError(f"DecodedLoader reads EncodedImages, got {type(loader.dataset).__name__}")
        self.loader = loader
        self.view = view
        self.decoder = ImageDecoder([path for path, _ in encoded.samples], device)
        self.generator = torch.Generator()

    @property
    def sampler(self):  # the loader's DistributedSampler, as `loader.sampler.set_epoch` expects
        return self.loader.sampler

    def set_epoch(self, epoch: int, view_seed: int) -> None:
        """The epoch's sample order (the sampler's) and random views (`view_seed`, e.g. `mec.train.epoch_seed`)."""
        self.loader.sampler.set_epoch(epoch)
        self.generator.manual_seed(view_seed)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[tuple[torch.Tensor | tuple[torch.Tensor, ...], torch.Tensor]]:
        for batch in self.loader:
            decoded = self.decoder(batch)
            yield self.view(decoded.images, self.generator), decoded.labels


def skipped_images(*loaders: DataLoader | DecodedLoader) -> int:
    """Unreadable files the `loaders` skipped so far, whichever path: a `DecodedLoader`'s decoder counts them
    in this process, a per-image loader's data set across its workers (`mec.data.skipped_images`)."""
    return sum(loader.decoder.skipped_total if isinstance(loader, DecodedLoader) else data_skipped(loader.dataset)
               for loader in loaders)
