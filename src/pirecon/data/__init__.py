"""LeRobot datasets: read and write, video, transforms, normalisation, tokenizer, loader, checks."""

from pirecon.data.lerobot import LeRobotDataset, open_dataset

__all__ = ["LeRobotDataset", "open_dataset"]
