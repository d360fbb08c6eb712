"""Write a built-in dataset as ArrayRecord shards: ``python -m bench.data.export <dataset> <dir>``.

The dataset is composed exactly as ``python -m bench.train dataset=<dataset> [dataset.key=value
...]`` would load it (same keys, same TFDS data_dir, same num_train cut), and written as it is
loaded: the arrays' values are kept bit for bit (bench.data.arrayrecord), and ``metadata.json``
(written last: its presence means the export is complete) holds shapes, dtypes, classes,
split sizes, the data's SHA-256 (the ``data_sha256`` of the records trained on it) and the
dataset's provenance. Train from it with ``dataset=arrayrecord dataset.path=<dir>``
(``dataset.loader=memory`` or ``stream``).

Examples::

    python -m bench.data.export mnist1d /data/mnist1d
    python -m bench.data.export cifar10 /data/cifar10-ar dataset.data_dir=/data/tfds --shards 8
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from bench.data.arrayrecord import FORMAT, METADATA, VERSION, Codec, Feature, write_split
from bench.data.base import ArrayDataset

SHARD_BYTES = 256 * 2**20  # ~256 MB per shard file


def _default_shards(n: int, example_bytes: int) -> int:
    return max(1, min(n, -(-n * example_bytes // SHARD_BYTES)))


def export(data: ArrayDataset, directory: str | Path, *, shards: int | None = None,
           source: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write ``data`` under ``directory`` (created; must hold no metadata yet); returns the
    metadata. ``shards``: files per split (default: ~256 MB each)."""
    directory = Path(directory).expanduser()
    directory.mkdir(parents=True, exist_ok=True)
    codec = Codec(Feature.of([data.x_train, data.x_test]), Feature.of([data.y_train, data.y_test]))
    splits = {}
    for split, x, y in (("train", data.x_train, data.y_train), ("test", data.x_test, data.y_test)):
        n = shards or _default_shards(len(x), codec.x.nbytes + codec.y.nbytes)
        splits[split] = {"num_examples": int(len(x)), "shards": write_split(directory, split, x, y, codec, n)}
    meta = {
        "format": FORMAT, "version": VERSION, "name": data.name, "num_classes": int(data.num_classes),
        "features": {"x": codec.x.as_dict(), "y": codec.y.as_dict()}, "splits": splits,
        "sha256": data.checksum(), "provenance": data.provenance, "source": source or {},
    }
    tmp = directory / f".{METADATA}.tmp"
    tmp.write_text(json.dumps(meta, indent=1, default=_plain) + "\n")
    tmp.replace(directory / METADATA)
    return meta


def _plain(value: Any) -> Any:
    if isinstance(value, (np.generic, np.ndarray)):
        return value.tolist()
    raise TypeError(f"not JSON: {type(value).__name__}")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.data.export",
        description="Write a built-in dataset as ArrayRecord shards plus metadata.json.")
    parser.add_argument("dataset", help="a dataset option (mnist1d, digits, cifar10, ...)")
    parser.add_argument("directory", help="output directory (new, or holding no export)")
    parser.add_argument("overrides", nargs="*", help="dataset.key=value, as for bench.train")
    parser.add_argument("--shards", type=int, default=None, help="files per split (default ~256 MB each)")
    parser.add_argument("--force", action="store_true", help="overwrite an existing export")
    args = parser.parse_args(argv)

    from bench.config import ConfigError
    from bench.data import load_dataset
    from bench.hydra_conf import compose_config

    directory = Path(args.directory).expanduser()
    bad = [o for o in args.overrides if not o.startswith("dataset.")]
    try:
        if bad:
            raise ConfigError(f"only dataset.<key>=<value> overrides apply to an export, got {bad[0]!r}")
        if (directory / METADATA).exists() and not args.force:
            raise ConfigError(f"{directory} already holds an export ({METADATA}); "
                              f"choose another directory or pass --force")
        if args.shards is not None and args.shards < 1:
            raise ConfigError(f"--shards={args.shards} must be >= 1")
        overrides = [f"dataset={args.dataset}", *args.overrides]
        cfg = compose_config(overrides)
        data = load_dataset(cfg.dataset)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    if (directory / METADATA).exists():
        (directory / METADATA).unlink()
    for old in directory.glob("*.array_record"):
        old.unlink()
    meta = export(data, directory, shards=args.shards,
                  source={"command": "python -m bench.data.export", "overrides": overrides})
    sizes = ", ".join(f"{s} {v['num_examples']} in {len(v['shards'])} shard(s)" for s, v in meta["splits"].items())
    print(f"{data.name}: {sizes}; x {meta['features']['x']['shape']} {meta['features']['x']['dtype']}; "
          f"sha256 {meta['sha256'][:12]}; train with dataset=arrayrecord dataset.path={directory}")


if __name__ == "__main__":
    main()
