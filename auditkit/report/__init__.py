"""HTML report rendering: results.json -> one self-contained index.html."""
