"""Data pipeline: MultiSlot format, data generators, file systems, pipe readers, datasets.

    dataset = fleetkit.DatasetFactory().create_dataset("InMemoryDataset")
    dataset.set_use_var([ids, label]); dataset.set_pipe_command("python reader.py")
    dataset.set_filelist(files); dataset.load_into_memory(); dataset.global_shuffle(fleet)
    exe.train_from_dataset(main_program, dataset, thread=2, fetch_list=[loss])
"""
from .datasets import DatasetBase, DatasetFactory, InMemoryDataset, QueueDataset
from .fs import FsConfig
from .generator import DataGenerator, MultiSlotDataGenerator
from .instances import InstanceStore
from .multislot import DataFeedDesc, Slot, parse_lines

__all__ = ["DataFeedDesc", "DataGenerator", "DatasetBase", "DatasetFactory", "FsConfig", "InMemoryDataset",
           "InstanceStore", "MultiSlotDataGenerator", "QueueDataset", "Slot", "parse_lines"]
