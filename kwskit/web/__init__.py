"""The live keyword-spotting page served by ``kwskit serve`` (static files, vendored ORT-web)."""
