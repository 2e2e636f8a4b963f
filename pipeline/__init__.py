"""Newsletter pipeline: issue folder -> Issue -> Email -> recipients -> batches -> transport -> send log."""

__version__ = "0.1.0"
