"""The decision core, pure Python (no pyflink): the rule model and its YAML loader, the per-user ledger,
the decision steps, the output records, and `python -m rules validate|simulate|catalog|diff`."""
