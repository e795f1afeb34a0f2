"""Run bookkeeping: the journal that makes runs resumable."""
