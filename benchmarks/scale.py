"""Cost curves of the whole pipeline (extract -> analyze -> report) as the number of samples N grows.

Data: the synthetic MNIST-size set of ``benchmarks/synthetic_mnist.py`` (28x28, 10 classes, drawn
once into ``WORK/data`` and read from there, as a real MNIST would be read from disk). Model: the
small CNN. Checkpoints: the reference trainer, ``--checkpoints`` epochs (default 20) on the first
``--train-n`` training images (default 6,000: a full 60,000-image epoch costs minutes on two CPU
cores, and the cost of the analysis does not depend on how the weights were trained), made once
into ``WORK/ckpt-*`` and reused. Every N then analyses the first N training images.

Each stage of each N runs as its own ``python -m i2x ...`` process, so its wall time includes the
interpreter start and imports (what a user waits for) and its peak RSS is its own (``os.wait4``;
with ``--ranks`` > 1 the largest single process; the PSS sum column covers all of a stage's processes).
Prints one row per N and the ratios time / (N * T) and peak memory, relative to the smallest N;
writes ``WORK/results.json``.

    python benchmarks/scale.py                                  # N = 7,500 .. 60,000, 20 checkpoints
    python benchmarks/scale.py --sizes 1000,2000 --checkpoints 4 # a quick look
    python benchmarks/scale.py --ranks 2                         # extraction under torchrun, 2 ranks
    python benchmarks/scale.py --store s3 --sizes 2000 --checkpoints 4  # the same on S3 (loopback) against local

``--store s3`` starts moto's S3 server on a loopback port (fake credentials), uploads the checkpoints to a
bucket and runs every N twice on the same data: checkpoints and analysis directory local, then both on
``s3://``; it prints each stage's wall time for both and their ratio. The server answers from memory on the
same machine, so the ratio measures the client's overhead (requests, serialisation), not a network.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import psutil

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DATA_SPEC = f"{HERE / 'synthetic_mnist.py'}:mnist_like"
MIB = 1024 * 1024


@dataclass
class Stage:
    """One stage's wall time and CPU time (user + system; seconds), the peak resident set size of its largest
    process, and the peak of the proportional set size (PSS: shared library pages split among the processes
    that map them) summed over all its processes, workers and torchrun ranks included (MiB)."""

    seconds: float
    cpu_seconds: float
    peak_rss_mib: float
    peak_pss_sum_mib: float = 0.0


@dataclass
class Row:
    """Everything measured for one N."""

    n: int
    checkpoints: int
    stages: dict[str, Stage] = field(default_factory=dict)
    analysis_timings: dict[str, float] = field(default_factory=dict)
    store_mib: float = 0.0
    data_mib: float = 0.0

    @property
    def seconds(self) -> float:
        return sum(s.seconds for s in self.stages.values())

    @property
    def cpu_seconds(self) -> float:
        return sum(s.cpu_seconds for s in self.stages.values())

    @property
    def peak_rss_mib(self) -> float:
        return max(s.peak_rss_mib for s in self.stages.values())

    @property
    def peak_pss_sum_mib(self) -> float:
        return max(s.peak_pss_sum_mib for s in self.stages.values())


class TreePss:
    """Samples the summed PSS of a process and all its descendants every 0.2 s; ``peak`` in bytes.

    PSS rather than RSS: every process maps the same ~1 GB of torch libraries, and summing RSS would count
    those pages once per process."""

    def __init__(self, pid: int) -> None:
        self.peak = 0
        self._root = psutil.Process(pid)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        while not self._stop.wait(0.2):
            total = 0
            try:
                for proc in [self._root, *self._root.children(recursive=True)]:
                    total += proc.memory_full_info().pss
            except psutil.Error:  # a process ended between listing and reading
                continue
            self.peak = max(self.peak, total)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


def run_stage(argv: list[str], env: dict[str, str], log: Path) -> Stage:
    """Run one command to completion; its wall and CPU time and peak RSS (of it and the children it waited for)."""
    start = time.perf_counter()
    with log.open("a") as out:
        out.write(f"$ {' '.join(argv)}\n")
        out.flush()
        proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
        tree = TreePss(proc.pid)
        _, status, usage = os.wait4(proc.pid, 0)
        tree_peak = tree.stop()
    seconds = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        sys.exit(f"benchmark: `{' '.join(argv)}` failed with status {proc.returncode}; see {log}")
    cpu = usage.ru_utime + usage.ru_stime
    largest = usage.ru_maxrss / 1024  # ru_maxrss: KiB on Linux
    return Stage(round(seconds, 2), round(cpu, 2), round(largest, 1), round(tree_peak / MIB, 1))


def stage_env(n: int, work: Path, threads: int | None) -> dict[str, str]:
    """The environment of every stage: the data size, the data cache, and (optionally) the thread count."""
    env = dict(os.environ, I2X_BENCH_N=str(n), I2X_BENCH_CACHE=str(work / "data"),
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    return env


def draw_data(n: int, work: Path, log: Path) -> None:
    """Draw the first n synthetic images into the cache (untimed; every smaller N reads a prefix of them)."""
    print(f"data: drawing {n:,} synthetic images into {work / 'data'} (once) ...", flush=True)
    stage = run_stage([sys.executable, "-c", f"import sys; sys.path.insert(0, {str(HERE)!r}); import synthetic_mnist; "
                       "synthetic_mnist.mnist_like()"], stage_env(n, work, None), log)
    print(f"data: ready ({stage.seconds:.0f} s)")


def make_checkpoints(args: argparse.Namespace, work: Path, log: Path) -> Path:
    """Train the small CNN with the reference trainer (once; reused when the snapshots exist)."""
    ckpt = work / f"ckpt-n{args.train_n}-e{args.checkpoints}"
    if len(list(ckpt.glob("epoch_*.pt"))) == args.checkpoints:
        print(f"checkpoints: reusing {args.checkpoints} snapshots in {ckpt}")
        return ckpt
    print(f"checkpoints: training the small CNN for {args.checkpoints} epochs on {args.train_n:,} synthetic images ...",
          flush=True)
    shutil.rmtree(ckpt, ignore_errors=True)
    stage = run_stage([sys.executable, "-m", "i2x", "train", "--data", DATA_SPEC, "--out", str(ckpt),
                       "--epochs", str(args.checkpoints), "--device", "cpu"],
                      stage_env(args.train_n, work, args.threads), log)
    print(f"checkpoints: trained in {stage.seconds:.0f} s ({log.name} has the test accuracy)")
    return ckpt


def measure(n: int, args: argparse.Namespace, ckpt: Path | str, work: Path, log: Path, remote: S3 | None = None) -> Row:
    """Extract, analyze and (if available) report N images, each stage in a fresh process; with ``remote`` the
    checkpoints (``ckpt``, a URL) and the analysis directory are on S3."""
    env = {**stage_env(n, work, args.threads), **(remote.env if remote else {})}
    out = f"{remote.url}/n{n}" if remote else work / f"n{n}"
    if remote:
        remote.remove(f"n{n}")
    else:
        shutil.rmtree(out, ignore_errors=True)
    extract = ["-m", "i2x", "extract", str(ckpt), "--data", DATA_SPEC, "--out", str(out), "--device", "cpu",
               "--batch-size", str(args.batch_size)]
    if args.ranks > 1:
        extract = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={args.ranks}", *extract]
    row = Row(n=n, checkpoints=args.checkpoints, data_mib=round(n * 28 * 28 * 4 / MIB, 1))
    row.stages["extract"] = run_stage([sys.executable, *extract], env, log)
    row.stages["analyze"] = run_stage([sys.executable, "-m", "i2x", "analyze", str(out), "--device", "cpu"], env, log)
    if args.report:
        row.stages["report"] = run_stage([sys.executable, "-c", "import sys; from i2x.reporting import build_report; "
                                          "build_report(sys.argv[1], progress=False)", str(out)], env, log)
    if remote:
        row.analysis_timings = json.loads(remote.fs.cat_file(f"{out}/summary.json"))["timings"]
        row.store_mib = round(remote.fs.du(f"{out}/store.zarr") / MIB, 1)
        if not args.keep:
            remote.remove(f"n{n}")
        return row
    row.analysis_timings = json.loads((out / "summary.json").read_text())["timings"]
    row.store_mib = round(sum(f.stat().st_size for f in (out / "store.zarr").rglob("*") if f.is_file()) / MIB, 1)
    if not args.keep:
        shutil.rmtree(out)
    return row


class S3:
    """moto's S3 server on a free loopback port with fake credentials, one bucket, and the stages' environment."""

    BUCKET = "i2x-scale"

    def __init__(self) -> None:
        from moto.server import ThreadedMotoServer

        import logging

        logging.getLogger("werkzeug").setLevel(logging.WARNING)
        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self.server.start()
        host, port = self.server.get_host_and_port()
        self.env = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1",
                    "AWS_ENDPOINT_URL": f"http://{host}:{port}"}
        os.environ.update(self.env)
        import fsspec

        self.fs = fsspec.filesystem("s3", use_listings_cache=False, skip_instance_cache=True)
        self.fs.mkdir(self.BUCKET)
        self.url = f"s3://{self.BUCKET}"

    def upload(self, local: Path, name: str) -> str:
        """Copy a local folder of checkpoints into the bucket; its URL."""
        for file in sorted(local.glob("*")):
            self.fs.put_file(str(file), f"{self.BUCKET}/{name}/{file.name}")
        return f"{self.url}/{name}"

    def remove(self, name: str) -> None:
        if self.fs.exists(f"{self.BUCKET}/{name}"):
            self.fs.rm(f"{self.BUCKET}/{name}", recursive=True)

    def stop(self) -> None:
        self.server.stop()


def print_remote(local: list[Row], remote: list[Row]) -> None:
    """Each stage's wall and CPU time with the checkpoints and the analysis directory local and on S3."""
    stages = list(local[0].stages)
    head = f"{'N':>7} {'T':>3} {'stage':>8} {'local s':>8} {'s3 s':>8} {'s3/local':>8} {'local CPU':>9} {'s3 CPU':>7} {'store':>6}"
    print("\n" + head + "\n" + "-" * len(head))
    for a, b in zip(local, remote):
        for s in stages + ["total"]:
            la, lb = (a.seconds, b.seconds) if s == "total" else (a.stages[s].seconds, b.stages[s].seconds)
            ca, cb = (a.cpu_seconds, b.cpu_seconds) if s == "total" else (a.stages[s].cpu_seconds, b.stages[s].cpu_seconds)
            print(f"{a.n:>7,} {a.checkpoints:>3} {s:>8} {la:>8.1f} {lb:>8.1f} {lb / la:>8.2f} {ca:>9.1f} {cb:>7.1f}"
                  f" {b.store_mib:>6.1f}")
    print("s3: checkpoints and analysis directory on moto's S3 server over loopback (the client's overhead, no "
          "network); CPU: the stage's own process (the server runs in the benchmark's process); store: MiB on S3.")


def print_table(rows: list[Row]) -> None:
    """The cost table and the ratios relative to the smallest N."""
    base = rows[0]
    stages = list(base.stages)
    head = (f"{'N':>7} {'T':>3} " + " ".join(f"{s + ' s':>10}" for s in stages)
            + f" {'total s':>8} {'CPU s':>7} {'img/s':>7} " + " ".join(f"{'RSS ' + s[:3]:>8}" for s in stages)
            + f" {'PSS sum':>8} {'store':>7} {'t/(NT)':>7} {'RSS x':>6} {'sum x':>6}")
    print(head)
    print("-" * len(head))
    for r in rows:
        per = (r.seconds / (r.n * r.checkpoints)) / (base.seconds / (base.n * base.checkpoints))
        rate = r.n * r.checkpoints / r.stages["extract"].seconds
        print(f"{r.n:>7,} {r.checkpoints:>3} " + " ".join(f"{r.stages[s].seconds:>10.1f}" for s in stages)
              + f" {r.seconds:>8.1f} {r.cpu_seconds:>7.0f} {rate:>7.0f} "
              + " ".join(f"{r.stages[s].peak_rss_mib:>8.0f}" for s in stages)
              + f" {r.peak_pss_sum_mib:>8.0f} {r.store_mib:>7.0f} {per:>7.2f} {r.peak_rss_mib / base.peak_rss_mib:>6.2f}"
              + f" {r.peak_pss_sum_mib / base.peak_pss_sum_mib:>6.2f}")
    print("\nstage columns: wall seconds; CPU s: user + system seconds of all stages (steadier than wall time on a "
          "shared machine);\nRSS: peak of each stage's process, MiB; store: size of store.zarr on disk, MiB; "
          "img/s: N * T / extraction wall time;\nt/(NT): total wall time per image-checkpoint relative to the first "
          "row; RSS x: largest stage peak relative to the first row;\nPSS sum: the largest peak, over stages, of the PSS "
          "summed over a stage's processes (torchrun ranks, HDBSCAN workers), MiB; sum x: it relative to the first row.")
    for r in rows:
        print(f"N={r.n:,}: CPU s " + ", ".join(f"{k} {v.cpu_seconds:.0f}" for k, v in r.stages.items())
              + "; analysis (s) " + ", ".join(f"{k} {v:.1f}" for k, v in r.analysis_timings.items())
              + f"; training images in memory during extraction {r.data_mib:.0f} MiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="7500,15000,30000,60000", help="comma-separated N (default 7500..60000)")
    parser.add_argument("--checkpoints", type=int, default=20, help="training epochs = checkpoints T (default 20)")
    parser.add_argument("--train-n", type=int, default=6000, help="training images per epoch (default 6000)")
    parser.add_argument("--batch-size", type=int, default=256, help="extraction batch size (default 256)")
    parser.add_argument("--ranks", type=int, default=1, help="extraction processes under torchrun (default 1)")
    parser.add_argument("--threads", type=int, help="OMP_NUM_THREADS for every stage (default: torch's choice)")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "i2x-scale",
                        help="working directory for data, checkpoints and stores (default $TMPDIR/i2x-scale)")
    parser.add_argument("--no-report", dest="report", action="store_false", help="skip the report stage")
    parser.add_argument("--keep", action="store_true", help="keep each N's analysis directory")
    parser.add_argument("--store", choices=("local", "s3"), default="local",
                        help="s3: also run every N with checkpoints and analysis on S3 (moto on loopback) and compare")
    args = parser.parse_args()
    sizes = sorted(int(s) for s in args.sizes.split(","))
    args.work.mkdir(parents=True, exist_ok=True)
    log = args.work / "scale.log"
    load_before = os.getloadavg()
    print(f"{os.cpu_count()} CPUs, load average {' '.join(f'{v:.2f}' for v in load_before)}; log: {log}")
    draw_data(max(sizes + [args.train_n]), args.work, log)
    ckpt = make_checkpoints(args, args.work, log)
    remote = S3() if args.store == "s3" else None
    remote_ckpt = remote.upload(ckpt, ckpt.name) if remote else ""
    rows, remote_rows = [], []
    try:
        for n in sizes:
            print(f"N={n:,} ...", flush=True)
            rows.append(measure(n, args, ckpt, args.work, log))
            if remote:
                remote_rows.append(measure(n, args, remote_ckpt, args.work, log, remote))
            for r in rows[-1:] + remote_rows[-1:]:
                print("  " + ("s3: " if r in remote_rows else "")
                      + ", ".join(f"{k} {v.seconds:.0f} s (CPU {v.cpu_seconds:.0f} s, peak RSS {v.peak_rss_mib:.0f} MiB)"
                                  for k, v in r.stages.items()) + f"; load {os.getloadavg()[0]:.2f}", flush=True)
    finally:
        if remote:
            remote.stop()
    load_after = os.getloadavg()
    print(f"\nload average after: {' '.join(f'{v:.2f}' for v in load_after)}\n")
    print_table(rows)
    if remote:
        print_remote(rows, remote_rows)
    results = {"settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
               "load_before_after": [load_before, load_after], "rows": [
                   {**asdict(r), "seconds": r.seconds, "cpu_seconds": r.cpu_seconds, "peak_rss_mib": r.peak_rss_mib}
                   for r in rows],
               "s3_rows": [{**asdict(r), "seconds": r.seconds} for r in remote_rows]}
    (args.work / "results.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
