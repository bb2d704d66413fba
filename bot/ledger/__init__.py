"""The ledger: every turn as served, ratings, adapters, jobs, replicas and tombstones in SQL
(rows.py, the schema by Alembic in migrations/), written through `Ledger` (ledger.py) with a
spool for outages (spool.py); why a write failed (failures.py), forgotten people
(tombstones.py) and the review policy (review.py) each in one place."""
