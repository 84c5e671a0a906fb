"""skulens.inference.cost_model: seconds per model input and per decoded megapixel, learned by EWMA."""

from __future__ import annotations

import threading

import pytest

from skulens.inference.cost_model import CostModel


def test_seeds_then_follows_observations() -> None:
    m = CostModel(infer_s_per_item=0.02, decode_s_per_mpix=0.01, decode_workers=2, alpha=0.5)
    assert m.estimate(10, 0) == pytest.approx(0.2)
    assert m.estimate(0, 4_000_000) == pytest.approx(4 * 0.01 / 2)  # two workers decode in parallel
    m.observe_inference(8, 0.8)  # 0.1 s per item
    assert m.snapshot().infer_s_per_item == pytest.approx(0.02 + 0.5 * (0.1 - 0.02))
    for _ in range(40):
        m.observe_inference(8, 0.8)
    assert m.snapshot().infer_s_per_item == pytest.approx(0.1, rel=1e-6)
    m.seed_inference(32, 0.32)
    assert m.snapshot().infer_s_per_item == pytest.approx(0.01)


def test_decode_observations_ignore_tiny_images_and_nonsense() -> None:
    m = CostModel(decode_s_per_mpix=0.01, alpha=1.0)
    m.observe_decode(50_000, 5.0)  # 0.05 MP: overhead-dominated, ignored
    m.observe_decode(2_000_000, 0.0)
    m.observe_inference(0, 1.0)
    m.observe_inference(4, -1.0)
    assert m.snapshot().decode_s_per_mpix == 0.01
    m.observe_decode(2_000_000, 0.1)
    assert m.snapshot().decode_s_per_mpix == pytest.approx(0.05)


@pytest.mark.parametrize(
    "kw", [{"infer_s_per_item": 0}, {"decode_s_per_mpix": -1}, {"decode_workers": 0}, {"alpha": 0}, {"alpha": 1.5}]
)
def test_bad_seeds_refused(kw: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        CostModel(**kw)  # type: ignore[arg-type]


def test_thread_safe_updates() -> None:
    m = CostModel(infer_s_per_item=0.05, alpha=0.01)

    def work() -> None:
        for _ in range(2000):
            m.observe_inference(4, 0.2)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert m.snapshot().infer_s_per_item == pytest.approx(0.05, rel=1e-6)
