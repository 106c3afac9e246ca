"""The engine: the document session and round loop, the run, records, stats, documents, the harness loader."""
