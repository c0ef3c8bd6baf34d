"""A mixed search load for the clipsearch server: text searches, image uploads and "more like this".

Used by tests/test_load.py (headless, bounded in users and time, against 127.0.0.1 only) and by
benchmarks/bench_load.py; run it by hand with ``locust -f tests/load/locustfile.py --host URL``.
"""

from __future__ import annotations

import io
import random

from locust import HttpUser, between, task
from PIL import Image

WORDS = ["red", "green", "blue", "white", "yellow", "circle", "square", "photo", "dog", "snow", "a", "the"]


def _png(seed: int) -> bytes:
    rng = random.Random(seed)
    image = Image.new("RGB", (48, 36), tuple(rng.randrange(256) for _ in range(3)))
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


class Searcher(HttpUser):
    wait_time = between(0.0, 0.05)

    def on_start(self) -> None:
        hits = self.client.get("/api/search", params={"q": "photo", "k": 50, "modality": "image"}).json()
        self.ids = [h["id"] for h in hits] or [None]
        self.images = [_png(seed) for seed in range(8)]

    @task(5)
    def text(self) -> None:
        words = random.sample(WORDS, random.randint(1, 4))
        self.client.get("/api/search", params={"q": " ".join(words), "k": 10}, name="/api/search?q")

    @task(2)
    def upload(self) -> None:
        files = {"image": ("query.png", random.choice(self.images), "image/png")}
        self.client.post("/api/search", files=files, data={"k": "10"}, name="/api/search (upload)")

    @task(2)
    def more_like_this(self) -> None:
        item = random.choice(self.ids)
        if item is not None:
            self.client.get(f"/api/items/{item}/similar", params={"k": 10}, name="/api/items/[id]/similar")
