"""Reporting: metric tables, PNG figures, segments.json files and the HTML report of a workdir."""
