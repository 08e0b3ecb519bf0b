"""Moved to `remi.corpus.bundled` (the music21 corpus as MIDI); this name stays for
`python -m remi.bundled` and `from remi.bundled import ...`. The project imports the new home."""
from .corpus.bundled import (
    COLLECTIONS,
    DONE,
    JOB_TIMEOUT,
    SLOW_FILES,
    Job,
    JobTimeout,
    bundled_dir,
    bundled_files,
    convert,
    convert_job,
    jobs,
    main,
)

__all__ = [
    "DONE", "JOB_TIMEOUT", "COLLECTIONS", "SLOW_FILES", "bundled_dir", "Job",
    "jobs", "convert_job", "JobTimeout", "convert", "bundled_files", "main",
]

if __name__ == "__main__":
    raise SystemExit(main())
