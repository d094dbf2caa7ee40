"""The safetensors backend: :mod:`.header` parses headers and indexes, :mod:`.bundle` opens and
reads files and sharded bundles, :mod:`.writer` streams new ones, :mod:`.template` reads
``--like`` manifests and merges templates."""
