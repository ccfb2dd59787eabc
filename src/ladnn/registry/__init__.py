"""Model registry review: champion and challenger aliases, gates and the audit log."""
