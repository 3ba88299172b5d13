"""Downloads: resumable HTTP, safe archive extraction, DANDI and Zenodo."""
