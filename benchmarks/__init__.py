"""The throughput, latency and memory benchmark of amt_ingest: ``make bench``.

``python -m benchmarks.bench`` runs every phase against one Redis, one moto
server and one PostgreSQL database, prints the results beside reference
figures measured in the same run (plain arq, a bare WebSocket client, bare SQS
calls) and writes ``bench.json``. See ``benchmarks/README.md``.
"""
