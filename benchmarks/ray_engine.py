"""The ray engine's cost on one machine: images/s of decode + hash (the download stage's decode
and dedupe's hashing, as the stages call them) and of batch prediction, local engine against the
ray engine on a loopback Ray cluster (tests/support/ray_cluster.py) with one and with two worker
nodes, on the same cores. The head offers no CPU, as in deploy/ray/cluster.yaml: one worker node
holds all the CPUs, two split them.

    .venv/bin/python -m benchmarks.ray_engine [--photos 2500] [--predict-photos 500] [--cpus 2]

Three runs each:
  * cold: what one stage or one `imgclf predict` pays, in a process of its own: connecting, a
    new Ray job whose worker processes start and import the code (and, for prediction, each
    actor imports TensorFlow and loads the model), then the images;
  * warm, over half the photos and over all of them, in one Ray job (as inside `ray job
    submit`) after a first run that starts the job's worker processes: the per-image cost is
    the slope, (N - N/2) / (t_N - t_N/2) images/s (steady), and what is left of t_N is the
    fixed cost of a pipeline run, mostly starting its actors (readers on the driver's node;
    the model actors, which import TensorFlow and load the model every run).
Where the time goes, on the same cluster: `connect` (ray.init + shutdown) and `transfer only`,
the decode pipeline with a per-image function that returns the bytes it got (read on the
driver's node -> a worker -> back): Ray Data's scheduling, Arrow serialisation and two trips
through the object store, without decoding.

The model is EfficientNet-Lite0 at 224 px with random weights (same speed as trained ones),
saved as a .keras file every node of this machine can read. A shared 2-core machine is noisy:
compare ratios within one run.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tests.support.ray_cluster import RayCluster  # noqa: E402

Run = Callable[[Path, str | None], int]  # (photos folder, ray address or None) -> images done


@dataclass
class Result:
    cold_s: float
    images: int
    half_s: float  # warm, half the photos
    full_s: float  # warm, all of them

    @property
    def steady(self) -> float:
        return (self.images - self.images // 2) / (self.full_s - self.half_s)

    @property
    def fixed_s(self) -> float:
        return max(0.0, self.full_s - self.images / self.steady)


def sample(source: Path, per_class: int, folder: Path) -> Path:
    for label in ("cat", "dog"):
        (folder / label).mkdir(parents=True)
        for i in range(1, per_class + 1):
            shutil.copyfile(source / label / f"{label}.{i}.jpg", folder / label / f"{i}.jpg")
    return folder


def seconds(run: Run, photos: Path, address: str | None) -> tuple[float, int]:
    start = time.perf_counter()
    images = run(photos, address)
    return time.perf_counter() - start, images


@contextlib.contextmanager
def one_job(address: str | None) -> Iterator[None]:
    """Runs inside share one Ray job (the engine's `connected` reuses it), as in `ray job
    submit`; the local engine needs none."""
    if address is None:
        yield
        return
    from imgclf.data.cluster import connected

    with connected(address):
        yield


def measured(run: Run, photos: Path, half: Path, address: str | None) -> Result:
    cold_s, images = seconds(run, photos, address)
    with one_job(address):
        seconds(run, half, address)  # the job's processes start and import here
        half_s, _ = seconds(run, half, address)
        full_s, _ = seconds(run, photos, address)
    return Result(cold_s, images, half_s, full_s)


def decode_and_hash(photos: Path, address: str | None) -> int:
    from imgclf.config import Paths
    from imgclf.data.dedupe import hash_images
    from imgclf.data.ingest import build_dataset

    engine = "local" if address is None else "ray"
    with tempfile.TemporaryDirectory(prefix="ray-bench-out-") as out:
        paths = Paths(out)
        summary = build_dataset(
            photos, paths, classes=["cat", "dog"], engine=engine, ray_address=address,
            progress=False,
        )  # fmt: skip
        files = sorted(paths.images.rglob("*.jpg"))
        if address is None:
            hash_images(files, progress=False)
        else:
            from imgclf.data.cluster_dedupe import hash_images_on_ray

            hash_images_on_ray(files, address=address, progress=False)
    return summary.files


def echo(batch: pa.Table) -> pa.Table:
    """A per-image function that does nothing: the bytes go back as they came."""
    return batch.select(["index", "data"])


def transfer(photos: Path, address: str | None) -> int:
    """The decode pipeline's moves without its work: read here, to a worker, back."""
    from tqdm import tqdm

    from imgclf.data.cluster import connected, in_input_order, read_bytes, run_pipeline

    rows = [{"index": i, "source": str(p)} for i, p in enumerate(sorted(photos.rglob("*.jpg")))]
    with connected(address):
        in_input_order(run_pipeline(rows, read_bytes, echo), len(rows), tqdm(disable=True))
    return len(rows)


def connect(address: str) -> float:
    from imgclf.data.cluster import connected

    start = time.perf_counter()
    with connected(address):
        return time.perf_counter() - start


def predictor(model: Path) -> Run:
    def predict(photos: Path, address: str | None) -> int:
        from imgclf.config import Paths, load_params

        params = load_params(ROOT / "params.yaml")
        with tempfile.TemporaryDirectory(prefix="ray-bench-out-") as out:
            paths, csv = Paths(out), Path(out, "predictions.csv")
            if address is None:
                from imgclf.model.batch_predict import run_predict

                summary = run_predict(paths, params, photos, csv, model=str(model))
            else:
                from imgclf.model.cluster_predict import run_predict_on_ray

                summary = run_predict_on_ray(
                    paths, params, str(photos), csv, model=str(model), address=address,
                    progress=False,
                )  # fmt: skip
        return summary.rows

    return predict


def build_model(path: Path) -> Path:
    from imgclf.config import TrainParams
    from imgclf.model.architectures.factory import build_classifier

    build_classifier(TrainParams(weights=None, image_size=224), 2).model.save(path)
    return path


def table(title: str, results: dict[str, Result]) -> list[str]:
    local = results["local"]
    head = f"{'cold s':>7} {'img/s':>7} {'ratio':>6} {'warm s':>7} {'steady':>7} {'ratio':>6}"
    lines = [title, f"  {'':<34} {head} {'fixed s':>8}"]
    for label, r in results.items():
        cold = r.images / r.cold_s
        lines.append(
            f"  {label:<34} {r.cold_s:7.2f} {cold:7.1f} {cold * local.cold_s / local.images:6.2f}"
            f" {r.full_s:7.2f} {r.steady:7.1f} {r.steady / local.steady:6.2f} {r.fixed_s:8.2f}"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=int, default=2500, help="per class, decode + hash")
    parser.add_argument("--predict-photos", type=int, default=500, help="per class, predict")
    parser.add_argument("--cpus", type=int, default=len(os.sched_getaffinity(0)))
    args = parser.parse_args()
    source = Path(os.environ.get("IMGCLF_SAMPLE_DATA", ROOT.parent / "shared/data/dogs-vs-cats"))

    with tempfile.TemporaryDirectory(prefix="ray-bench-") as scratch:
        tmp = Path(scratch)
        photos = sample(source, args.photos, tmp / "photos")
        half = sample(source, args.photos // 2, tmp / "half")
        few = sample(source, args.predict_photos, tmp / "few")
        few_half = sample(source, args.predict_photos // 2, tmp / "few-half")
        predict = predictor(build_model(tmp / "model.keras"))
        data = {"local": measured(decode_and_hash, photos, half, None)}
        predicted = {"local": measured(predict, few, few_half, None)}
        connects = {}
        for nodes in (1, 2):
            name = f"ray, {nodes} worker node{'s' * (nodes > 1)}"
            cluster = RayCluster([0] + [args.cpus // nodes] * nodes).start()
            try:
                data[name] = measured(decode_and_hash, photos, half, cluster.address)
                data[f"{name}: transfer only"] = measured(transfer, photos, half, cluster.address)
                predicted[name] = measured(predict, few, few_half, cluster.address)
                connects[name] = connect(cluster.address)
            finally:
                cluster.stop()
    print(f"{args.cpus} CPUs; each Ray cluster started beforehand; connect (ray.init): "
          + ", ".join(f"{name} {s:.2f} s" for name, s in connects.items()))  # fmt: skip
    print("\n".join(table(f"decode + hash, {2 * args.photos} photos (two pipelines)", data)))
    print("\n".join(table(f"batch prediction, {2 * args.predict_photos} photos", predicted)))


if __name__ == "__main__":
    main()
