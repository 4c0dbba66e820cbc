"""Services that act on the job's output topics: the enforcement applier (Redis state stream
servers read), the notifier (in-app and email with appeal links) and the audit archive."""
