"""amt_ingest: mirrors Passport's Salesforce admissions records into a database."""

__version__ = "0.1.0"
