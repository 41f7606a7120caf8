"""What compression is judged by, measured the same way for every variant: test accuracy, latency, size.

The test split is the run's own, read by ``classify.read_split`` (the one inference path: a run trained on
transcripts is scored on transcripts).

Latency is the model's forward pass on inputs prepared beforehand (decoding, tokenising and resizing excluded:
compression does not change them), per item, at a given batch size; the median over repeated calls after a
warm-up. For a linear probe that is the head on cached features; with live encoders it includes the encoders.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import numpy as np
import torch

from ..classify.predict import predict_split, scores
from ..classify.run import Split
from ..train.config import TrainConfig


def accuracy(model: torch.nn.Module, split: Split, cfg: TrainConfig, batch_size: int = 32) -> tuple[dict[str, float], torch.Tensor]:
    """(scores, probabilities (n, classes)) of ``model`` on the test split."""
    probs = predict_split(model, split.inputs, batch_size, torch.device("cpu"), cfg)
    return scores(split.targets, probs), probs


def prepared_batch(model: torch.nn.Module, split: Split, batch_size: int):
    """A batch of ``batch_size`` test items (cycling through the split when it is smaller), prepared for ``model``."""
    idx = torch.arange(batch_size) % len(split.examples)
    return split.inputs.batch(idx, model, train=False, rng=np.random.default_rng(0))


def time_per_item_ms(call: Callable[[], object], batch_size: int, min_seconds: float = 1.0, min_calls: int = 3,
                     max_calls: int = 200) -> list[float]:
    """Milliseconds per item of each timed ``call()`` (one batch of ``batch_size``): at least ``min_calls`` calls
    and ``min_seconds`` seconds."""
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < max_calls and (len(times) < min_calls or time.perf_counter() - start < min_seconds):
        t = time.perf_counter()
        call()
        times.append((time.perf_counter() - t) * 1000 / batch_size)
    return times


def compare_latency(calls: dict[str, Callable[[], object]], batch_size: int, rounds: int = 3,
                    min_seconds: float = 1.0) -> dict[str, float]:
    """Median ms per item of each named call, after two warm-up calls, interleaved over ``rounds`` so that a load
    change on a shared machine hits every variant alike."""
    for call in calls.values():
        call(), call()
    samples: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(rounds):
        for name, call in calls.items():
            samples[name] += time_per_item_ms(call, batch_size, min_seconds=min_seconds / rounds)
    return {name: statistics.median(s) for name, s in samples.items()}


def torch_forward(model: torch.nn.Module, batch) -> Callable[[], object]:
    """A no-grad forward call of ``model`` on a prepared batch, for timing."""
    def call():
        with torch.inference_mode():
            return model(batch)
    return call
