"""Run `liquidgen ...` counting every byte read from files under $COUNT_READS_ROOT.

    COUNT_READS_ROOT=data/ COUNT_READS_LOG=reads.log python benchmarks/count_reads.py encode ...
    torchrun --nproc_per_node 2 benchmarks/count_reads.py encode ...      # every rank counts

Python's `open` (and tarfile's copy of it) is wrapped before liquidgen starts, so every reader
in every process is counted: PIL, tarfile, pyarrow reading parquet through `datasets`, in the
ranks and in the DataLoader workers they fork. Each file appends "<bytes>\t<path>" to the log
when it is closed; `total(log)` sums them.
"""

from __future__ import annotations

import builtins
import io
import os
import sys
import tarfile
from pathlib import Path

_real_open = builtins.open


class _Counted(io.RawIOBase):
    """A file object that counts the bytes it hands out and logs them on close."""

    def __init__(self, f, path: str, log: str):
        self._f, self._path, self._log, self.n = f, path, log, 0

    def read(self, size=-1):
        data = self._f.read(size)
        self.n += len(data)
        return data

    def readinto(self, buffer):
        got = self._f.readinto(buffer)
        self.n += got or 0
        return got

    def read1(self, size=-1):
        data = self._f.read1(size)
        self.n += len(data)
        return data

    def readline(self, size=-1):
        data = self._f.readline(size)
        self.n += len(data)
        return data

    def readable(self):
        return True

    def seekable(self):
        return self._f.seekable()

    def seek(self, offset, whence=0):
        return self._f.seek(offset, whence)

    def tell(self):
        return self._f.tell()

    def fileno(self):
        return self._f.fileno()

    @property
    def name(self):
        return self._path

    @property
    def mode(self):
        return "rb"

    def close(self):
        if not self.closed:
            with _real_open(self._log, "a") as fh:
                fh.write(f"{self.n}\t{self._path}\n")
            self._f.close()
        super().close()


def install(root: str, log: str) -> None:
    root = str(Path(root).resolve())

    def counting_open(file, mode="r", *args, **kwargs):
        f = _real_open(file, mode, *args, **kwargs)
        if isinstance(file, (str, os.PathLike)) and "r" in mode and "b" in mode:
            path = os.path.abspath(os.fspath(file))
            if path.startswith(root + os.sep):
                return _Counted(f, path, log)
        return f

    builtins.open = counting_open
    tarfile.bltn_open = counting_open


def total(log: str | Path) -> int:
    lines = Path(log).read_text().splitlines() if Path(log).exists() else []
    return sum(int(line.split("\t", 1)[0]) for line in lines)


def source_bytes(root: str | Path) -> int:
    return sum(p.stat().st_size for p in Path(root).resolve().rglob("*") if p.is_file())


if __name__ == "__main__":
    install(os.environ["COUNT_READS_ROOT"], os.environ["COUNT_READS_LOG"])
    from liquidgen.cli import main

    sys.argv[0] = "liquidgen"
    main()
