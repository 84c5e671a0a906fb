"""`Engine`: decode pool + micro-batchers + encoder for one model directory.

Decoding and preprocessing run in a pool of threads or of worker processes (`decode_pool`), shared round-robin
between callers (`fair_pool`); both towers share one inference thread, so image and text batches never compete
for the CPU cores onnxruntime uses.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from skulens.errors import SkulensError, field_path
from skulens.imaging.errors import InvalidRegion
from skulens.imaging.prepare import Prepared, prepare_image
from skulens.imaging.preprocess import Box, Preprocessor
from skulens.imaging.quality import ImageQuality
from skulens.inference.batcher import BatcherStats, MicroBatcher
from skulens.inference.cost_model import CostModel
from skulens.inference.decode_pool import WorkerProcesses, decode_executor, is_lost_worker
from skulens.inference.encoder import OnnxEncoder, ProviderReport
from skulens.inference.errors import Cancelled, DecodeWorkerLost, ModelLoadError, Unsupported
from skulens.inference.fair_pool import FairPool
from skulens.inference.options import EngineOptions
from skulens.inference.priority import work_threads
from skulens.model.manifest import Manifest
from skulens.model.preprocess_config import PreprocessConfig

if TYPE_CHECKING:
    from PIL import Image

    from skulens.inference.tokenizer import ClipTokenizer

log = logging.getLogger(__name__)

__all__ = ["Box", "Engine", "EngineStats"]

#: A decode of this many pixels or more (after the fast path's JPEG scale) is "heavy": one caller's heavy
#: decodes never hold every decode thread (`FairPool`). 8 MP: a 12 MP phone JPEG decodes at 1/4 scale, far
#: under it; a full-size PNG or TIFF from a camera is over it.
HEAVY_DECODE_PIXELS = 8_000_000


@dataclass(frozen=True)
class EngineStats:
    """Counters a metrics layer can read."""

    images_embedded: int
    texts_embedded: int
    decode_errors: int
    image_batcher: BatcherStats
    text_batcher: BatcherStats | None
    decode_worker_restarts: int = 0


class Engine:
    """Embeds image bytes (whole images or boxes) and texts with one exported model.

    Build with `Engine.load`; use from one asyncio event loop; `await close()` at the end.
    """

    def __init__(
        self,
        model_dir: Path,
        options: EngineOptions,
        encoder: OnnxEncoder,
        preprocess_config: PreprocessConfig,
        tokenizer: ClipTokenizer | None,
        warmup_seconds: dict[int, float] | None = None,
        infer_pool: ThreadPoolExecutor | None = None,
    ) -> None:
        self.model_dir = Path(model_dir)
        self.options = options
        self.encoder = encoder
        self.preprocessor = Preprocessor(
            preprocess_config, options.decode, fast=options.fast_decode, draft_factor=options.draft_factor
        )
        self.tokenizer = tokenizer
        workers = options.decode_workers or os.cpu_count() or 1
        self._decode_pool = decode_executor(workers, options.decode_processes, options.work_nice)
        self._fair_decode = FairPool(self._decode_pool, workers)
        #: Tokenising and augmented views (closures, not worth a process hop) run on threads either way.
        self._thread_pool = (
            work_threads(workers, "skulens-prepare", options.work_nice)
            if options.decode_processes
            else self._decode_pool
        )
        self._costs = CostModel(decode_workers=workers)
        if warmup_seconds:
            size = max(warmup_seconds)
            self._costs.seed_inference(size, warmup_seconds[size])
        self._infer_pool = infer_pool or work_threads(1, "skulens-infer", options.work_nice)
        self._image_batcher = MicroBatcher(
            encoder.embed_images,
            options.batcher,
            name="image",
            executor=self._infer_pool,
            on_batch=self._costs.observe_inference,
        )
        self._text_batcher: MicroBatcher | None = None
        if encoder.has_text and tokenizer is not None:
            self._text_batcher = MicroBatcher(
                encoder.embed_texts, options.text_batcher, name="text", executor=self._infer_pool
            )
        self._images_embedded = 0
        self._texts_embedded = 0
        self._decode_errors = 0
        self._last_random_warning = float("-inf")
        self._closed = False
        self._warn_random_weights(force=True)

    @classmethod
    def load(cls, model_dir: Path, options: EngineOptions | None = None) -> Engine:
        """Load and verify a model directory (manifest sha256s, graph IO vs manifest, providers), warm it
        up at batch 1 and `max_batch`. Raises `ModelLoadError`."""
        options = options or EngineOptions()
        model_dir = Path(model_dir)
        # The session is made in the inference thread: onnxruntime's threads inherit its lower priority.
        infer_pool = work_threads(1, "skulens-infer", options.work_nice)
        try:
            return cls._load(model_dir, options, infer_pool)
        except BaseException:
            infer_pool.shutdown(wait=False)
            raise

    @classmethod
    def _load(cls, model_dir: Path, options: EngineOptions, infer_pool: ThreadPoolExecutor) -> Engine:
        encoder = infer_pool.submit(OnnxEncoder.load, model_dir, options.encoder).result()
        manifest = encoder.manifest
        try:
            pre = PreprocessConfig.from_dict(json.loads((model_dir / manifest.preprocess_file).read_text()))
        except (OSError, KeyError, TypeError, ValueError) as exc:
            raise ModelLoadError(f"{model_dir / manifest.preprocess_file} is invalid: {exc}") from exc
        tokenizer = None
        if manifest.has_text:
            try:
                from skulens.inference.tokenizer import ClipTokenizer

                tokenizer = ClipTokenizer.from_model_dir(model_dir, manifest.tokenizer)
            except (ImportError, OSError, ValueError, KeyError) as exc:
                raise ModelLoadError(f"cannot load the tokenizer of {model_dir}: {exc}") from exc
        warmup_seconds = None
        if options.encoder.warmup:
            t0 = time.perf_counter()
            sizes = sorted({1, options.batcher.max_batch})
            text_row = tokenizer.encode_batch([""])[0] if tokenizer is not None else None
            warmup_seconds = infer_pool.submit(encoder.warmup, sizes, text_row).result()
            log.info("warm-up at batch sizes %s took %.2f s", sizes, time.perf_counter() - t0)
        return cls(model_dir, options, encoder, pre, tokenizer, warmup_seconds, infer_pool)

    # -- properties ----------------------------------------------------------------------------------------

    @property
    def manifest(self) -> Manifest:
        """The model's manifest."""
        return self.encoder.manifest

    @property
    def model_name(self) -> str:
        """The model's name from its manifest."""
        return self.manifest.model_name

    @property
    def dim(self) -> int:
        """Embedding dimension."""
        return self.encoder.dim

    @property
    def fingerprint(self) -> str:
        """Identity of the embedding space (catalogs are bound to it)."""
        return self.encoder.manifest.fingerprint

    @property
    def random_weights(self) -> bool:
        """True when the model carries random weights (tests only)."""
        return self.encoder.manifest.random_weights

    @property
    def has_text(self) -> bool:
        """True when text search is possible."""
        return self._text_batcher is not None

    @property
    def costs(self) -> CostModel:
        """Learned seconds per model input and per decoded megapixel (admission reads it)."""
        return self._costs

    def decode_pixels(self, data: bytes) -> int:
        """Pixels decoding `data` will produce, from its header alone (see `Preprocessor.decode_pixels`)."""
        return self.preprocessor.decode_pixels(data)

    @property
    def provider_report(self) -> ProviderReport:
        """Requested / available / active execution providers and whether a GPU request fell back."""
        return self.encoder.provider_report

    @property
    def queue_depth(self) -> int:
        """Items waiting for inference (images and texts)."""
        text = self._text_batcher.queue_depth if self._text_batcher else 0
        return self._image_batcher.queue_depth + text

    def stats(self) -> EngineStats:
        """A snapshot of the counters."""
        return EngineStats(
            images_embedded=self._images_embedded,
            texts_embedded=self._texts_embedded,
            decode_errors=self._decode_errors,
            image_batcher=self._image_batcher.stats(),
            text_batcher=self._text_batcher.stats() if self._text_batcher else None,
            decode_worker_restarts=(
                self._decode_pool.restarts if isinstance(self._decode_pool, WorkerProcesses) else 0
            ),
        )

    # -- work ----------------------------------------------------------------------------------------------

    def _warn_random_weights(self, force: bool = False) -> None:
        if not self.random_weights:
            return
        now = time.monotonic()
        if force or now - self._last_random_warning >= self.options.random_weights_warn_interval_s:
            self._last_random_warning = now
            log.warning(
                "RANDOM WEIGHTS: model %s (%s) carries seeded random weights; its embeddings are meaningless "
                "for recognition. Export real weights for production.",
                self.manifest.model_name,
                self.model_dir,
            )

    async def _prepare(
        self, key: object, data: bytes, boxes: Sequence[Box] | None, i: int, pixels: int, measure: bool
    ) -> Prepared:
        """Decode + preprocess `images[i]` in `key`'s turn of the decode pool (`prepare_image`); a decode worker
        process that died under it is `DecodeWorkerLost` in each of its slots."""
        if boxes is not None and not boxes:
            return Prepared([], [] if measure else None, 0.0)  # no region asked for: nothing to decode
        job = functools.partial(prepare_image, self.preprocessor, data, boxes, i, measure)
        try:
            prepared = await self._fair_decode.run(key, job, heavy=pixels >= HEAVY_DECODE_PIXELS)
        except Exception as exc:
            if not is_lost_worker(exc):
                raise
            n = 1 if boxes is None else len(boxes)
            lost = DecodeWorkerLost("the decode worker process died while decoding this image; retry it",
                                    field_path("images", i, "content"))
            return Prepared([lost] * n, [None] * n if measure else None, 0.0)
        if prepared.seconds:
            self._costs.observe_decode(pixels, prepared.seconds)
        return prepared

    async def embed_images(
        self,
        images: Sequence[bytes],
        *,
        regions: Sequence[Sequence[Box] | None] | None = None,
        deadline: float | None = None,
        caller: object | None = None,
        pixels: Sequence[int] | None = None,
        qualities: list[ImageQuality | None] | None = None,
        mirror: bool = False,
    ) -> list[np.ndarray | SkulensError]:
        """Embed each image, or each box of an image that has regions: one [D] float32 unit vector or one
        `SkulensError` per image (or per box, in order), so one bad image never fails the others.

        `regions[i]` lists boxes for `images[i]` (None or missing: the whole image; an empty list: no
        result for that image). `deadline` is an absolute `time.monotonic()` value. Decoding shares the decode
        threads round-robin between callers: calls with the same `caller` (default: this call alone) take
        turns with every other caller, so a request of many large images cannot starve a small one. `pixels`:
        each image's decoded pixel count when the caller already read it from the headers (admission did);
        otherwise the headers are read here. `qualities`: when a list is given, it is extended with one
        `ImageQuality` per result (None where decoding failed), measured on the decoded pixels. `mirror`: each
        result is the normalised mean of the image's and its mirror image's embedding (two model inputs per image;
        test-time augmentation of queries). Raises `Overloaded`
        when the queue cannot take this request's items, `DeadlineExceeded` when the deadline passed before
        queueing.
        """
        self._check_open()
        self._warn_random_weights()
        if regions is not None and len(regions) > len(images):
            raise InvalidRegion(f"{len(regions)} region lists for {len(images)} images", "regions")
        per_image = [
            regions[i] if regions is not None and i < len(regions) else None for i in range(len(images))
        ]
        key = caller if caller is not None else object()
        if pixels is None:
            pixels = [self.preprocessor.decode_pixels(data) for data in images]  # header only
        elif len(pixels) != len(images):
            raise ValueError(f"{len(pixels)} pixel counts for {len(images)} images")
        measure = qualities is not None
        prepared = await asyncio.gather(
            *(self._prepare(key, data, per_image[i], i, pixels[i], measure) for i, data in enumerate(images))
        )
        flat: list[np.ndarray | SkulensError] = [r for p in prepared for r in p.inputs]
        if qualities is not None:
            for p in prepared:
                qualities.extend(p.qualities or [])
        ok = [k for k, r in enumerate(flat) if isinstance(r, np.ndarray)]
        tensors = [r for r in flat if isinstance(r, np.ndarray)]
        self._decode_errors += len(flat) - len(ok)
        if ok:
            batch = tensors + [np.ascontiguousarray(t[..., ::-1]) for t in tensors] if mirror else tensors
            futures = self._image_batcher.submit_many(batch, deadline=deadline)
            rows: list[object] = list(await asyncio.gather(*futures, return_exceptions=True))
            if mirror:  # test-time augmentation: the mean of each image's and its mirror image's embedding
                rows = [_mean_unit(a, b) for a, b in zip(rows[: len(tensors)], rows[len(tensors):], strict=True)]
            for k, row in zip(ok, rows, strict=True):
                if isinstance(row, np.ndarray):
                    flat[k] = row
                    self._images_embedded += 1
                elif isinstance(row, SkulensError):
                    flat[k] = row
                elif isinstance(row, asyncio.CancelledError):
                    flat[k] = Cancelled("inference was cancelled")
                else:
                    raise row  # type: ignore[misc]  # anything else gather caught is a bug: re-raise it
        return flat

    async def embed_texts(self, texts: Sequence[str], *, deadline: float | None = None) -> np.ndarray:
        """Embed texts → float32 [N, D] unit-norm rows. Raises `Unsupported` on an image-only model,
        `Overloaded`, `DeadlineExceeded`."""
        self._check_open()
        if self._text_batcher is None or self.tokenizer is None:
            raise Unsupported(
                f"model {self.manifest.model_name} has no text tower; text search is unsupported", "texts"
            )
        self._warn_random_weights()
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        loop = asyncio.get_running_loop()
        tokens = await loop.run_in_executor(self._thread_pool, self.tokenizer.encode_batch, list(texts))
        ids = np.asarray(tokens, dtype=np.int64)
        futures = self._text_batcher.submit_many(list(ids), deadline=deadline)
        rows = await asyncio.gather(*futures)
        self._texts_embedded += len(rows)
        return np.stack(rows).astype(np.float32, copy=False)

    async def embed_views(
        self,
        data: bytes,
        views: Callable[[Image.Image], list[Image.Image]],
        *,
        region: Box | None = None,
        deadline: float | None = None,
    ) -> np.ndarray:
        """Embed the views `views` makes of one image (or of its `region`): float32 [V, D] unit rows, e.g. the
        augmented views of a reference (`skulens.imaging.augment`). Raises the image's `SkulensError`."""
        self._check_open()

        def prepare() -> list[np.ndarray]:
            decoded = self.preprocessor.decode(data, field="image")
            img = decoded.image if region is None else self.preprocessor.crop(decoded, region, "region")
            return [self.preprocessor.transform(v) for v in views(img)]

        tensors = await asyncio.get_running_loop().run_in_executor(self._thread_pool, prepare)
        if not tensors:
            return np.zeros((0, self.dim), dtype=np.float32)
        rows = await asyncio.gather(*self._image_batcher.submit_many(tensors, deadline=deadline))
        self._images_embedded += len(rows)
        return np.stack(rows).astype(np.float32, copy=False)

    def _check_open(self) -> None:
        if self._closed:
            raise Cancelled("the inference engine is shut down")

    async def close(self, *, drain: bool = True) -> None:
        """Finish (or with `drain=False` cancel) queued work, then stop every thread the engine started."""
        if self._closed:
            return
        self._closed = True
        await self._image_batcher.close(drain=drain)
        if self._text_batcher is not None:
            await self._text_batcher.close(drain=drain)
        self._infer_pool.shutdown(wait=True)
        self._decode_pool.shutdown(wait=True, cancel_futures=not drain)
        if self._thread_pool is not self._decode_pool:
            self._thread_pool.shutdown(wait=True, cancel_futures=not drain)


def _mean_unit(a: object, b: object) -> object:
    """The normalised mean of two embeddings; the first error when either is one."""
    if not isinstance(a, np.ndarray):
        return a
    if not isinstance(b, np.ndarray):
        return b
    m = a + b
    return (m / max(float(np.linalg.norm(m)), 1e-12)).astype(np.float32)
