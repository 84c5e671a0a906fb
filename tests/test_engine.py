"""skulens.inference.engine: bytes in, per-item embeddings or errors out; batching, limits, warnings, shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from inference_helpers import TINY_DIM, decode_workers_cpu, encode, photo, tiny_model_dir, tiny_reference

from skulens.imaging.errors import ImageTooLarge, InvalidImage, InvalidRegion
from skulens.imaging.limits import DecodeLimits
from skulens.imaging.quality import ImageQuality, luminance_std
from skulens.inference.engine import Box, Engine
from skulens.inference.errors import Cancelled, DeadlineExceeded, DecodeWorkerLost, Overloaded, Unsupported
from skulens.inference.options import BatcherOptions, EncoderOptions, EngineOptions
from skulens.inference.priority import thread_nice


def _options(**kw: object) -> EngineOptions:
    base: dict[str, object] = {
        "batcher": BatcherOptions(max_batch=8, max_wait_ms=5),
        "decode_workers": 2,
        "fast_decode": False,
    }
    base.update(kw)
    return EngineOptions(**base)  # type: ignore[arg-type]


#: The decode-path tests run with decode threads and with decode worker processes: same results, same errors.
DECODERS = pytest.mark.parametrize("processes", [False, True], ids=["threads", "processes"])


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    return tiny_model_dir(tmp_path / "tiny")


def _engine_threads(before: frozenset[threading.Thread] = frozenset()) -> list[str]:
    """Names of live skulens worker threads started after `before` was taken (other tests' servers may run)."""
    return [t.name for t in threading.enumerate() if t.name.startswith("skulens-") and t not in before]


@DECODERS
async def test_per_image_results_and_errors(tiny: Path, processes: bool) -> None:
    engine = Engine.load(tiny, _options(decode=DecodeLimits(max_pixels=200_000), decode_processes=processes))
    good = [photo(64, 48, seed=i) for i in range(3)]
    images = [
        encode(good[0], "PNG"),
        b"garbage",
        encode(good[1], "JPEG"),
        encode(photo(600, 400), "PNG"),
        encode(good[2], "WEBP", lossless=True),
    ]
    out = await engine.embed_images(images)
    assert len(out) == 5
    assert isinstance(out[1], InvalidImage) and out[1].field == "images[1].content"
    assert (
        isinstance(out[3], ImageTooLarge)
        and out[3].field == "images[3].content"
        and "limit is 200000" in out[3].message
    )
    for k in (0, 2, 4):
        vec = out[k]
        assert isinstance(vec, np.ndarray) and vec.shape == (TINY_DIM,) and vec.dtype == np.float32
    pixels = np.stack([engine.preprocessor.image_tensor(images[0])])
    np.testing.assert_allclose(out[0], tiny_reference(pixels)[0], atol=1e-6)
    stats = engine.stats()
    assert stats.images_embedded == 3 and stats.decode_errors == 2
    assert stats.image_batcher.items == 3
    await engine.close()


async def test_a_decode_worker_that_dies_fails_only_the_images_it_held(tiny: Path) -> None:
    engine = Engine.load(tiny, _options(decode_processes=True, decode_workers=1))
    data = encode(photo(1600, 1600, seed=3), "PNG", compress_level=1)
    try:
        workers = decode_workers_cpu()
        assert len(workers) == 1  # one worker process, started with the engine
        call = asyncio.create_task(engine.embed_images([data] * 24))
        while not call.done() and decode_workers_cpu() == workers:  # wait until it is busy decoding
            await asyncio.sleep(0.005)
        for pid in workers:
            os.kill(pid, signal.SIGKILL)
        out = await call
        lost = [r for r in out if isinstance(r, DecodeWorkerLost)]
        assert lost and all(r.field is not None and r.field.endswith(".content") for r in lost)
        assert all(isinstance(r, (np.ndarray, DecodeWorkerLost)) for r in out)
        assert engine.stats().decode_worker_restarts == 1
        again = await engine.embed_images([data, b"garbage"])  # the new worker serves the next call
        assert isinstance(again[0], np.ndarray) and isinstance(again[1], InvalidImage)
        assert set(decode_workers_cpu()).isdisjoint(workers)
    finally:
        await engine.close()


@DECODERS
async def test_regions_give_one_result_per_box(tiny: Path, processes: bool) -> None:
    engine = Engine.load(tiny, _options(decode_processes=processes))
    img = photo(200, 100, seed=9)
    data = encode(img, "PNG")
    out = await engine.embed_images(
        [data, data, data],
        regions=[[Box(0, 0, 100, 100), Box(150, 50, 100, 100), Box(100, 0, 100, 100)], None, []],
    )
    assert len(out) == 4  # 3 boxes + whole image + nothing
    assert isinstance(out[1], InvalidRegion) and out[1].field == "images[0].regions[1]"
    left = engine.preprocessor.transform(img.crop((0, 0, 100, 100)))
    np.testing.assert_allclose(out[0], tiny_reference(left[None])[0], atol=1e-6)
    assert isinstance(out[2], np.ndarray) and isinstance(out[3], np.ndarray)
    bad = await engine.embed_images([b"nope"], regions=[[Box(0, 0, 20, 20), Box(0, 0, 30, 30)]])
    assert len(bad) == 2 and all(isinstance(e, InvalidImage) and e.field == "images[0].content" for e in bad)
    mixed = await engine.embed_images([b"nope", data], regions=[[], None])  # bad image, no box: no result
    assert len(mixed) == 1 and isinstance(mixed[0], np.ndarray)
    await engine.close()


@DECODERS
async def test_qualities_are_measured_on_the_decoded_pixels_when_asked(tiny: Path, processes: bool) -> None:
    engine = Engine.load(tiny, _options(decode_processes=processes))
    img = photo(200, 100, seed=9)
    data = encode(img, "PNG")
    qualities: list[ImageQuality | None] = []
    out = await engine.embed_images(
        [data, b"nope", data], regions=[None, None, [Box(0, 0, 100, 100), Box(150, 50, 100, 100)]],
        qualities=qualities,
    )
    plain = await engine.embed_images([data, b"nope", data], regions=[None, None, [Box(0, 0, 100, 100)]])
    np.testing.assert_array_equal(out[0], plain[0])  # measuring changes nothing in the vectors
    np.testing.assert_array_equal(out[2], plain[2])
    assert len(qualities) == len(out) == 4
    whole, failed, box, bad_box = qualities
    shown = engine.preprocessor.resize_crop(img)
    assert whole == ImageQuality(200, 100, pytest.approx(luminance_std(shown)))
    assert failed is None and bad_box is None and isinstance(out[3], InvalidRegion)
    assert box is not None and (box.width, box.height) == (100, 100)
    await engine.close()


async def test_concurrent_callers_are_batched_and_match_single(tiny: Path) -> None:
    engine = Engine.load(tiny, _options(batcher=BatcherOptions(max_batch=16, max_wait_ms=20)))
    datas = [encode(photo(80, 60, seed=i), "JPEG") for i in range(24)]
    single = [await engine.embed_images([d]) for d in datas[:3]]
    results = await asyncio.gather(*(engine.embed_images([d]) for d in datas))
    for k in range(3):
        assert np.abs(results[k][0] - single[k][0]).max() <= 1e-6  # type: ignore[operator]
    assert max(engine.stats().image_batcher.batch_size_histogram) > 1
    assert engine.queue_depth == 0
    await engine.close()


async def test_deadline_and_overload(tiny: Path) -> None:
    engine = Engine.load(tiny, _options(batcher=BatcherOptions(max_batch=4, max_wait_ms=1, max_queue=2)))
    data = encode(photo(32, 32), "PNG")
    with pytest.raises(DeadlineExceeded):
        await engine.embed_images([data], deadline=time.monotonic() - 0.001)
    with pytest.raises(Overloaded, match="max_queue is 2"):
        await engine.embed_images([data, data, data])
    assert len(await engine.embed_images([data, data])) == 2
    await engine.close()


async def test_inference_failure_fails_request_and_engine_survives(tiny: Path) -> None:
    engine = Engine.load(tiny, _options())
    data = encode(photo(32, 32), "PNG")
    real_run = engine.encoder.image.run
    calls = {"n": 0}

    def flaky(batch: np.ndarray) -> np.ndarray:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("ORT failed")
        return real_run(batch)

    engine.encoder.image.run = flaky  # type: ignore[method-assign]
    with pytest.raises(RuntimeError, match="ORT failed"):
        await engine.embed_images([data, data])
    assert isinstance((await engine.embed_images([data]))[0], np.ndarray)
    await engine.close()


async def test_cancelled_request_is_dropped(tiny: Path) -> None:
    engine = Engine.load(tiny, _options(batcher=BatcherOptions(max_batch=1, max_wait_ms=0)))
    gate, started = threading.Event(), threading.Event()
    real_run = engine.encoder.image.run

    def blocking(batch: np.ndarray) -> np.ndarray:
        started.set()
        gate.wait(5)
        return real_run(batch)

    engine.encoder.image.run = blocking  # type: ignore[method-assign]
    data = encode(photo(32, 32), "PNG")
    first = asyncio.ensure_future(engine.embed_images([data]))
    await asyncio.to_thread(started.wait, 5)
    second = asyncio.ensure_future(engine.embed_images([data, data]))
    while engine.queue_depth < 2:
        await asyncio.sleep(0.005)
    second.cancel()
    gate.set()
    assert isinstance((await first)[0], np.ndarray)
    with pytest.raises(asyncio.CancelledError):
        await second
    await asyncio.sleep(0.05)
    stats = engine.stats().image_batcher
    assert stats.dropped_cancelled == 2 and stats.items == 1
    await engine.close()


def _thread_nices() -> dict[str, int]:
    """Nice value of each thread of this process, by thread id."""
    out = {}
    for task in Path("/proc/self/task").iterdir():
        with contextlib.suppress(OSError):
            out[task.name] = int((task / "stat").read_text().rsplit(")", 1)[1].split()[16])
    return out


async def test_work_threads_and_onnxruntime_threads_run_below_the_caller(tiny: Path) -> None:
    before = _thread_nices()
    base = thread_nice()
    engine = Engine.load(tiny, _options(work_nice=3, encoder=EncoderOptions(intra_op_threads=2)))
    try:
        await engine.embed_images([encode(photo(64, 48), "PNG")] * 4)  # starts the decode threads
        new = {tid: nice for tid, nice in _thread_nices().items() if tid not in before}
        # the inference thread, onnxruntime's second intra-op thread (made with the session, in the inference
        # thread) and the two decode threads; the caller (the event loop's thread) keeps its priority
        assert sum(nice == min(19, base + 3) for nice in new.values()) >= 4, new
        assert thread_nice() == base
    finally:
        await engine.close()


async def test_properties_text_unsupported_random_warning_and_close(
    tiny: Path, caplog: pytest.LogCaptureFixture
) -> None:
    before = frozenset(threading.enumerate())
    with caplog.at_level(logging.WARNING, logger="skulens.inference.engine"):
        engine = Engine.load(tiny, _options(random_weights_warn_interval_s=0.0))
        await engine.embed_images([encode(photo(32, 32), "PNG")])
    warnings = [r for r in caplog.records if "RANDOM WEIGHTS" in r.getMessage()]
    assert len(warnings) >= 2 and all(r.levelno == logging.WARNING for r in warnings)
    assert engine.random_weights and engine.dim == TINY_DIM
    assert engine.fingerprint == engine.manifest.fingerprint
    assert engine.provider_report.active == ("CPUExecutionProvider",)
    assert not engine.has_text
    with pytest.raises(Unsupported, match="no text tower"):
        await engine.embed_texts(["milk"])
    assert _engine_threads(before)
    await engine.close()
    assert _engine_threads(before) == []
    with pytest.raises(Cancelled):
        await engine.embed_images([b"x"])


async def test_real_weights_do_not_warn(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    d = tiny_model_dir(tmp_path / "real", weights="pretrained")
    with caplog.at_level(logging.WARNING, logger="skulens.inference.engine"):
        engine = Engine.load(d, _options())
        await engine.embed_images([encode(photo(32, 32), "PNG")])
    assert not [r for r in caplog.records if "RANDOM WEIGHTS" in r.getMessage()]
    assert not engine.random_weights
    await engine.close()


async def test_real_clip_batched_equals_single_and_text(clip_model_dir: Path) -> None:
    pytest.importorskip("skulens.inference.tokenizer")
    opts = _options(
        batcher=BatcherOptions(max_batch=8, max_wait_ms=30),
        encoder=EncoderOptions(warmup=False),
        fast_decode=True,
    )
    engine = Engine.load(clip_model_dir, opts)
    assert engine.dim == 512 and engine.has_text and engine.random_weights
    datas = [encode(photo(640, 480, seed=i), "JPEG", quality=90) for i in range(5)]
    single = [(await engine.embed_images([d]))[0] for d in datas]
    batched = await engine.embed_images(datas)
    concurrent = await asyncio.gather(*(engine.embed_images([d]) for d in datas))
    assert max(engine.stats().image_batcher.last_batch_sizes) > 1
    for k in range(5):
        assert np.abs(batched[k] - single[k]).max() <= 1e-5  # type: ignore[operator]
        assert np.abs(concurrent[k][0] - single[k]).max() <= 1e-5  # type: ignore[operator]
        assert abs(float(np.linalg.norm(single[k])) - 1.0) < 1e-5  # type: ignore[arg-type]
    texts = await engine.embed_texts(["a carton of oat milk", "bananas"])
    assert texts.shape == (2, 512) and texts.dtype == np.float32
    one = await engine.embed_texts(["bananas"])
    assert np.abs(one[0] - texts[1]).max() <= 1e-5
    await engine.close()


async def test_mirror_averages_each_image_with_its_mirror_image(tiny: Path) -> None:
    engine = Engine.load(tiny, _options())
    images = [encode(photo(64, 48, seed=i), "PNG") for i in range(3)] + [b"garbage"]
    out = await engine.embed_images(images, mirror=True)
    assert isinstance(out[3], InvalidImage)
    assert engine.stats().image_batcher.items == 6  # two model inputs per decodable image
    for k in range(3):
        t = engine.preprocessor.image_tensor(images[k])
        rows = tiny_reference(np.stack([t, np.ascontiguousarray(t[..., ::-1])]))
        want = (rows[0] + rows[1]) / np.linalg.norm(rows[0] + rows[1])
        np.testing.assert_allclose(out[k], want, atol=1e-6)
    await engine.close()


async def test_embed_views_embeds_each_view_of_the_image_or_its_region(tiny: Path) -> None:
    from skulens.imaging.augment import augmented_views

    engine = Engine.load(tiny, _options())
    img = photo(120, 90, seed=4)
    data = encode(img, "PNG")
    rows = await engine.embed_views(data, augmented_views)
    decoded = engine.preprocessor.decode(data).image
    want = tiny_reference(np.stack([engine.preprocessor.transform(v) for v in augmented_views(decoded)]))
    assert rows.shape == (21, TINY_DIM) and rows.dtype == np.float32
    np.testing.assert_allclose(rows, want, atol=1e-6)
    box = Box(10, 5, 60, 40)
    cropped = await engine.embed_views(data, augmented_views, region=box)
    want = tiny_reference(np.stack([engine.preprocessor.transform(v)
                                    for v in augmented_views(decoded.crop((10, 5, 70, 45)))]))
    np.testing.assert_allclose(cropped, want, atol=1e-6)
    with pytest.raises(InvalidImage):
        await engine.embed_views(b"garbage", augmented_views)
    with pytest.raises(InvalidRegion):
        await engine.embed_views(data, augmented_views, region=Box(100, 80, 60, 40))
    await engine.close()
