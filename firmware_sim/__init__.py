"""puhui firmware_sim."""
