"""Conversion of users' data into mmjax shards (make_shards, Beam) and vocabularies."""
