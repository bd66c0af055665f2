"""puhui evidence."""
