"""Moved to `remi.corpus.datasets` (source registry, `DataConfig`, downloads); this name stays for
`python -m remi.datasets` and `from remi.datasets import ...`. The project imports the new home."""
from .corpus.datasets import (
    BUNDLED,
    CHUNK,
    MAX_EXTRACT_BYTES,
    MAX_RATIO,
    MIDI_SUFFIXES,
    RATIO_MIN_BYTES,
    SOURCES,
    DataConfig,
    DatasetMissingError,
    DownloadError,
    Source,
    download,
    fetch,
    fetch_command,
    http_client_errors,
    iter_midi_files,
    list_midi_files,
    maestro_splits,
    main,
    safe_extract,
    sha256_file,
    source_folder,
)

__all__ = [
    "MIDI_SUFFIXES", "CHUNK", "DataConfig", "Source", "SOURCES", "BUNDLED",
    "DatasetMissingError", "fetch_command", "source_folder", "iter_midi_files", "list_midi_files", "maestro_splits",
    "DownloadError", "sha256_file", "fetch", "http_client_errors", "MAX_EXTRACT_BYTES", "MAX_RATIO",
    "RATIO_MIN_BYTES", "safe_extract", "download", "main",
]

if __name__ == "__main__":
    raise SystemExit(main())
