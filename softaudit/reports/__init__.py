"""Report formats, one module each, all built from an AuditResult."""
