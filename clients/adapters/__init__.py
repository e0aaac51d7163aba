"""Alert adapters: external alerts (CAP 1.2 XML and JSON, Trafikverket situations,
DATEX II v3) turned into signed ``alert`` envelopes, routed by rules (``ssr ingest``)."""
