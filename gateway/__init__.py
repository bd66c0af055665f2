"""puhui gateway."""
