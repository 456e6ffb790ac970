"""What a simulated run is made of: the workload, the cluster, the stage times and the prices.

Every default is the DeepCell Kiosk paper's where the paper gives one, Kubernetes' or GKE's
documented default where they decide, and a stated assumption where neither does. The
assumptions, in one place:

* **Consumer nodes** are n1-highmem-2 (2 vCPU, 13 GB). A consumer pod requests 300m CPU and
  256 MiB (the original chart); GKE leaves about 1.93 vCPU allocatable on that machine and its
  DaemonSets take about 0.25 of it, so **5 consumer pods fit a node**. Zip consumers share the
  pool.
* **A GPU node pays for its host VM**: one V100 (or T4) on an n1-highmem-2, one model server per
  node; its price is the VM's plus the GPU's (as the original kiosk-client's cost module adds
  them).
* Nodes are billed from the moment they are requested (the 2-4 min start-up is billed VM time)
  until the cluster autoscaler removes them; all nodes are preemptible unless told otherwise.
* **Per-GPU speed** is drawn per model-server node, uniformly in the paper's 5-10 images/s;
  a batch of ``b`` images takes ``b / speed`` seconds (TF Serving batching, max 32, timeout 0:
  a free GPU takes whatever is queued). GPU utilisation is the busy fraction of that time.
* **Consumer stage times** (wall-clock seconds per 1 MP image on a shared consumer node; the
  paper shows histograms, not means): pre-processing 1.0 s (download, normalise, request
  encoding), post-processing 2.0 s (deep watershed, label image, upload). Each batch of work
  is jittered uniformly by +-20 % so that consumers do not march in lock-step.
* **Zips**: a zip consumer spends 0.02 s per image fanning a zip out (unzip, upload a child,
  create its job); parents then wait without holding a consumer (Kiosk's fan-out/fan-in),
  and the fan-in at the end is not modelled.
* **Preemption**: a preemptible node is taken away after an exponential time with a rate of
  0.005 per node-hour (GCE quoted 5-15 % of preemptible VMs a day), and at 24 h at the latest.
  A consumer on a preempted node hands its job back (the janitor requeues it after 15 s); a
  request in flight on a preempted model server is retried on another after 3 s (gRPC
  UNAVAILABLE). The lost pod is recreated and waits for a node like any other.
* **A community** (``Community``, the fair-share runs): 24 users. 3 heavy users (screening
  labs) hold 75 % of the images in zips of 500-5,000; 6 medium users 20 % in zips of 20-500 (a
  tenth of their submissions single images); 15 light users 5 %, half single images, half zips
  of 2-20. Sizes are log-uniform; each user submits in bursts (heavy 1-3 submissions, medium
  1-5, light 1-10) at uniform moments over the time the paper's one client would take to upload
  the same images, so the average load is the scenario's. Every user has weight 1.
* **Data costs** follow the paper's own benchmark accounting (its figure scripts): storage,
  storage operations and egress of results, plus inter-zone egress of the request and response
  tensors (11,010,048 bytes each way and back, three transfers an image, $0.01/GB, half of the
  requests crossing zones in a two-zone cluster). They do not depend on the policy.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from kiosk.costs import GPU_PRICES, VM_PRICES  # one price table for jobs and the simulator

HOUR = 3600.0
QUEUE_ORDERS = ("fifo", "fair")  # first come, first served; Kiosk's fair share between users

# ------------------------------------------------------------------------------ cluster


@dataclass(frozen=True)
class ClusterParams:
    """The cluster's shape and timings (see the module docstring for why these numbers)."""

    gpu_type: str = "V100"
    gpu_host: str = "n1-highmem-2"
    consumer_node: str = "n1-highmem-2"
    preemptible: bool = True
    gpu_speed: tuple[float, float] = (5.0, 10.0)  # images/s per GPU, drawn per node
    gpu_batch: int = 32  # TF Serving max_batch_size
    gpu_node_start: tuple[float, float] = (120.0, 240.0)  # seconds, uniform
    cpu_node_start: tuple[float, float] = (60.0, 120.0)
    model_server_start: float = 30.0  # pod start on a ready node (image pull, model load)
    consumer_start: float = 30.0
    consumers_per_node: int = 5
    node_unneeded_after: float = 600.0  # GKE cluster autoscaler: an unneeded node goes after 10 min
    autoscaler_scan: float = 10.0  # cluster autoscaler scan interval
    preemptions_per_node_hour: float = 0.005
    preemptible_max_life: float = 24 * HOUR
    requeue_delay: float = 15.0  # janitor: a dead consumer's job back on the queue
    grpc_retry: float = 3.0  # a consumer retries a request whose model server went away
    hpa_sync: float = 15.0

    def __post_init__(self) -> None:
        if self.gpu_type not in GPU_PRICES:
            raise ValueError(f"unknown GPU type {self.gpu_type!r}; known: {sorted(GPU_PRICES)}")
        for vm in (self.gpu_host, self.consumer_node):
            if vm not in VM_PRICES:
                raise ValueError(f"unknown machine type {vm!r}; known: {sorted(VM_PRICES)}")
        low, high = self.gpu_speed
        if not 0 < low <= high:
            raise ValueError(f"gpu_speed must be 0 < low <= high, got {self.gpu_speed}")

    def gpu_node_price(self, preemptible: bool | None = None) -> float:
        """A GPU node is its host VM plus the GPU."""
        p = self.preemptible if preemptible is None else preemptible
        return VM_PRICES[self.gpu_host].hourly(p) + GPU_PRICES[self.gpu_type].hourly(p)

    def cpu_node_price(self, preemptible: bool | None = None) -> float:
        p = self.preemptible if preemptible is None else preemptible
        return VM_PRICES[self.consumer_node].hourly(p)

    @property
    def mean_gpu_speed(self) -> float:
        return sum(self.gpu_speed) / 2


# ------------------------------------------------------------------------------ consumer stages


@dataclass(frozen=True)
class StageTimes:
    """Seconds a consumer spends on one image outside the GPU, and on fanning a zip out."""

    preprocess: float = 1.0
    postprocess: float = 2.0
    fanout_per_image: float = 0.02
    jitter: float = 0.2
    source: str = "paper-scale defaults (assumed, see benchmark.simulator.model)"

    def __post_init__(self) -> None:
        if min(self.preprocess, self.postprocess, self.fanout_per_image) < 0:
            raise ValueError("stage times must be >= 0")
        if not 0 <= self.jitter < 1:
            raise ValueError("jitter must be in [0, 1)")


def stage_times_from_file(path: str | Path, megapixels: float = 1.0) -> StageTimes:
    """Stage times measured by ``benchmark.zip_throughput`` (its ``child_mean_seconds``).

    Pre = download + preprocess, post = postprocess + upload, from the run with the fewest
    consumers (the least contention). The measurement used ``image_size``-square images; the
    times are scaled linearly in pixels to ``megapixels``. Its ``prediction_time`` was taken
    against a CPU model server, so GPU speed stays the cluster's (5-10 images/s).
    """
    data = json.loads(Path(path).read_text())
    results = data.get("results") or []
    if not results:
        raise ValueError(f"{path}: no results")
    row = min(results, key=lambda r: r.get("consumers", math.inf))
    child = row.get("child_mean_seconds")
    if not child:
        raise ValueError(f"{path}: its results carry no child_mean_seconds")
    size = data.get("image_size")
    scale = megapixels * 1e6 / (size * size) if size else 1.0
    pre = (child.get("download_time", 0.0) + child.get("preprocess_time", 0.0)) * scale
    post = (child.get("postprocess_time", 0.0) + child.get("upload_time", 0.0)) * scale
    return StageTimes(
        preprocess=pre,
        postprocess=post,
        source=f"measured: {Path(path).name} ({row.get('consumers')} consumer(s), "
        f"{size}x{size} px scaled x{scale:.2f} to {megapixels:g} MP)",
    )


# ------------------------------------------------------------------------------ workload


@dataclass(frozen=True)
class Workload:
    """A client uploading ``images`` as zips of ``zip_images`` over an ``upload_mbps`` link."""

    images: int
    upload_mbps: float
    image_mb: float = 1.5  # a 1 MP image on disk, as in the paper's benchmark
    zip_images: int = 100

    def __post_init__(self) -> None:
        if self.images <= 0 or self.upload_mbps <= 0 or self.zip_images <= 0:
            raise ValueError("images, upload_mbps and zip_images must be > 0")

    @property
    def seconds_per_image(self) -> float:
        return self.image_mb * 8 / self.upload_mbps

    @property
    def images_per_second(self) -> float:
        return 1 / self.seconds_per_image


@dataclass(frozen=True)
class UserClass:
    """Users alike in how much they submit and how."""

    name: str
    users: int
    share: float  # of all images
    zip_images: tuple[int, int]  # log-uniform size of a zip
    single_image: float  # chance a submission is one image as its own job
    burst: tuple[int, int]  # submissions per burst

    def __post_init__(self) -> None:
        if self.users <= 0 or not 0 < self.share <= 1 or not 0 <= self.single_image <= 1:
            raise ValueError(
                f"user class {self.name!r}: users > 0, 0 < share <= 1, 0 <= single <= 1"
            )
        if (
            not 2 <= self.zip_images[0] <= self.zip_images[1]
            or not 1 <= self.burst[0] <= self.burst[1]
        ):
            raise ValueError(f"user class {self.name!r}: zips of >= 2 images, bursts of >= 1")


DEFAULT_CLASSES = (
    UserClass("heavy", 3, 0.75, (500, 5000), 0.0, (1, 3)),
    UserClass("medium", 6, 0.20, (20, 500), 0.1, (1, 5)),
    UserClass("light", 15, 0.05, (2, 20), 0.5, (1, 10)),
)


@dataclass(frozen=True)
class Community:
    """Many users sharing the cluster (see the module docstring for the default mix)."""

    classes: tuple[UserClass, ...] = DEFAULT_CLASSES

    def __post_init__(self) -> None:
        if abs(sum(c.share for c in self.classes) - 1) > 1e-9:
            raise ValueError("the classes' shares of the images must add up to 1")

    @property
    def users(self) -> int:
        return sum(c.users for c in self.classes)

    def class_of(self, owner: str) -> str:
        return owner.rsplit("-", 1)[0]

    def budgets(self, images: int) -> list[tuple[str, UserClass, int]]:
        """Every user's name, class and images; the images add up to ``images``."""
        out = []
        left = images
        for i, c in enumerate(self.classes):
            total = left if i == len(self.classes) - 1 else round(images * c.share)
            left -= total
            each, extra = divmod(total, c.users)
            for u in range(c.users):
                budget = each + (1 if u < extra else 0)
                if budget > 0:
                    out.append((f"{c.name}-{u + 1:02d}", c, budget))
        return out


# ------------------------------------------------------------------------------ data costs


@dataclass(frozen=True)
class DataCosts:
    """The paper's accounting of everything that is not a node (its figure scripts): storage,
    storage operations, egress of results, and inter-zone egress of tensors."""

    zones: int = 2
    input_gb: float = 1.5e-3
    output_gb: float = 5.6e-6
    payload_gb: float = 11_010_048 / 1e9  # the tiled float32 request
    storage_per_gb_month: float = 0.026
    egress_per_gb: float = 0.12
    class_a_per_op: float = 0.05 / 10_000
    class_b_per_op: float = 0.004 / 10_000
    inter_zone_per_gb: float = 0.01

    def costs(self, images: int, seconds: float, zip_images: int = 100) -> dict[str, float]:
        jobs = images / zip_images
        months = seconds / HOUR / 24 / 30
        storage = self.storage_per_gb_month * images * (self.input_gb + self.output_gb)
        storage *= months / 2  # the first images sit in the bucket longer than the last
        ops = (self.class_a_per_op + self.class_b_per_op) * (2 * zip_images + 1) * jobs
        egress = self.egress_per_gb * self.output_gb * images
        cross = (1 - 1 / self.zones) if self.zones > 1 else 0.0
        inter_zone = self.inter_zone_per_gb * cross * images * self.payload_gb * 3
        return {
            "storage": storage,
            "operations": ops,
            "egress": egress,
            "inter_zone_egress": inter_zone,
        }


# ------------------------------------------------------------------------------ a scenario


@dataclass(frozen=True)
class Scenario:
    """One simulated run: how many images, how many GPUs at most, how fast the upload, which
    policy. ``max_consumers`` (per queue) defaults to the original chart's 150 per GPU."""

    images: int
    gpus: int
    upload_mbps: float
    policy: str = "paper"
    max_consumers: int | None = None
    seed: int = 0
    cluster: ClusterParams = field(default_factory=ClusterParams)
    stages: StageTimes = field(default_factory=StageTimes)
    data: DataCosts = field(default_factory=DataCosts)
    zip_images: int = 100
    image_mb: float = 1.5
    community: Community | None = None  # None: the paper's one client
    order: str = "fair"  # how consumers take waiting work: "fifo" or "fair" (Kiosk's)

    def __post_init__(self) -> None:
        if self.gpus <= 0:
            raise ValueError("gpus must be > 0")
        if self.order not in QUEUE_ORDERS:
            raise ValueError(f"unknown queue order {self.order!r}; known: {list(QUEUE_ORDERS)}")

    @property
    def workload(self) -> Workload:
        return Workload(self.images, self.upload_mbps, self.image_mb, self.zip_images)

    @property
    def consumer_cap(self) -> int:
        return self.max_consumers if self.max_consumers is not None else 150 * self.gpus

    def transfer_bound_seconds(self) -> float:
        """No run can beat this: the images cannot be inferred faster than they arrive, nor
        faster than every GPU at its fastest (d = N_GPU * s, the paper's benchmark rule)."""
        rate = min(self.workload.images_per_second, self.gpus * self.cluster.gpu_speed[1])
        return self.images / rate

    @property
    def label(self) -> str:
        label = f"{self.images:g} images, {self.gpus} GPU, {self.upload_mbps:g} Mbps, {self.policy}"
        if self.community is not None:
            label += f", {self.community.users} users, {self.order}"
        return label
