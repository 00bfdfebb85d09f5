"""The Hub's datasets as they are: what `--limit` reads on 2022-style parquet of one row group
per file, and what a single big row group costs when its pieces go to every worker.

The snapshots are built by tests/hub_snapshots.py from the shared paintings: footer-less parquet,
one row group per file, in the two page layouts a writer gives large images (most of a group in
the image column's dictionary page, as pyarrow's defaults do; or small pages).
"""

from __future__ import annotations

import hashlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import PAINTINGS, ROOT, TAEF2
from count_reads import source_bytes, total

sys.path.insert(0, str(ROOT / "tests"))
import hub_snapshots as hub  # noqa: E402


def shared_paintings(n: int) -> list[tuple[bytes, str]]:
    """n shared paintings (224 px JPEGs), styles interleaved as in a shuffled dataset."""
    styles = sorted(p.name for p in PAINTINGS.iterdir() if p.is_dir())
    files = {s: sorted((PAINTINGS / s).iterdir()) for s in styles}
    return [(files[styles[i % len(styles)]][i // len(styles)].read_bytes(), styles[i % len(styles)]) for i in range(n)]


def encode(spec: str, folder: Path, out: Path, *args: str, ranks: int = 1) -> tuple[int, float]:
    """(bytes read from `folder` by every rank and worker, wall seconds)."""
    log = out.with_suffix(".log")
    env = {**os.environ, "COUNT_READS_ROOT": str(folder), "COUNT_READS_LOG": str(log), "PYTHONWARNINGS": "ignore"}
    launch = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(ranks)] if ranks > 1 else [sys.executable]
    cmd = [*launch, str(ROOT / "benchmarks" / "count_reads.py"), "encode", spec, "--out", str(out), "--vae", str(TAEF2), *args]
    started = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800)
    if done.returncode:
        raise RuntimeError(done.stderr[-2000:])
    return total(log), time.perf_counter() - started


def run(full: bool = False, device: str = "auto") -> dict:
    from liquidgen.cache.manifest import read_manifest

    tmp = Path(tempfile.mkdtemp(prefix="lg-bench-hub-"))
    n, files, limit = (2000, 8, 800) if full else (600, 6, 240)
    images = shared_paintings(n)
    image_bytes = {hashlib.sha256(d).hexdigest(): len(d) for d, _ in images}

    # 1. --limit on big row groups, in both page layouts
    limited = {}
    for pages in ("dictionary", "small"):
        snap = hub.wikiart(tmp / f"w-{pages}", files=files, pages=pages, images=images)
        out = tmp / f"limit-{pages}"
        read, seconds = encode(f"hf:{snap.root}", snap.root, out, "--resolution", "64", "--limit", str(limit),
                               "--workers", "2", "--shard-size", "64")
        m = read_manifest(out)
        keys = [key for shard in m.shards for key in _keys(out, shard.name, m.storage.backend)]
        used = sum(image_bytes[snap.truth[k][0]] for k in keys)
        limited[pages] = {"read_mb": read / 1e6, "used_mb": used / 1e6, "ratio": read / used,
                          "source_mb": source_bytes(snap.root) / 1e6, "files_drawn": len({k.rsplit("/", 1)[0] for k in keys}),
                          "styles": len({snap.truth[k][1] for k in keys})}

    # 2. one file of one row group: bytes read, and wall time cut into pieces vs whole (one worker)
    snap = _one_row_group(tmp / "one", images[: n // 2])
    src = source_bytes(snap)
    rows = n // 2
    shapes = {"1x2": (1, 2), "2x2": (2, 2)}
    one = {}
    for name, (ranks, workers) in shapes.items():
        read, _ = encode(f"hf:{snap}", snap, tmp / f"one-{name}", "--resolution", "64", "--workers", str(workers),
                         "--shard-size", "64", ranks=ranks)
        one[name] = read / src
    times: dict[str, list[float]] = {"cut into pieces": [], "one piece": []}
    for r in range(2):  # interleaved rounds: the machine is shared
        for label, shard in (("cut into pieces", "64"), ("one piece", str(rows))):
            _, seconds = encode(f"hf:{snap}", snap, tmp / f"t-{label[:3]}-{r}", "--resolution", "256", "--workers", "2",
                                "--shard-size", shard, "--batch-size", "16")
            times[label].append(seconds)
    return {"images": n, "files": files, "limit": limit, "limited": limited, "one_rows": rows, "one_mb": src / 1e6,
            "one_bytes": one, "one_seconds": {k: statistics.median(v) for k, v in times.items()}}


def _one_row_group(root: Path, images: list[tuple[bytes, str]]) -> Path:
    import datasets

    features = datasets.Features({"image": datasets.Image()})
    rows = [{"image": {"bytes": data, "path": f"{i}.jpg"}} for i, (data, _) in enumerate(images)]
    hub._write_parquet(root, features, rows, 1)
    hub._declare(root, "huggan/flowers-102-categories", features, "infos", len(rows))
    return root


def _keys(cache: Path, shard: str, backend: str) -> list[str]:
    from liquidgen.cache.store import CacheDir

    return list(CacheDir(cache).read(shard, backend).keys)


def markdown(r: dict) -> str:
    lim = "\n".join(f"| {pages} | {v['source_mb']:.1f} | {v['files_drawn']} of {r['files']} | {v['styles']} | "
                    f"{v['used_mb']:.2f} | {v['read_mb']:.2f} | {v['ratio']:.3f} |" for pages, v in r["limited"].items())
    s = r["one_seconds"]
    return f"""\
`--limit {r['limit']}` of {r['images']} shared paintings (5 styles, shuffled) written as huggan/wikiart is on
the Hub: {r['files']} footer-less parquet files of one row group each, 64 px, 2 workers. Bytes read are
counted in every process (`benchmarks/count_reads.py`); "used" is the bytes of the images encoded.
Goal ≤ 1.2.

| page layout | source MB | files drawn | styles | used MB | read MB | read ÷ used |
|---|---|---|---|---|---|---|
{lim}

"dictionary" is what pyarrow's defaults write for large images (its dictionary-page limit is
checked every 1,024 rows, so most of a row group sits in one page read whole): the draw takes
whole row groups spread over the files. "small" pages: a prefix of every file, read through a
buffer of two rows.

One file of one row group ({r['one_rows']} paintings, {r['one_mb']:.1f} MB, as
huggan/flowers-102-categories): bytes read ÷ source bytes, counted in every process, when its
pieces go to every worker and rank through the spool: {r['one_bytes']['1x2']:.3f} at 1 rank x 2
workers, {r['one_bytes']['2x2']:.3f} at 2 ranks x 2 workers (goal ≤ 1.05). Encode wall time at 256 px,
2 workers, median of 2 interleaved rounds: {s['cut into pieces']:.1f} s cut into pieces of 64 rows
against {s['one piece']:.1f} s as one piece (one worker decodes it all):
{s['one piece'] / s['cut into pieces']:.2f}x.
"""
