"""Autodata analysis: pass-rate curves, the lineage browser, dataset statistics, methods
tables and the question-type taxonomy, all computed from the records on disk
(``autodata-report``)."""
