"""schemathesis hooks for the bridge's API test (ingest/tests/it/api_reference.rs).

An NDJSON body is text: one JSON event per line. schemathesis has no serializer for the media
type, so it sends the generated text as it sends text/plain.
"""

import schemathesis

schemathesis.serializer.alias("application/x-ndjson", "text/plain")
