"""``fluid.incubate.data_generator``: write MultiSlot data for ``DatasetFactory`` pipes."""
from ...dataset.generator import DataGenerator, MultiSlotDataGenerator  # noqa: F401

__all__ = ["DataGenerator", "MultiSlotDataGenerator"]
