"""reports: results.jsonl -> pandas tables -> matplotlib charts -> Markdown/HTML reports."""
