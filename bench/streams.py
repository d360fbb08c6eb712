"""Former name of bench.rng.RngStream ("stream" now means only a data stream,
bench.data.stream); kept so code written against the old name still imports."""

from bench.rng import RngStream as Stream

__all__ = ["Stream"]
