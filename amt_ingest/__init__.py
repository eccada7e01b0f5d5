"""amt_ingest: mirrors Passport's Salesforce admissions records into a database."""

__version__ = "0.1.0"

#: Signals received before the service installed its own handlers (see ``__main__``).
early_signals: list[int] = []
