"""Files of the main job: atomic writes, the Parquet signatures table, the run folder and its
manifest, content hashes, the JSONL export, and the reference feature-sample reader."""
