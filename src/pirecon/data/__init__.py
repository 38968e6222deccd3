from pirecon.data.lerobot import DatasetConfig, LeRobotDataset, open_dataset
