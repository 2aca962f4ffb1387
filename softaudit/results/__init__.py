"""Results, the stage between judging and reports: the records, the results document, its JSON
schema in both directions, and the one ranking of findings every report shows."""
