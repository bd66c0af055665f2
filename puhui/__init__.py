"""puhui puhui."""
