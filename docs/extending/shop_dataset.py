"""A dataset kind in one file: a shop's event log, one JSON object per line in `events.jsonl`
({"user": ..., "item": ..., "time": ..., "title": ..., "category": ...}), each purchase carrying
its item's fields, as `prepare shop --source DIR` (or `prepare shop --name mystore --source DIR`).

A DatasetSource names what it reads (`inputs`, watched for changes and never overwritten) and
turns it into a Catalogue (`load`); the workbench splits, samples negatives and writes the card.
"""

import pandas as pd

from sda_lib.data import DATASETS, Catalogue, DataError, DatasetSource, Inputs

FIELDS = ["title", "category"]


class ShopEvents(DatasetSource):
    source_help = "needs --source DIR holding events.jsonl (user, item, time, title, category per line)"

    def inputs(self, name, source, recipe, **load_kw):
        return Inputs({"--source": source}, (source / "events.jsonl",))

    def load(self, name, source, image_dir, seed, recipe, **load_kw):
        path = source / "events.jsonl"
        if not path.is_file():
            raise DataError(f"{path} is missing: {self.source_help}")
        events = pd.read_json(path, lines=True, dtype={"user": str, "item": str})
        missing = {"user", "item", "time", *FIELDS} - set(events.columns)
        if missing:
            raise DataError(f"{path}: no {', '.join(sorted(missing))} field in its events")
        items = (
            events.drop_duplicates("item")[["item", *FIELDS]]
            .rename(columns={"item": "item_id"})
            .fillna("")
            .astype(str)
            .assign(image_path=None)
            .reset_index(drop=True)
        )
        interactions = events.rename(columns={"user": "user_id", "item": "item_id", "time": "timestamp"})[
            ["user_id", "item_id", "timestamp"]
        ].astype({"timestamp": "int64"})
        return Catalogue(name, items, interactions, FIELDS, {"missing_images": len(items)}, str(source))


DATASETS.register("shop", ShopEvents())
