"""The manifest is a typed structure: a stranger's manifest is validated field by field before
anything trusts it, and what this version writes reads back equal."""

from __future__ import annotations

import json

import pytest

from liquidgen.cache.manifest import Manifest, parse_manifest
from liquidgen.errors import LiquidgenError
from test_encode import config
from liquidgen.pipeline.encode import encode


@pytest.fixture(scope="module")
def written(paintings12, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("m") / "c"
    encode(config(paintings12, out, limit=8))
    return json.loads((out / "manifest.json").read_text())


def test_a_manifest_reads_back_equal_to_what_was_written(written):
    manifest = Manifest.from_json(written, "m")
    assert manifest.to_json() == written
    assert manifest.storage.backend == "zarr" and manifest.sources[0].expected == 8
    assert manifest.shards[0].unit == "listing" and manifest.shards[0].start == 0


@pytest.mark.parametrize("change, message", [
    (lambda m: m["storage"].update(latent_shape="32x8x8"), "'storage.latent_shape' is not a list"),
    (lambda m: m["shards"][0].update(count="8"), "'shards[0].count' is str, not int"),
    (lambda m: m["sources"][0].update(expected=True), "'sources[0].expected' is bool, not int"),
    (lambda m: m.pop("vae"), "'vae' missing"),
    (lambda m: m["skipped"].append({"source": 0, "shard": "s00-000000.zarr", "key": 1, "reason": "x"}), "'skipped[0].key' is int"),
])
@pytest.mark.reliability('a manifest field of the wrong type or missing', 'refused naming the field')
def test_a_wrong_field_is_named_in_one_line(written, change, message):
    broken = json.loads(json.dumps(written))
    change(broken)
    with pytest.raises(LiquidgenError, match=message.replace("[", r"\[").replace("]", r"\]")):
        Manifest.from_json(broken, "their/manifest.json")


@pytest.mark.reliability('a manifest nested 200,000 deep', 'refused with one line, no RecursionError')
def test_a_manifest_nested_deep_is_refused_without_a_traceback():
    with pytest.raises(LiquidgenError, match="nests too deep"):
        parse_manifest("[" * 200_000 + "]" * 200_000, "deep.json")


def test_shard_entries_of_earlier_caches_still_read(written):
    """Caches written before pieces named their shards' extent by source index (first/end)."""
    old = json.loads(json.dumps(written))
    for shard in old["shards"]:
        for key in ("unit", "start", "length"):
            shard.pop(key)
        shard.update(first=0, end=8)
    for source in old["sources"]:
        source.pop("expected")
    manifest = Manifest.from_json(old, "old.json")
    assert manifest.shards[0].unit is None and manifest.sources[0].expected is None
