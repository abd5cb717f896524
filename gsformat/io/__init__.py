"""Datasets on any storage: ``storage`` (every location: local, object stores, fsspec URLs,
``pipe:``), ``failures`` (what kind of failure a read was; retries), ``mds`` (the MDS shard
layout), ``dataset_files`` (`SplatWriter`, `iter_dataset`: a dataset's files without torch) and
``validate``. Layer 4 (tests/test_layers.py): imports the core and the codecs only."""
