"""puhui drivers."""
