"""HTTP search service over an index folder: ``python serve.py index=DIR`` (see ``app.py`` and ``cli.py``)."""
