"""Outputs kept on this machine, under <root>/<task_type>/<task_id>_<name>."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from loguru import logger

from source.media.video import MediaError, write_thumbnail
from source.storage.base import StorageError, StoredOutput, is_video, output_name
from source.storage.paths import safe_component


class LocalStorage:
    """Moves (default) or copies each output into `root`; videos get a `<stem>_thumb.jpg` beside them.

    Storing the same task's output again replaces the earlier file, so a retried task leaves one result.
    """

    def __init__(self, root: Path, *, copy: bool = False) -> None:
        self.root = Path(root)
        self.copy = copy

    def store(self, local_path: Path, *, task_type: str, task_id: str) -> StoredOutput:
        local_path = Path(local_path)
        if not local_path.is_file():
            raise StorageError(f"output to store does not exist: {local_path}")
        target_dir = self.root / safe_component(task_type)
        target = target_dir / output_name(local_path, task_id)
        try:
            target_dir.mkdir(parents=True, exist_ok=True)
            if local_path.resolve() != target.resolve():
                if self.copy:
                    partial = target.with_name(f".{target.name}.part")
                    shutil.copyfile(local_path, partial)
                    os.replace(partial, target)
                else:
                    shutil.move(local_path, target)
        except OSError as error:
            raise StorageError(f"cannot store {local_path} as {target}: {error}") from None
        thumbnail: str | None = None
        if is_video(target):
            try:
                thumbnail = str(write_thumbnail(target).resolve())
            except MediaError as error:
                # A missing thumbnail must not fail a finished generation.
                logger.warning(f"no thumbnail for {target}: {error}")
        location = str(target.resolve())
        logger.info(f"stored {task_type} output of task {task_id} at {location}")
        return StoredOutput(location=location, thumbnail=thumbnail)
