"""One adapter per source format; each turns raw input into a RecordBatch."""
