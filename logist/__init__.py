"""logist: a container-backed isolation runtime for jobs that work on a git repository."""

__version__ = "0.1.0"
