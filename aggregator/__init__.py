"""puhui aggregator."""
